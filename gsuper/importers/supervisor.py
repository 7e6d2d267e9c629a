"""supervisord.conf → gsuper: `read` parses the file and its `[include]`s, `convert` maps the keys.

Key meanings follow supervisor's configuration docs. Its defaults that differ from gsuper's
(``autorestart = unexpected``) are written out explicitly, so the import behaves the same.
"""

from __future__ import annotations

import configparser
import glob
import os
import re
import socket
from dataclasses import dataclass

from gsuper.importers import Imported, ImportFailure, Section, Skipped, safe_name, set_environment


@dataclass(frozen=True)
class RawSection:
    """One section as supervisor read it: its keys (lowercased, in order) and the folder of its file."""

    name: str
    items: tuple[tuple[str, str], ...]
    here: str
    file: str


def _parser() -> configparser.RawConfigParser:
    # As supervisor's own parser: `;` and `#` comments, also inline after whitespace; no interpolation.
    return configparser.RawConfigParser(inline_comment_prefixes=(";", "#"), strict=False, interpolation=None)


def _parse(path: str) -> configparser.RawConfigParser:
    parser = _parser()
    try:
        with open(path, encoding="utf-8") as fh:
            parser.read_file(fh, source=path)
    except OSError as exc:
        raise ImportFailure(f"{path}: cannot be read ({exc.strerror})") from None
    except UnicodeDecodeError:
        raise ImportFailure(f"{path}: not valid UTF-8 text") from None
    except configparser.MissingSectionHeaderError as exc:
        raise ImportFailure(f"{path}: line {exc.lineno}: a key before any [section], so not a supervisor configuration") from None
    except configparser.ParsingError as exc:
        line = exc.errors[0][0] if exc.errors else "?"
        raise ImportFailure(f"{path}: line {line}: not a supervisor 'key = value' line") from None
    except configparser.Error as exc:
        raise ImportFailure(f"{path}: not a supervisor configuration ({exc.message})") from None
    return parser


def _sections(parser: configparser.RawConfigParser, path: str) -> list[RawSection]:
    here = os.path.dirname(os.path.abspath(path))
    return [RawSection(name, tuple(parser.items(name)), here, path) for name in parser.sections()]


def read(path: str) -> list[RawSection]:
    """The sections of a supervisord.conf and of the files its `[include] files` globs match.

    As supervisor does: globs are relative to the main file's folder and matched in sorted order;
    a glob that matches nothing is a warning (kept as a pseudo-section for `convert` to report);
    `[include]` sections of included files are not followed.
    """
    main = _parse(path)
    sections = _sections(main, path)
    if main.has_section("include"):
        here = os.path.dirname(os.path.abspath(path))
        files = main.get("include", "files", fallback="")
        files = files.replace("%(here)s", here).replace("%(host_node_name)s", socket.gethostname())
        for pattern in files.split():
            full = os.path.join(here, pattern)
            matched = sorted(glob.glob(full))
            if not matched:
                sections.append(RawSection("include-nomatch", (("files", full),), here, path))
            for name in matched:
                if os.path.abspath(name) == os.path.abspath(path):
                    continue  # a glob that matches the main file again: supervisor reads it once
                sections.extend(s for s in _sections(_parse(name), name) if s.name != "include")
    return sections


# ---------------------------------------------------------------------------------------------
# The mapping (pure).

TRUE = ("true", "yes", "on", "1")
FALSE = ("false", "no", "off", "0")
# Keys gsuper expands per worker itself (CONTRACT: command, environment, directory, logs).
EXPANDED_BY_GSUPER = ("command", "environment", "directory", "stdout_logfile", "stderr_logfile")
OTHER_SECTIONS = {
    "supervisord": "gsuper's master has its own [gsuper] section; see docs/migrating.md",
    "supervisorctl": "the gsuper CLI reaches its master through rundir/gsuper.sock",
    "unix_http_server": "the gsuper CLI reaches its master through rundir/gsuper.sock (mode 0600)",
    "inet_http_server": "gsuper serves status and metrics with [gsuper] http = HOST:PORT",
    "rpcinterface": "gsuper has no XML-RPC interface; status --json and /status.json give the state",
    "eventlistener": "gsuper has no event listener protocol; a [hook:NAME] runs a command per event",
    "fcgi-program": "gsuper does not open a FastCGI socket for its workers",
}
SUPERVISORD_KEYS = {
    "childlogdir": "logdir",
}
WHY = {
    "process_name": "gsuper names workers {name}#INDEX; the index from 0 is in GSUPER_WORKER and %(process_num)d",
    "numprocs_start": "gsuper numbers workers from 0",
    "umask": "gsuper starts workers with the master's umask",
    "serverurl": "gsuper has no XML-RPC server for workers to reach",
    "stdout_capture_maxbytes": "gsuper has no process communication event mode",
    "stderr_capture_maxbytes": "gsuper has no process communication event mode",
    "stdout_events_enabled": "gsuper has no supervisor event listeners; a [hook:NAME] runs a command per event",
    "stderr_events_enabled": "gsuper has no supervisor event listeners; a [hook:NAME] runs a command per event",
    "stdout_syslog": "gsuper writes logs to files (or the master's stdout with logdir = -), not to syslog",
    "stderr_syslog": "gsuper writes logs to files (or the master's stdout with logdir = -), not to syslog",
    "stderr_logfile_maxbytes": "gsuper rotates stderr_logfile by the program's log_max_bytes",
    "stderr_logfile_backups": "gsuper keeps the program's log_backups of stderr_logfile too",
}
STD_STREAMS = ("/dev/stdout", "/dev/stderr", "/proc/self/fd/1", "/proc/self/fd/2", "/dev/fd/1", "/dev/fd/2")
_EXPANSION = re.compile(r"%\((\w+)\)([-#0 +]*\d*(?:\.\d+)?[sdiuxXoeEfFgGr])")


def _bool(value: str) -> str | None:
    low = value.strip().lower()
    return "true" if low in TRUE else "false" if low in FALSE else None


def expand(value: str, static: dict[str, object], keep_dynamic: bool) -> str:
    """Resolve the expansions known at import time; keep those gsuper resolves per worker.

    `static` holds group_name, host_node_name, here, numprocs (and program_name when the key
    is one gsuper does not expand itself).
    """

    def one(m: re.Match[str]) -> str:
        name, fmt = m.group(1), m.group(2)
        if name in static:
            value = static[name]
            try:
                return ("%" + fmt) % value
            except TypeError:
                return str(value)
        return m.group(0)

    return _EXPANSION.sub(one, value)


def _size(text: str) -> str:
    """supervisor's byte sizes (`50MB`, `1KB`, `1024`) in gsuper's spelling (`50M`, `1K`, `1024B`)."""
    m = re.fullmatch(r"\s*(\d+)\s*([KMG]?)B?\s*", text, re.IGNORECASE)
    if not m:
        return text
    return f"{m.group(1)}{m.group(2).upper() or ('B' if m.group(1) != '0' else '')}"


def _environment(text: str) -> list[tuple[str, str]]:
    """supervisor's `KEY="value",KEY2=value2` as pairs (quotes honoured, commas inside them kept)."""
    from gsuper.config import split_list

    pairs = []
    for item in split_list(text.replace("\n", " ")):
        key, _, val = item.partition("=")
        pairs.append((key.strip(), val.strip().strip("'\"") if val.strip()[:1] in "'\"" else val.strip()))
    return pairs


def convert(sections: list[RawSection], source: str, hostname: str | None = None) -> Imported:
    """Map supervisor sections to gsuper sections."""
    host = hostname if hostname is not None else socket.gethostname()
    imp = Imported("supervisor", source)
    by_name = {s.name: s for s in sections}
    group_of: dict[str, str] = {}
    for s in sections:
        if s.name.startswith("group:"):
            for member in dict(s.items).get("programs", "").split(","):
                group_of.setdefault(member.strip(), s.name.partition(":")[2])
    global_env: list[tuple[str, str]] = []
    for s in sections:
        kind, _, name = s.name.partition(":")
        if s.name == "supervisord":
            global_env = _supervisord(imp, dict(s.items))
        elif s.name == "include-nomatch":
            imp.warnings.append(f"no file matches the include {dict(s.items)['files']} (supervisor warns too)")
        elif s.name == "include":
            continue
        elif kind in OTHER_SECTIONS:
            imp.skipped.append(_whole(s, OTHER_SECTIONS[kind]))
        elif kind not in ("program", "group"):
            imp.skipped.append(_whole(s, "not a supervisor section gsuper knows"))
    for s in sections:
        kind, _, name = s.name.partition(":")
        if kind == "program" and name:
            _program(imp, name, dict(s.items), s.here, group_of.get(name, name), host, global_env)
        elif kind == "group" and name:
            _group(imp, name, dict(s.items), by_name)
    return imp


def _whole(s: RawSection, why: str) -> Skipped:
    keys = ", ".join(f"{k}={v}" for k, v in s.items)
    return Skipped(f"[{s.name}]", keys or "(empty)", why)


def _supervisord(imp: Imported, items: dict[str, str]) -> list[tuple[str, str]]:
    env: list[tuple[str, str]] = []
    for key, value in items.items():
        if key in SUPERVISORD_KEYS and value.strip().upper() != "AUTO":
            imp.gsuper.set(SUPERVISORD_KEYS[key], value.strip())
        elif key == "environment":
            env = _environment(value)  # supervisor passes it to every child: so does the import
        else:
            why = "a setting of supervisord itself, with no gsuper equivalent"
            imp.skipped.append(Skipped(f"[supervisord] {key}", value, why))
    return env


def _program(
    imp: Imported, name: str, items: dict[str, str], here: str, group: str, host: str, global_env: list[tuple[str, str]]
) -> None:
    gname = safe_name(name)
    sec = imp.program(gname)
    if gname != name:
        sec.comments.append(f"supervisor's name was {name!r}")
    numprocs = items.get("numprocs", "1").strip()
    static: dict[str, object] = {"group_name": group, "host_node_name": host, "here": here}
    if numprocs.isdigit():
        static["numprocs"] = int(numprocs)
    if "%(host_node_name)s" in " ".join(items.values()):
        sec.comments.append(f"%(host_node_name)s was expanded at import, on host {host}")

    def val(key: str) -> str:
        keep = key in EXPANDED_BY_GSUPER
        return expand(items[key].strip(), static if keep else {**static, "program_name": name}, keep)

    sec.set("runner", "exec")
    redirect = _bool(items.get("redirect_stderr", "false")) == "true"
    group_kill: list[str] = []
    for key in items:
        value = val(key)
        if key == "command":
            sec.set("command", value)
        elif key in ("numprocs", "priority", "user", "directory", "startsecs", "startretries", "stopsignal"):
            sec.set(key, value)
        elif key == "autostart":
            sec.set(key, _bool(value) or value)
        elif key == "autorestart":
            sec.set(key, _bool(value) or value.lower())
        elif key == "exitcodes":
            sec.set(key, ", ".join(c.strip() for c in value.split(",") if c.strip()))
        elif key == "stopwaitsecs":
            sec.set("stop_timeout", value)
        elif key in ("stopasgroup", "killasgroup"):
            if _bool(value) == "true":
                group_kill.append(key)
            else:
                sec.skip(key, value, "gsuper always signals the worker's whole process group")
        elif key == "environment":
            pass  # below, merged over [supervisord]'s
        elif key == "redirect_stderr":
            if not redirect:
                sec.comments.append("redirect_stderr = false: stderr goes to stderr_logfile when one is set, else to logfile")
        elif key == "stdout_logfile":
            _logfile(sec, "logfile", key, value)
        elif key == "stderr_logfile":
            if redirect:
                sec.skip(key, value, "redirect_stderr = true sends stderr to logfile, as supervisor does")
            else:
                _logfile(sec, "stderr_logfile", key, value)
        elif key == "stdout_logfile_maxbytes":
            sec.set("log_max_bytes", _size(value))
        elif key == "stdout_logfile_backups":
            sec.set("log_backups", value)
        elif key in ("stderr_logfile_maxbytes", "stderr_logfile_backups"):
            stdout_key = key.replace("stderr", "stdout")
            if redirect or "stderr_logfile" not in items or items.get(stdout_key, "").strip() == items[key].strip():
                continue  # no separate stderr file, or the same rotation as logfile: nothing is lost
            sec.skip(key, value, WHY[key])
        elif key == "numprocs_start":
            if value.strip() != "0":
                sec.skip(key, value, WHY[key])
        elif key == "process_name":
            if value.strip() not in ("%(program_name)s", name):
                sec.skip(key, items[key].strip(), WHY[key].format(name=gname))
        else:
            sec.skip(key, items[key].strip(), WHY.get(key, "not a supervisor program key gsuper knows"))
    if "command" not in items:
        sec.skip("command", "(none)", "supervisor requires command; give it here")
    env = dict(global_env)
    if "environment" in items:
        env.update(_environment(val("environment")))
    if env:
        set_environment(sec, list(env.items()))
    if "autorestart" not in items:
        sec.set("autorestart", "unexpected")  # supervisor's default; gsuper's own is true
        sec.comments.append("autorestart = unexpected is supervisor's default, written out (gsuper's default is true)")
    if group_kill:
        sec.comments.append(f"{' and '.join(group_kill)} = true: what gsuper always does (it signals the whole process group)")


def _logfile(sec: Section, gkey: str, key: str, value: str) -> None:
    upper = value.strip().upper()
    if upper == "AUTO":
        return  # gsuper's default: logdir/NAME.log
    if upper == "NONE":
        sec.set(gkey, "/dev/null")
    elif value.strip() in STD_STREAMS:
        sec.skip(key, value, "gsuper writes every program's output to the master's stdout with [gsuper] logdir = -")
    else:
        sec.set(gkey, value.strip())


def _group(imp: Imported, name: str, items: dict[str, str], by_name: dict[str, RawSection]) -> None:
    sec = Section(f"group:{safe_name(name)}")
    imp.groups.append(sec)
    members = [m.strip() for m in items.get("programs", "").split(",") if m.strip()]
    sec.set("programs", ", ".join(safe_name(m) for m in members))
    for key, value in items.items():
        if key == "programs":
            continue
        why = "gsuper orders programs by their own priority" if key == "priority" else "not a supervisor group key gsuper knows"
        sec.skip(key, value.strip(), why)

