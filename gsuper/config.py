"""Configuration: the configspec (the one place defaults and types live), loading, validation.

Values are parsed once, here, into numbers with units in their names (``stop_timeout_s``,
``memory_limit_bytes``). Every error is a :class:`ConfigError` whose text is one sentence naming
the file, the section and the key.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import signal
from dataclasses import dataclass, field, replace
from typing import Any

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import ValidateError, Validator, VdtMissingValue

# The configspec. A comment line before a key is its documentation (docs/configuration.md is
# generated from it); `# (loop)` style notes are part of that text.
SPEC_GSUPER = """
# Folder of the pid file (gsuper.pid) and the control socket (gsuper.sock).
rundir = path(default="run")
# Folder of the master log (gsuper.log) and one NAME.log per program.
logdir = path(default="log")
# Master log level: debug, info, warning or error.
loglevel = option("debug", "info", "warning", "error", default="info")
# A log file is rotated when it passes this size (bare number = bytes; 10M, 1G).
log_max_bytes = size(bare="B", default="50M")
# Rotated log files kept (NAME.log.1 ... NAME.log.N); 0 = truncate instead.
log_backups = integer(min=0, max=100, default=5)
# Seconds between two samples of every worker tree's memory (for memory_limit).
memory_check_interval = duration(default="1")
"""

#: The most workers one program may have (numprocs, scale).
MAX_WORKERS = 1000

SPEC_PROGRAM = f"""
# php, python (request loops), shell (bootstrap then exec the script), exec (any command).
runner = option("php", "python", "shell", "exec", default="exec")
# loop: run the business code once per request; daemon: one long run. Default: loop for php and python, daemon for shell and exec.
mode = option("loop", "daemon", default=None)
# The business code file (php, python, shell), relative to the config file's folder.
script = path(default=None)
# Instead of script: PHP Class::method or function; Python module:callable. Called once per request.
handler = text(default=None)
# exec runner: the command line, one string (a comma does not split it).
command = text(default=None)
# Interpreter of the php, python or shell runner (default php, python3, sh; a name on PATH or a path).
interpreter = text(default=None)
# Hooks loaded once before the business code (PHP require_once, Python run or import, shell source).
bootstrap = path_list(default=list())
# Number of worker processes of the program (workNum in the original).
numprocs = integer(min=1, max={MAX_WORKERS}, default=1)
# Requests per worker life; then a clean exit and an immediate fresh worker. 0 = unlimited.
max_request = integer(min=0, default=0)
# A random extra of 0..N requests per life, so workers started together do not recycle together.
max_request_jitter = integer(min=0, default=0)
# Resident memory (RSS) of the worker and its children; over it the worker is replaced. Bare number = MB; 512K, 50M, 1G. 0 = none.
memory_limit = size(bare="M", default="0")
# Seconds between the master's samples of this program's worker trees (memory_limit). Default: [gsuper]'s.
memory_check_interval = duration(default=None)
# Microseconds slept after every request in loop mode (CPU guard).
usleep = integer(min=0, max=60000000, default=1000)
# true, false, or unexpected (restart only on exit codes not in exitcodes).
autorestart = option("true", "false", "unexpected", default="true")
# Expected exit codes (for autorestart = unexpected).
exitcodes = int_list(default=list("0"))
# A worker that dies sooner than this (seconds) has failed to start.
startsecs = duration(default="1")
# Failed starts in a row before the worker is FATAL.
startretries = integer(min=0, max=1000, default=3)
# Signal sent to the worker's process group to stop it (TERM, INT, QUIT, HUP, USR1, USR2, KILL).
stopsignal = signame(default="TERM")
# Seconds between stopsignal and SIGKILL to the group.
stop_timeout = duration(default="10")
# Working directory. Default: the config file's folder.
directory = path(default=None)
# KEY=value, KEY2=value2: added to the master's environment.
environment = env(default=None)
# On an exception in a request: continue with the next request, or exit the worker.
on_error = option("continue", "exit", default="continue")
# Start order (ascending) and stop order (descending) among programs.
priority = integer(default=999)
# php runner: one template process loads the bootstrap once and forks every worker; a respawn costs a fork.
warm = boolean(default=False)
# php runner: a PHP file run in each worker after the bootstrap (after the fork when warm): reconnect, reseed.
after_fork = path(default=None)
# php runner: where the opcache extension is present, run with opcache.enable_cli and a file cache in rundir/opcache/NAME.
opcache = boolean(default=True)
"""

SPEC_GROUP = """
# Programs of the group (module), operated together with -g NAME.
programs = name_list()
"""

SECTION_SPECS = {"gsuper": SPEC_GSUPER, "program": SPEC_PROGRAM, "group": SPEC_GROUP}
LIST_CHECKS = ("path_list", "int_list", "name_list", "env")
RUNNER_INTERPRETERS = {"php": "php", "python": "python3", "shell": "sh"}
NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")


class ConfigError(Exception):
    """A configuration that cannot be used; the text is one sentence for the user."""


class _CheckError(ValidateError):  # type: ignore[misc]
    """A validation failure carrying its own user-facing message."""


# ---------------------------------------------------------------------------------------------
# Value parsing (also used by the CLI for `scale NAME=N`).

_SIZE_UNITS = {"B": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}
_DURATION_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_size(text: str, bare: str = "M") -> int:
    """Parse `50M`, `1G`, `512K`, `100B`, or a bare number in unit `bare`, into bytes."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([BKMGT]?)B?\s*", str(text), re.IGNORECASE)
    if not m:
        raise ValueError(f'"{text}" is not a size (use a number with K, M or G, like 50M)')
    unit = (m.group(2) or bare).upper()
    return int(float(m.group(1)) * _SIZE_UNITS[unit])


def parse_duration(text: str) -> float:
    """Parse `30`, `30s`, `500ms`, `5m`, `1h` into seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m:
        raise ValueError(f'"{text}" is not a duration (use seconds, or 500ms, 30s, 5m, 1h)')
    return float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]


def parse_signal(text: str) -> signal.Signals:
    """Parse `TERM`, `SIGTERM` or `15` into a signal."""
    name = str(text).strip().upper()
    try:
        if name.isdigit():
            return signal.Signals(int(name))
        return signal.Signals["SIG" + name.removeprefix("SIG")]
    except (KeyError, ValueError):
        raise ValueError(f'"{text}" is not a signal name (use TERM, INT, QUIT, HUP, KILL ...)') from None


def unquote(text: str) -> str:
    """Strip one pair of matching quotes around a whole value."""
    text = text.strip()
    if len(text) >= 2 and text[0] == text[-1] and text[0] in "'\"":
        return text[1:-1]
    return text


def split_list(text: str) -> list[str]:
    """Split a comma-separated value, honouring quotes, and unquote each item."""
    items, current, quote = [], [], ""
    for ch in text:
        if quote:
            current.append(ch)
            if ch == quote:
                quote = ""
        elif ch in "'\"":
            quote = ch
            current.append(ch)
        elif ch == ",":
            items.append("".join(current))
            current = []
        else:
            current.append(ch)
    items.append("".join(current))
    return [unquote(i) for i in items if i.strip()]


def _as_list(value: Any) -> list[str]:
    if isinstance(value, list):
        return [str(v) for v in value]
    return split_list(str(value))


# Validator checks: each receives the raw string and returns the parsed value.


def _wrap(fn: Any, value: Any) -> Any:
    try:
        return fn(value)
    except ValueError as exc:
        raise _CheckError(str(exc)) from None


def _check_size(value: Any, bare: str = "M") -> int:
    return int(_wrap(lambda v: parse_size(v, bare), value))


def _check_duration(value: Any) -> float:
    return float(_wrap(parse_duration, value))


def _check_signame(value: Any) -> signal.Signals:
    return _wrap(parse_signal, value)  # type: ignore[no-any-return]


def _check_text(value: Any) -> str | None:
    if value is None:
        return None
    text = unquote(str(value))
    if not text:
        raise _CheckError("the value is empty")
    return text


def _check_path(value: Any) -> str | None:
    return _check_text(value)


def _check_path_list(value: Any) -> list[str]:
    return _as_list(value)


def _check_name_list(value: Any) -> list[str]:
    names = _as_list(value)
    if not names:
        raise _CheckError("the list is empty")
    return names


def _check_int_list(value: Any) -> list[int]:
    try:
        return [int(v) for v in _as_list(value)]
    except ValueError:
        raise _CheckError(f'"{value}" is not a list of whole numbers') from None


def _check_env(value: Any) -> dict[str, str]:
    env: dict[str, str] = {}
    if value is None:
        return env
    for item in _as_list(value):
        key, sep, val = item.partition("=")
        key = key.strip()
        if not sep or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", key):
            raise _CheckError(f'"{item}" is not KEY=value')
        env[key] = unquote(val)
    return env


VALIDATOR = Validator(
    {
        "size": _check_size,
        "duration": _check_duration,
        "signame": _check_signame,
        "text": _check_text,
        "path": _check_path,
        "path_list": _check_path_list,
        "name_list": _check_name_list,
        "int_list": _check_int_list,
        "env": _check_env,
    }
)


# ---------------------------------------------------------------------------------------------
# The parsed configuration.


@dataclass(frozen=True)
class ProgramConfig:
    """One [program:NAME] section, parsed: every path absolute, every unit in its name."""

    name: str
    runner: str
    mode: str
    script: str | None
    handler: str | None
    command: str | None
    interpreter: str | None
    bootstrap: tuple[str, ...]
    numprocs: int
    max_request: int
    max_request_jitter: int
    memory_limit_bytes: int
    memory_check_interval_s: float | None
    usleep_us: int
    autorestart: str
    exitcodes: tuple[int, ...]
    startsecs_s: float
    startretries: int
    stopsignal: signal.Signals
    stop_timeout_s: float
    directory: str
    environment: tuple[tuple[str, str], ...]
    on_error: str
    priority: int
    warm: bool = False
    after_fork: str | None = None
    opcache_dir: str | None = None

    def same_except_numprocs(self, other: ProgramConfig) -> bool:
        """True when the two differ at most in numprocs (a reload then only scales)."""
        from dataclasses import replace

        return replace(self, numprocs=other.numprocs) == other


@dataclass(frozen=True)
class GsuperConfig:
    """The whole configuration file, parsed."""

    path: str
    rundir: str
    logdir: str
    loglevel: str
    log_max_bytes: int
    log_backups: int
    memory_check_interval_s: float
    programs: dict[str, ProgramConfig] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)

    @property
    def pidfile(self) -> str:
        """Path of the master's locked pid file."""
        return os.path.join(self.rundir, "gsuper.pid")

    @property
    def sockfile(self) -> str:
        """Path of the control socket."""
        return os.path.join(self.rundir, "gsuper.sock")

    @property
    def workersfile(self) -> str:
        """Path of the record of live workers' process groups (for a takeover after a crash)."""
        return os.path.join(self.rundir, "workers.json")

    def select(self, programs: list[str], groups: list[str]) -> list[str]:
        """Program names chosen by -p and -g (all when both are empty), in priority order."""
        if not programs and not groups:
            return list(self.programs)
        chosen: set[str] = set()
        for name in programs:
            if name not in self.programs:
                raise ConfigError(f"{self.path}: no program named {name!r}")
            chosen.add(name)
        for name in groups:
            if name not in self.groups:
                raise ConfigError(f"{self.path}: no group named {name!r}")
            chosen.update(self.groups[name])
        return [n for n in self.programs if n in chosen]


# ---------------------------------------------------------------------------------------------
# Loading.


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read()
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 text") from None
    # supervisor users write `;` comments; configobj only knows `#`.
    return ["#" + ln.lstrip()[1:] if ln.lstrip().startswith(";") else ln for ln in text.splitlines()]


def _spec_for(section: str) -> tuple[str, str]:
    kind, _, name = section.partition(":")
    if kind == "gsuper" and not name:
        return kind, SPEC_GSUPER
    if kind in ("program", "group") and name:
        if not NAME_RE.match(name):
            raise ValueError(f"[{section}]: the name {name!r} may hold only letters, digits, _ . -")
        return kind, SECTION_SPECS[kind]
    raise ValueError(f"[{section}]: unknown section (use [gsuper], [program:NAME] or [group:NAME])")


def _check_cut_values(path: str, section: str, sec: Any) -> None:
    for key, comment in sec.inline_comments.items():
        value = sec.get(key)
        if comment and isinstance(value, str) and (value.count('"') % 2 or value.count("'") % 2):
            raise ConfigError(
                f"{path}: [{section}] {key}: the value looks cut by a '#' comment; "
                f"quote the whole value, like {key} = 'sh -c \"echo a # b\"'"
            )


def load(path: str) -> GsuperConfig:
    """Read, validate and parse a configuration file, or raise ConfigError."""
    path = os.path.abspath(path)
    lines = _read_lines(path)
    try:
        raw = ConfigObj(lines, list_values=False, interpolation=False, encoding="utf-8")
    except ConfigObjError as exc:
        first = (getattr(exc, "errors", None) or [exc])[0]
        msg = str(first).replace("matched as neither section nor keyword", "not a section, key = value or comment")
        raise ConfigError(f"{path}: {msg}") from None

    if raw.scalars:
        raise ConfigError(f"{path}: key {raw.scalars[0]!r} stands before any [section]")
    spec_lines: list[str] = []
    for section in raw.sections:
        try:
            _kind, spec = _spec_for(section)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if raw[section].sections:
            raise ConfigError(f"{path}: [{section}]: nested sections are not allowed")
        _check_cut_values(path, section, raw[section])
        spec_lines.append(f"[{section}]")
        spec_lines.extend(spec.strip().splitlines())
    if "gsuper" not in raw.sections:
        spec_lines = ["[gsuper]", *SPEC_GSUPER.strip().splitlines(), *spec_lines]
        raw["gsuper"] = {}
    spec = ConfigObj(spec_lines, list_values=False, _inspec=True)
    raw.configspec = spec
    # Scalars are unquoted before validation so built-in checks (integer, option) see the bare text.
    for section in raw.sections:
        for key in raw[section].scalars:
            check = spec[section].get(key, "")
            if not any(check.startswith(c) for c in LIST_CHECKS) and isinstance(raw[section][key], str):
                raw[section][key] = unquote(raw[section][key])

    result = raw.validate(VALIDATOR, preserve_errors=True)
    if result is not True:
        for sections, key, error in flatten_errors(raw, result):
            where = f"[{sections[0]}]" if sections else ""
            if key is None:
                raise ConfigError(f"{path}: {where} section is missing")
            if isinstance(error, VdtMissingValue) or error is False:
                raise ConfigError(f"{path}: {where} {key}: a value is required")
            raise ConfigError(f"{path}: {where} {key}: {_describe(error)}")
    for sections, key in get_extra_values(raw):
        where = f"[{sections[0]}] " if sections else ""
        raise ConfigError(f"{path}: {where}{key}: unknown key")
    return _build(path, raw)


def load_paths_only(path: str) -> GsuperConfig:
    """Only rundir and logdir, read leniently from a file that does not validate.

    So that `stop`, `exit` and `status` still reach a running master after its file was broken
    by an edit. Raises ConfigError only when the file cannot be read at all.
    """
    path = os.path.abspath(path)
    lines = _read_lines(path)
    base = os.path.dirname(path)
    try:
        section = ConfigObj(lines, list_values=False, interpolation=False).get("gsuper", {})
    except ConfigObjError:
        section = {}

    def folder(key: str, default: str) -> str:
        value = section.get(key) if isinstance(section, dict) else None
        text = unquote(value) if isinstance(value, str) and value.strip() else default
        return os.path.normpath(os.path.join(base, os.path.expanduser(text)))

    return GsuperConfig(path, folder("rundir", "run"), folder("logdir", "log"), "info", 0, 0, 1.0)


def _describe(error: Exception) -> str:
    text = str(error)
    if isinstance(error, _CheckError):
        return text
    # validate's own messages ('the value "x" is of the wrong type.') end with a period.
    return text.rstrip(".")


def _build(path: str, raw: Any) -> GsuperConfig:
    base = os.path.dirname(path)
    g = raw["gsuper"]

    def absolute(p: str, root: str = base) -> str:
        return os.path.normpath(os.path.join(root, os.path.expanduser(p)))

    programs: dict[str, ProgramConfig] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for section in raw.sections:
        kind, _, name = section.partition(":")
        if kind == "program":
            programs[name] = _build_program(path, name, raw[section], absolute)
            if programs[name].runner == "php" and raw[section]["opcache"]:
                # Cold php workers keep compiled scripts in a file cache here (runners.py).
                programs[name] = replace(programs[name], opcache_dir=os.path.join(absolute(g["rundir"]), "opcache", name))
        elif kind == "group":
            groups[name] = tuple(raw[section]["programs"])
    for gname, members in groups.items():
        for member in members:
            if member not in programs:
                raise ConfigError(f"{path}: [group:{gname}] programs: no program named {member!r}")
    ordered = dict(sorted(programs.items(), key=lambda kv: (kv[1].priority, kv[0])))
    return GsuperConfig(
        path=path,
        rundir=absolute(g["rundir"]),
        logdir=absolute(g["logdir"]),
        loglevel=g["loglevel"],
        log_max_bytes=g["log_max_bytes"],
        log_backups=g["log_backups"],
        memory_check_interval_s=max(0.05, g["memory_check_interval"]),
        programs=ordered,
        groups=groups,
    )


def _build_program(path: str, name: str, sec: Any, absolute: Any) -> ProgramConfig:
    where = f"{path}: [program:{name}]"
    runner = sec["runner"]
    mode = sec["mode"] or ("loop" if runner in ("php", "python") else "daemon")
    directory = absolute(sec["directory"]) if sec["directory"] else os.path.dirname(path)
    if not os.path.isdir(directory):
        raise ConfigError(f"{where} directory: no such folder {directory}")
    script = absolute(sec["script"]) if sec["script"] else None
    handler, command = sec["handler"], sec["command"]

    if runner == "exec":
        if not command:
            raise ConfigError(f"{where} command: required for runner = exec")
        if script or handler or sec["bootstrap"]:
            raise ConfigError(
                f"{where}: script, handler and bootstrap are for the php, python and shell runners; runner = exec runs command"
            )
    else:
        if command:
            raise ConfigError(f"{where} command: only for runner = exec (runner {runner} runs script or handler)")
        if runner == "shell" and not script:
            raise ConfigError(f"{where} script: required for runner = shell")
        if bool(script) == bool(handler):
            raise ConfigError(f"{where}: give exactly one of script and handler")
        if runner == "shell" and handler:
            raise ConfigError(f"{where} handler: not supported by runner = shell; use script")
    if script and not os.path.isfile(script):
        raise ConfigError(f"{where} script: file not found: {script}")

    bootstrap: list[str] = []
    for entry in sec["bootstrap"]:
        # A Python bootstrap may name a module to import instead of a file.
        if runner == "python" and "/" not in entry and not entry.endswith(".py"):
            bootstrap.append(entry)
            continue
        full = absolute(entry)
        if not os.path.isfile(full):
            raise ConfigError(f"{where} bootstrap: file not found: {full}")
        bootstrap.append(full)

    env = sec["environment"] or {}
    interpreter = sec["interpreter"]
    if runner == "exec":
        try:
            argv = shlex.split(command)
        except ValueError as exc:
            raise ConfigError(f"{where} command: cannot be split into words ({exc})") from None
        if not argv:
            raise ConfigError(f"{where} command: is empty")
        _require_program(where, "command", argv[0], directory, env)
    else:
        _require_program(where, "interpreter", interpreter or RUNNER_INTERPRETERS[runner], directory, env)
    after_fork = absolute(sec["after_fork"]) if sec["after_fork"] else None
    if (sec["warm"] or after_fork) and runner != "php":
        raise ConfigError(f"{where} {'warm' if sec['warm'] else 'after_fork'}: only for runner = php")
    if after_fork and not os.path.isfile(after_fork):
        raise ConfigError(f"{where} after_fork: file not found: {after_fork}")
    if sec["max_request"] and mode != "loop":
        raise ConfigError(f"{where} max_request: only for mode = loop (a daemon-mode program serves no requests)")

    return ProgramConfig(
        name=name,
        runner=runner,
        mode=mode,
        script=script,
        handler=handler,
        command=command,
        interpreter=interpreter,
        bootstrap=tuple(bootstrap),
        numprocs=sec["numprocs"],
        max_request=sec["max_request"],
        max_request_jitter=sec["max_request_jitter"],
        memory_limit_bytes=sec["memory_limit"],
        memory_check_interval_s=None if sec["memory_check_interval"] is None else max(0.05, sec["memory_check_interval"]),
        usleep_us=sec["usleep"],
        autorestart=sec["autorestart"],
        exitcodes=tuple(sec["exitcodes"]),
        startsecs_s=sec["startsecs"],
        startretries=sec["startretries"],
        stopsignal=sec["stopsignal"],
        stop_timeout_s=sec["stop_timeout"],
        directory=directory,
        environment=tuple(env.items()),
        on_error=sec["on_error"],
        priority=sec["priority"],
        warm=sec["warm"],
        after_fork=after_fork,
    )


def _require_program(where: str, key: str, program: str, directory: str, env: dict[str, str]) -> None:
    if "/" in program:
        full = os.path.join(directory, program)
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            raise ConfigError(f"{where} {key}: {full} is not an executable file")
    elif shutil.which(program, path=env.get("PATH", os.environ.get("PATH"))) is None:
        raise ConfigError(f"{where} {key}: {program!r} is not found on PATH")


# ---------------------------------------------------------------------------------------------
# The reference in docs/configuration.md comes from the spec above.


def reference_markdown() -> str:
    """Render the configuration reference (every key, its default and meaning) as Markdown."""
    out = [
        "# Configuration reference",
        "",
        "Generated from the configspec in `gsuper/config.py` by `python -m gsuper.config`;",
        "a test checks that this file is current. Relative paths are relative to the",
        "configuration file's folder. Comments begin with `#` (or `;` at the start of a line).",
        "",
    ]
    for title, spec in (("[gsuper]", SPEC_GSUPER), ("[program:NAME]", SPEC_PROGRAM), ("[group:NAME]", SPEC_GROUP)):
        out += [f"## `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        doc = ""
        for line in spec.strip().splitlines():
            if line.startswith("#"):
                doc = line[1:].strip()
                continue
            key, _, check = (part.strip() for part in line.partition("="))
            m = re.search(r"default=(?:list\((.*?)\)|([^,)]+))", check)
            default = "required" if not m else (m.group(1) if m.group(1) is not None else m.group(2))
            default = default.strip('"') if default not in ("None", "") else "none"
            kind = check.split("(")[0]
            out.append(f"| `{key}` | {kind} | `{default}` | {doc} |")
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
