"""`gsuper -s import FILE`: an equivalent gsuper.ini from another process manager's configuration.

Three sources: a supervisord.conf (with its ``[include]`` files), a PM2 ecosystem file (``.json``,
or ``.config.js`` evaluated with ``node``) and the original PHP process manager's
``serviceConf.php`` (evaluated with ``php``). Each module holds one pure function from the
file's parsed content to an :class:`Imported` (programs, groups, and what could not be carried
over); reading and evaluating files happens here and in each module's ``read``; rendering to
INI happens only in :func:`render`.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from dataclasses import dataclass, field


class ImportFailure(Exception):
    """A file that cannot be imported; the text is one sentence for the user (exit 2)."""


@dataclass(frozen=True)
class Skipped:
    """A setting with no gsuper equivalent, kept as a `# not imported:` comment."""

    key: str
    value: str
    why: str


@dataclass
class Section:
    """One section of the output: `[gsuper]`, `[program:NAME]` or `[group:NAME]`."""

    header: str
    keys: list[tuple[str, str]] = field(default_factory=list)
    comments: list[str] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)

    def set(self, key: str, value: object) -> None:
        """Set a gsuper key (a later value of the same key replaces the earlier one)."""
        text = _text(value)
        self.keys = [(k, v) for k, v in self.keys if k != key]
        if ini_value(text) is None:
            why = "a gsuper.ini value cannot hold both kinds of quote with a '#' or a leading quote; put it in a script"
            self.skip(key, text, why)
            return
        self.keys.append((key, text))

    def get(self, key: str) -> str | None:
        """The value set for a key, if any."""
        return next((v for k, v in self.keys if k == key), None)

    def skip(self, key: str, value: object, why: str) -> None:
        """Keep a setting that does not carry over as a comment, with the reason."""
        self.skipped.append(Skipped(key, _text(value), why))

    @property
    def name(self) -> str:
        """The NAME of `[program:NAME]` or `[group:NAME]`."""
        return self.header.partition(":")[2]


@dataclass
class Imported:
    """What one source file becomes: the sections of a gsuper.ini, and notes about the rest."""

    kind: str
    source: str
    gsuper: Section = field(default_factory=lambda: Section("gsuper"))
    programs: list[Section] = field(default_factory=list)
    groups: list[Section] = field(default_factory=list)
    skipped: list[Skipped] = field(default_factory=list)  # file-level: whole sections, global keys
    warnings: list[str] = field(default_factory=list)

    def program(self, name: str) -> Section:
        """A new `[program:NAME]` section, added to the output."""
        sec = Section(f"program:{name}")
        self.programs.append(sec)
        return sec


KINDS = {"supervisor": "supervisord.conf", "pm2": "PM2 ecosystem file", "legacy": "serviceConf.php"}
NAME_BAD = re.compile(r"[^\w.\-]")


def _text(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (dict, list)):
        return json.dumps(value, ensure_ascii=False)
    return " ".join(str(value).split()) if "\n" in str(value) else str(value)


def literal(value: str) -> str:
    """A value from a source without expansions, safe in a key gsuper expands (`%(` and `%%` doubled).

    A lone `%` stays as it is in gsuper, so only values that would read as an expansion change.
    """
    return value.replace("%", "%%") if "%(" in value or "%%" in value else value


def env_value(pairs: list[tuple[str, str]]) -> str:
    """Pairs as gsuper's `environment` value, quoting values that hold a comma, space or quote."""

    def quoted(v: str) -> str:
        if v and not re.search(r"[,\s'\"]", v):
            return v
        return f"'{v}'" if "'" not in v else f'"{v}"'

    return ", ".join(f"{k}={quoted(v)}" for k, v in pairs)


ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def set_environment(sec: Section, pairs: list[tuple[str, str]]) -> None:
    """Set `environment` from pairs; a name gsuper cannot take (`my-var`) is a note instead."""
    good = [(k, v) for k, v in pairs if ENV_NAME.fullmatch(k)]
    for k, v in pairs:
        if not ENV_NAME.fullmatch(k):
            sec.skip(f"environment {k}", v, "gsuper's environment names are letters, digits and _, not starting with a digit")
    if good:
        sec.set("environment", env_value(good))


def safe_name(name: str) -> str:
    """A program or group name gsuper accepts (Unicode letters, digits, `_ . -`): others become `-`."""
    return NAME_BAD.sub("-", name.strip()) or "program"


# ---------------------------------------------------------------------------------------------
# Detecting the kind of file, and the whole import.


def detect(path: str, head: str) -> str:
    """The kind of a file ("supervisor", "pm2", "legacy") from its name and first characters."""
    name = os.path.basename(path).lower()
    text = head.lstrip("\ufeff \t\r\n")
    if name.endswith(".php") or text.startswith("<?php"):
        return "legacy"
    if name.endswith((".json", ".js", ".cjs", ".mjs")) or text.startswith(("{", "[{", "module.exports")):
        return "pm2"
    if re.search(r"^\s*\[(program|group|fcgi-program|eventlistener):", head, re.MULTILINE) or re.search(
        r"^\s*\[(supervisord|include|unix_http_server|inet_http_server|supervisorctl)\]", head, re.MULTILINE
    ):
        return "supervisor"
    if re.search(r"^\s*\[gsuper\]", head, re.MULTILINE):
        raise ImportFailure(f"{path}: this is already a gsuper configuration; check it with gsuper -s check -c {path}")
    raise ImportFailure(
        f"{path}: not a supervisord.conf, a PM2 ecosystem file (.json, .config.js) or a serviceConf.php, so nothing to import"
    )


def import_file(path: str) -> Imported:
    """Read, evaluate and convert one file, or raise ImportFailure."""
    from gsuper.importers import legacy, pm2, supervisor

    path = os.path.abspath(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(65536).decode("utf-8", errors="replace")
    except FileNotFoundError:
        raise ImportFailure(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ImportFailure(f"{path}: is a folder, not a file to import") from None
    except OSError as exc:
        raise ImportFailure(f"{path}: cannot be read ({exc.strerror})") from None
    kind = detect(path, head)
    if kind == "supervisor":
        result = supervisor.convert(supervisor.read(path), path)
    elif kind == "pm2":
        result = pm2.convert(pm2.read(path), path, os.cpu_count() or 1)
    else:
        result = legacy.convert(legacy.read(path), path)
    if not result.programs:
        raise ImportFailure(f"{path}: no programs to import in this {KINDS[kind]}")
    return result


def evaluate(tool: str, argv: list[str], path: str, cwd: str) -> str:
    """Run `node` or `php` to evaluate a configuration that is code; its stdout, or ImportFailure."""
    binary = shutil.which(tool)
    if binary is None:
        raise ImportFailure(f"{path}: {tool} is needed to read this file and is not found on PATH")
    try:
        proc = subprocess.run([binary, *argv], capture_output=True, text=True, timeout=30, cwd=cwd, stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired:
        raise ImportFailure(f"{path}: {tool} did not finish evaluating it within 30s") from None
    except OSError as exc:
        raise ImportFailure(f"{path}: {tool} could not be run ({exc.strerror})") from None
    if proc.returncode != 0:
        lines = [ln.strip() for ln in proc.stderr.splitlines() if ln.strip()]
        why = next((ln for ln in lines if "rror" in ln), lines[0] if lines else f"exit status {proc.returncode}")
        raise ImportFailure(f"{path}: {tool} could not evaluate it ({why[:300]})")
    return proc.stdout


# ---------------------------------------------------------------------------------------------
# Rendering: the one place INI text is written.


def ini_value(value: str) -> str | None:
    """A value as configobj reads it back unchanged (quoted whole when it must be), or None if none does."""
    if value == "" or ("#" not in value and value[0] not in "'\"" and value == value.strip()):
        return value
    for quote in ("'", '"'):
        if quote not in value:
            return f"{quote}{value}{quote}"
    return None


def _comment(text: str) -> str:
    return "# " + text.replace("\n", " ")


def _skipped_line(s: Skipped) -> str:
    return _comment(f"not imported: {s.key} = {s.value} ({s.why})")


def render(imp: Imported) -> str:
    """The gsuper.ini text of an import."""
    out = [_comment(f"Imported by gsuper -s import from {imp.source} ({KINDS[imp.kind]}).")]
    if not_imported(imp):
        out.append("# Each 'not imported' comment is a setting with no gsuper equivalent, and why.")
    for s in imp.skipped:
        out.append(_skipped_line(s))
    for sec in [imp.gsuper, *imp.programs, *imp.groups]:
        if sec is imp.gsuper and not (sec.keys or sec.comments or sec.skipped):
            continue
        out += ["", f"[{sec.header}]"]
        out += [f"{k} = {ini_value(v)}" for k, v in sec.keys]  # set() kept only values ini_value can write
        out += [_comment(c) for c in sec.comments]
        out += [_skipped_line(s) for s in sec.skipped]
    return "\n".join(out) + "\n"


def not_imported(imp: Imported) -> list[str]:
    """One line per place with settings that did not carry over, for stderr."""
    lines = []
    if imp.skipped:
        lines.append(f"not imported from {imp.source}: {', '.join(s.key for s in imp.skipped)}")
    for sec in [imp.gsuper, *imp.programs, *imp.groups]:
        if sec.skipped:
            lines.append(f"not imported into [{sec.header}]: {', '.join(s.key for s in sec.skipped)}")
    return lines
