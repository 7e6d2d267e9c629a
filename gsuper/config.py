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
import socket
from dataclasses import dataclass, field, replace
from typing import Any

from configobj import ConfigObj, ConfigObjError, flatten_errors, get_extra_values
from validate import ValidateError, Validator, VdtMissingValue

from gsuper import users
from gsuper.expand import ExpansionError, expand, names_used
from gsuper.include import IncludeError, gather
from gsuper.registry import sha256_hex

# The configspec. A comment line before a key is its documentation (docs/configuration.md is
# generated from it); `# (loop)` style notes are part of that text.
SPEC_GSUPER = """
# Folder of the pid file (gsuper.pid) and the control socket (gsuper.sock).
rundir = path(default="run")
# Folder of the master log (gsuper.log) and one NAME.log per program; - : no files, all to stdout, lines prefixed NAME#INDEX.
logdir = path(default="log")
# Format of the master log (and with logdir = -, of every line on stdout): text, or json (one JSON object per line).
log_format = option("text", "json", default="text")
# keep: a FATAL program stays FATAL; exit: the master then stops every other worker gracefully and exits with status 3.
on_fatal = option("keep", "exit", default="keep")
# Master log level: debug, info, warning or error.
loglevel = option("debug", "info", "warning", "error", default="info")
# A log file is rotated when it passes this size (bare number = bytes; 10M, 1G).
log_max_bytes = size(bare="B", default="50M")
# Rotated log files kept (NAME.log.1 ... NAME.log.N); 0 = truncate instead.
log_backups = integer(min=0, max=100, default=5)
# Seconds between two samples of every worker tree's memory (for memory_limit).
memory_check_interval = duration(default="1")
# HOST:PORT to serve HTTP on (/metrics, /status.json, probes, dashboard); off when unset; loopback unless http_token.
http = text(default=None)
# A bearer token required on every HTTP path but /healthz and /readyz; required when http binds beyond loopback.
http_token = text(default=None)
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
# Number of worker processes of the program (workNum in the original); with numprocs_max above it, the minimum.
numprocs = integer(min=1, max={MAX_WORKERS}, default=1)
# Workers at most: above numprocs, the count follows scale_source's backlog between the two. Default: numprocs (no autoscaling).
numprocs_max = integer(min=1, max={MAX_WORKERS}, default=None)
# The backlog: redis://HOST:PORT/DB/KEY (the length of that Redis list) or command:CMD (sh -c CMD prints one number).
scale_source = text(default=None)
# The backlog each worker should have at most: the count wanted is ceil(backlog / this).
scale_jobs_per_worker = integer(min=1, default=10)
# Seconds between two backlog readings (a reading slower than this, or than 1 s, fails).
scale_interval = duration(default="1")
# Seconds between two changes of the worker count; also how long the backlog must stay low before a scale-down.
scale_cooldown = duration(default="3")
# Workers added or removed per change at most.
scale_step = integer(min=1, max={MAX_WORKERS}, default=1)
# Requests per worker life; then a clean exit and an immediate fresh worker. 0 = unlimited.
max_request = integer(min=0, default=0)
# A random extra of 0..N requests per life, so workers started together do not recycle together.
max_request_jitter = integer(min=0, default=0)
# Resident memory (RSS) of the worker and its children; over it the worker is replaced. Bare number = MB; 512K, 50M, 1G. 0 = none.
memory_limit = size(bare="M", default="0")
# Seconds between the master's samples of this program's worker trees (memory_limit). Default: [gsuper]'s.
memory_check_interval = duration(default=None)
# Seconds a request may run (php, python, programs that report requests); then SIGKILL to its group, a new worker. 0 = none.
request_timeout = duration(default="0")
# Seconds a worker may live; it then finishes its request (daemon mode: is stopped gracefully) and is replaced. 0 = none.
max_lifetime = duration(default="0")
# A random extra of 0..N seconds per life, so workers started together are not replaced together.
max_lifetime_jitter = duration(default="0")
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
# -- taking over a supervisor deployment (issue 10) --
# Run the worker as this user (a name or a uid) with its primary and supplementary groups; only a master running as root may.
user = text(default=None)
# false: loaded and shown as STOPPED, started only by start -p NAME.
autostart = boolean(default=True)
# Where the program's stdout (and stderr, unless stderr_logfile) goes. Default: logdir/NAME.log.
logfile = path(default=None)
# A separate file for the program's stderr. Default: none (merged into logfile).
stderr_logfile = path(default=None)
# logfile and stderr_logfile are rotated past this size (bare number = bytes). Default: [gsuper]'s log_max_bytes.
log_max_bytes = size(bare="B", default=None)
# Rotated files kept of logfile and stderr_logfile; 0 = truncate instead. Default: [gsuper]'s log_backups.
log_backups = integer(min=0, max=100, default=None)
# -- end of issue 10 keys --
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

SPEC_INCLUDE = """
# Space-separated globs (relative to this file) of files whose [program:] and [group:] sections are read as if here.
files = text()
"""

SPEC_HOOK = """
# Events that run the hook: started, running, backoff, fatal, exited, crashed, stopped, max_request,
# memory_limit, request_timeout, max_lifetime, scaled, reloaded.
events = hook_events()
# A shell command line (run by /bin/sh -c in the config file's folder), once per event, the event as one JSON object on stdin.
command = text()
# Only events of these programs. Default: all.
programs = name_list(default=None)
# Seconds one run may take; then its process group gets SIGKILL.
timeout = duration(default="30")
"""

#: The events a [hook:NAME] may name (CONTRACT.md, "Event hooks").
HOOK_EVENTS = (
    "started", "running", "backoff", "fatal", "exited", "crashed", "stopped", "max_request",
    "memory_limit", "request_timeout", "max_lifetime", "scaled", "reloaded",
)  # fmt: skip

SECTION_SPECS = {"gsuper": SPEC_GSUPER, "program": SPEC_PROGRAM, "group": SPEC_GROUP, "hook": SPEC_HOOK}
LIST_CHECKS = ("path_list", "int_list", "name_list", "env", "hook_events")
_HOSTNAME = socket.gethostname()
RUNNER_INTERPRETERS = {"php": "php", "python": "python3", "shell": "sh"}
# Keys whose values hold %(...)s expansions, worked out per worker (gsuper/expand.py).
EXPANDED_KEYS = ("command", "environment", "directory", "logfile", "stderr_logfile")


def valid_name(name: str) -> bool:
    """Program and group names: any Unicode letters and digits, `_`, `.` and `-` (as supervisor)."""
    return bool(name) and all(ch.isalnum() or ch in "_.-" for ch in name)
STDOUT_LOGDIR = "-"  # logdir = -: logs to the master's stdout


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
    value = float(m.group(1)) * _SIZE_UNITS[unit]
    if value >= 2**63:  # 400 digits parse as inf: a size past any machine is an error, not a crash
        raise ValueError(f'"{text.strip()[:40]}" is too big for a size')
    return int(value)


def parse_duration(text: str) -> float:
    """Parse `30`, `30s`, `500ms`, `5m`, `1h` into seconds."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h)?\s*", str(text))
    if not m and re.fullmatch(r"\s*-\s*\d+(?:\.\d+)?\s*(ms|s|m|h)?\s*", str(text)):
        raise ValueError(f'"{text}" is negative (a duration is 0 or more seconds)')
    if not m:
        raise ValueError(f'"{text}" is not a duration (use seconds, or 500ms, 30s, 5m, 1h)')
    seconds = float(m.group(1)) * _DURATION_UNITS[m.group(2) or "s"]
    if seconds > 1e9:  # also the inf of 400 digits
        raise ValueError(f'"{text.strip()[:40]}" is too long a duration')
    return seconds


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


#: What stopsignal may be: a signal that asks a process to end (STOP would freeze the group
#: until the SIGKILL, CONT or CHLD would do nothing).
STOP_SIGNALS = frozenset({"TERM", "INT", "QUIT", "HUP", "USR1", "USR2", "KILL"})


def _check_signame(value: Any) -> signal.Signals:
    sig: signal.Signals = _wrap(parse_signal, value)
    if sig.name.removeprefix("SIG") not in STOP_SIGNALS:
        raise _CheckError(f'"{value}" cannot stop a worker; use one of {", ".join(sorted(STOP_SIGNALS))}')
    return sig


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


def _check_hook_events(value: Any) -> list[str]:
    events = _as_list(value)
    if not events:
        raise _CheckError("the list is empty")
    for event in events:
        if event not in HOOK_EVENTS:
            raise _CheckError(f"{event!r} is not an event (use {', '.join(HOOK_EVENTS)})")
    return events


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
        "hook_events": _check_hook_events,
    }
)


# ---------------------------------------------------------------------------------------------
# The parsed configuration.


#: The autoscaling fields: a reload that changes only these (and numprocs) restarts no worker.
SCALING_FIELDS = ("numprocs_max", "scale_source", "scale_jobs_per_worker", "scale_interval_s", "scale_cooldown_s", "scale_step")


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
    # -- issue 10: command, directory, environment, logfile and stderr_logfile are templates
    # (gsuper/expand.py), made absolute here when they hold no expansion; runners.settings()
    # gives one worker's values.
    user: users.User | None = None
    autostart: bool = True
    logfile: str = ""
    stderr_logfile: str | None = None
    log_max_bytes: int = 0
    log_backups: int = 0
    here: str = ""  # the folder of the file that holds the section: %(here)s
    base: str = ""  # the folder relative paths are relative to (the main file's)
    per_worker: bool = False  # some template uses %(process_num)
    # -- issue 11: guarding the request (gsuper/guard.py)
    request_timeout_s: float = 0.0
    max_lifetime_s: float = 0.0
    max_lifetime_jitter_s: float = 0.0

    def expansions(self, index: int) -> dict[str, str | int]:
        """The named expansions of one worker (%(ENV_X)s come from the environment)."""
        return {
            "program_name": self.name,
            "process_num": index,
            "numprocs": self.numprocs,
            "here": self.here,
            "host_node_name": _HOSTNAME,
        }
    numprocs_max: int = 0
    scale_source: str | None = None
    scale_jobs_per_worker: int = 10
    scale_interval_s: float = 1.0
    scale_cooldown_s: float = 3.0
    scale_step: int = 1

    @property
    def autoscaled(self) -> bool:
        """True when the worker count follows the backlog (numprocs_max above numprocs)."""
        return self.numprocs_max > self.numprocs
    warm: bool = False
    after_fork: str | None = None
    opcache_dir: str | None = None

    def same_except_numprocs(self, other: ProgramConfig) -> bool:
        """True when the two differ at most in numprocs and the scale_* keys (a reload then only scales)."""
        from dataclasses import replace

        scaling = {k: getattr(other, k) for k in SCALING_FIELDS}
        return replace(self, numprocs=other.numprocs, **scaling) == other


@dataclass(frozen=True)
class HookConfig:
    """One [hook:NAME] section, parsed."""

    name: str
    events: tuple[str, ...]
    command: str
    programs: tuple[str, ...] | None
    timeout_s: float
    directory: str


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
    warnings: tuple[str, ...] = ()  # e.g. an include that matches no file
    http: tuple[str, int] | None = None
    http_token: str | None = None
    hooks: dict[str, HookConfig] = field(default_factory=dict)
    log_format: str = "text"
    on_fatal: str = "keep"
    #: SHA-256 of the file's bytes as validated; None when it has an [include] (gsuper/registry.py).
    digest: str | None = None

    @property
    def logs_to_stdout(self) -> bool:
        """`logdir = -`: no log files, every line goes to the master's stdout."""
        return self.logdir == STDOUT_LOGDIR

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

    def autostarted(self) -> list[str]:
        """The programs a plain `start` starts (autostart = true), in priority order."""
        return [n for n, p in self.programs.items() if p.autostart]

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


MAX_CONFIG_BYTES = 4 << 20  # `check -c /dev/zero` must end: no configuration is this big


def _read_lines(path: str, digests: dict[str, str] | None = None) -> list[str]:
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such configuration file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a folder, not a configuration file") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot be read ({exc.strerror})") from None
    if len(raw) > MAX_CONFIG_BYTES:
        raise ConfigError(f"{path}: is over {MAX_CONFIG_BYTES >> 20} MiB, too big to be a configuration file")
    if digests is not None:
        digests[path] = sha256_hex(raw)
    try:
        text = raw.decode("utf-8").removeprefix("\ufeff")  # the BOM Windows Notepad writes
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}: line {line}: not valid UTF-8 text") from None
    # supervisor users write `;` comments; configobj only knows `#`.
    lines = ["#" + ln.lstrip()[1:] if ln.lstrip().startswith(";") else ln for ln in text.splitlines()]
    return _inline_comments(path, lines)


def _inline_comments(path: str, lines: list[str]) -> list[str]:
    """Supervisor's inline comment (a `;` after whitespace, outside quotes) removed from each
    value; a `#` outside quotes right after a non-blank character refused: configobj would cut
    the value there (`http://host/#top`, `--queue=#jobs`) without a word."""
    out, section = [], ""
    for number, line in enumerate(lines, 1):
        stripped = line.strip()
        if stripped.startswith("["):
            section = stripped.split("]", 1)[0].lstrip("[")
        key, sep, value = line.partition("=")
        if not sep or stripped.startswith(("#", "[")):
            out.append(line)
            continue
        quote = ""
        for i, ch in enumerate(value):
            if quote:
                quote = "" if ch == quote else quote
            elif ch in "'\"":
                quote = ch
            elif ch == ";" and i and value[i - 1] in " \t":
                line = key + sep + value[:i].rstrip()
                break
            elif ch == "#":
                if i and not value[i - 1].isspace():
                    name = key.strip()
                    raise ConfigError(
                        f"{path}: line {number}: [{section}] {name}: the value looks cut by a '#' comment "
                        f"(a '#' right after {value[i - 1]!r}); quote the whole value, like {name} = '{value.strip()}'"
                    )
                break
        out.append(line)
    return out


def _spec_for(section: str) -> tuple[str, str]:
    kind, _, name = section.partition(":")
    if kind in ("gsuper", "include") and not name:
        return kind, SPEC_GSUPER if kind == "gsuper" else SPEC_INCLUDE
    if kind in ("program", "group", "hook") and name:
        if not valid_name(name):
            raise ValueError(f"[{section}]: the name {name!r} may hold only letters, digits, _ . -")
        if kind == "program" and name == "gsuper":
            raise ValueError(f"[{section}]: the name gsuper is the master's own (its log is gsuper.log); choose another")
        return kind, SECTION_SPECS[kind]
    raise ValueError(f"[{section}]: unknown section (use [gsuper], [program:NAME], [group:NAME], [hook:NAME] or [include])")


def _check_cut_values(path: str, section: str, sec: Any) -> None:
    for key, comment in sec.inline_comments.items():
        value = sec.get(key)
        if comment and isinstance(value, str) and (value.count('"') % 2 or value.count("'") % 2):
            raise ConfigError(
                f"{path}: [{section}] {key}: the value looks cut by a '#' comment; "
                f"quote the whole value, like {key} = 'sh -c \"echo a # b\"'"
            )


def _parse_file(path: str, digests: dict[str, str] | None = None) -> Any:
    """One file (the main one or an included one) read into a ConfigObj, its shape checked."""
    lines = _read_lines(path, digests)
    try:
        raw = ConfigObj(lines, list_values=False, interpolation=False, encoding="utf-8")
    except ConfigObjError as exc:
        first = (getattr(exc, "errors", None) or [exc])[0]
        msg = str(first).replace("matched as neither section nor keyword", "not a section, key = value or comment")
        raise ConfigError(f"{path}: {msg}") from None
    if raw.scalars:
        raise ConfigError(f"{path}: key {raw.scalars[0]!r} stands before any [section]")
    for section in raw.sections:
        try:
            _spec_for(section)
        except ValueError as exc:
            raise ConfigError(f"{path}: {exc}") from None
        if raw[section].sections:
            raise ConfigError(f"{path}: [{section}]: nested sections are not allowed")
        _check_cut_values(path, section, raw[section])
    return raw


def load(path: str) -> GsuperConfig:
    """Read, validate and parse a configuration file (and the files it includes), or raise ConfigError."""
    path = os.path.realpath(path)  # reached through a link, it is still the same master's file
    digests: dict[str, str] = {}
    included: list[bool] = []

    def parse(file: str) -> Any:
        raw = _parse_file(file, digests)
        if file == path:
            included.append("include" in raw.sections)
        return raw

    try:
        raw, origin, warnings = gather(path, parse, unquote)
    except IncludeError as exc:
        raise ConfigError(str(exc)) from None
    digest = None if any(included) else digests.get(path)

    spec_lines: list[str] = []
    for section in raw.sections:
        _kind, spec = _spec_for(section)
        spec_lines.append(f"[{section}]")
        spec_lines.extend(spec.strip().splitlines())
    if "gsuper" not in raw.sections:
        spec_lines = ["[gsuper]", *SPEC_GSUPER.strip().splitlines(), *spec_lines]
        raw["gsuper"] = {}
        origin["gsuper"] = path
    spec = ConfigObj(spec_lines, list_values=False, _inspec=True)
    raw.configspec = spec
    # Scalars are unquoted before validation so built-in checks (integer, option) see the bare text.
    for section in raw.sections:
        for key in raw[section].scalars:
            check = spec[section].get(key, "")
            value = raw[section][key]
            if not any(check.startswith(c) for c in LIST_CHECKS) and isinstance(value, str):
                if key == "command" and _names_a_file(value, os.path.dirname(path), raw[section].get("directory")):
                    # `command = "./my script.sh"`: quoted whole, no quote inside, and naming a file
                    # as a whole: one word, as a shell reads it (escaped, as shlex.split reads it
                    # back). Otherwise the quotes only protect a '#' and the words are split.
                    raw[section][key] = re.sub(r"([\s\\])", r"\\\1", value.strip()[1:-1])
                    continue
                raw[section][key] = unquote(value)
                if check.startswith("option("):  # supervisor takes True and DEBUG
                    raw[section][key] = raw[section][key].lower()

    result = raw.validate(VALIDATOR, preserve_errors=True)
    if result is not True:
        for sections, key, error in flatten_errors(raw, result):
            where = f"[{sections[0]}]" if sections else ""
            file = origin.get(sections[0], path) if sections else path
            if key is None:
                raise ConfigError(f"{file}: {where} section is missing")
            if isinstance(error, VdtMissingValue) or error is False:
                raise ConfigError(f"{file}: {where} {key}: a value is required")
            raise ConfigError(f"{file}: {where} {key}: {_describe(error)}")
    for sections, key in get_extra_values(raw):
        where = f"[{sections[0]}] " if sections else ""
        file = origin.get(sections[0], path) if sections else path
        raise ConfigError(f"{file}: {where}{key}: unknown key")
    return replace(_build(path, raw, origin, tuple(warnings)), digest=digest)


def _names_a_file(value: str, base: str, directory: Any) -> bool:
    text = value.strip()
    inner = text[1:-1]
    if len(text) < 2 or text[0] != text[-1] or text[0] not in "'\"" or any(q in inner for q in "'\"") or " " not in inner:
        return False
    folder = os.path.join(base, os.path.expanduser(unquote(directory))) if isinstance(directory, str) else base
    return os.path.isfile(os.path.join(folder, os.path.expanduser(inner)))


def load_paths_only(path: str) -> GsuperConfig:
    """Only rundir and logdir, read leniently from a file that does not validate.

    So that `stop`, `exit` and `status` still reach a running master after its file was broken
    by an edit. Raises ConfigError only when the file cannot be read at all.
    """
    path = os.path.realpath(path)
    try:
        lines = _read_lines(path)
    except ConfigError:
        if not os.path.isfile(path):
            raise
        with open(path, encoding="utf-8", errors="replace") as fh:  # a cut value must not hide the master
            lines = fh.read(MAX_CONFIG_BYTES).splitlines()
    base = os.path.dirname(path)
    try:
        section = ConfigObj(lines, list_values=False, interpolation=False).get("gsuper", {})
    except ConfigObjError:
        section = {}

    def folder(key: str, default: str) -> str:
        value = section.get(key) if isinstance(section, dict) else None
        text = unquote(value) if isinstance(value, str) and value.strip() else default
        if text == STDOUT_LOGDIR and key == "logdir":
            return text
        return os.path.normpath(os.path.join(base, os.path.expanduser(text)))

    return GsuperConfig(path, folder("rundir", "run"), folder("logdir", "log"), "info", 0, 0, 1.0)


def _describe(error: Exception) -> str:
    text = str(error)
    if isinstance(error, _CheckError):
        return text
    # validate's own messages ('the value "x" is of the wrong type.') end with a period.
    return text.rstrip(".")


def _build(path: str, raw: Any, origin: dict[str, str], warnings: tuple[str, ...] = ()) -> GsuperConfig:
    base = os.path.dirname(path)
    g = raw["gsuper"]

    def absolute(p: str, root: str = base) -> str:
        return os.path.normpath(os.path.join(root, os.path.expanduser(p)))

    logdir = STDOUT_LOGDIR if g["logdir"] == STDOUT_LOGDIR else absolute(g["logdir"])
    defaults = {"base": base, "logdir": logdir, "log_max_bytes": g["log_max_bytes"], "log_backups": g["log_backups"]}
    programs: dict[str, ProgramConfig] = {}
    groups: dict[str, tuple[str, ...]] = {}
    for section in raw.sections:
        kind, _, name = section.partition(":")
        if kind == "program":
            programs[name] = _build_program(origin.get(section, path), name, raw[section], absolute, defaults)
            if programs[name].runner == "php" and raw[section]["opcache"]:
                # Cold php workers keep compiled scripts in a file cache here (runners.py).
                programs[name] = replace(programs[name], opcache_dir=os.path.join(absolute(g["rundir"]), "opcache", name))
        elif kind == "group":
            groups[name] = tuple(raw[section]["programs"])
    for gname, members in groups.items():
        for member in members:
            if member not in programs:
                file = origin.get(f"group:{gname}", path)
                raise ConfigError(f"{file}: [group:{gname}] programs: no program named {member!r}")
    hooks: dict[str, HookConfig] = {}
    for section in raw.sections:
        kind, _, name = section.partition(":")
        if kind == "hook":
            sec = raw[section]
            for member in sec["programs"] or ():
                if member not in programs:
                    raise ConfigError(f"{path}: [hook:{name}] programs: no program named {member!r}")
            programs_filter = tuple(sec["programs"]) if sec["programs"] else None
            hooks[name] = HookConfig(name, tuple(sec["events"]), sec["command"], programs_filter, sec["timeout"], base)
    http = _parse_http(path, g["http"], g["http_token"])
    ordered = dict(sorted(programs.items(), key=lambda kv: (kv[1].priority, kv[0])))
    return GsuperConfig(
        path=path,
        rundir=absolute(g["rundir"]),
        logdir=logdir,
        loglevel=g["loglevel"],
        log_max_bytes=g["log_max_bytes"],
        log_backups=g["log_backups"],
        memory_check_interval_s=max(0.05, g["memory_check_interval"]),
        programs=ordered,
        groups=groups,
        warnings=warnings,
        http=http,
        http_token=g["http_token"],
        hooks=hooks,
        log_format=g["log_format"],
        on_fatal=g["on_fatal"],
    )


def is_loopback(host: str) -> bool:
    """True for an address (or `localhost`) that only this machine can reach."""
    import ipaddress

    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _parse_http(path: str, value: str | None, token: str | None) -> tuple[str, int] | None:
    """`HOST:PORT` (or `[V6]:PORT`) of [gsuper] http; beyond loopback only with a token."""
    if value is None:
        if token is not None:
            raise ConfigError(f"{path}: [gsuper] http_token: set http = HOST:PORT too, or remove the token")
        return None
    m = re.fullmatch(r"\[([0-9A-Fa-f:.]+)\]:(\d+)|([^:\s\[\]]*):(\d+)", value.strip())
    if not m:
        raise ConfigError(f'{path}: [gsuper] http: "{value}" is not HOST:PORT (like 127.0.0.1:9100)')
    host = m.group(1) if m.group(1) is not None else m.group(3)
    port = int(m.group(2) or m.group(4))
    if not 1 <= port <= 65535:
        raise ConfigError(f"{path}: [gsuper] http: the port {port} is not from 1 to 65535")
    if not host:
        host = "0.0.0.0"
    if not is_loopback(host) and not token:
        raise ConfigError(
            f"{path}: [gsuper] http: {host} is reachable beyond this machine; set http_token (or bind 127.0.0.1)"
        )
    return host, port


@dataclass(frozen=True)
class WorkerSettings:
    """The expanded values of one worker of a program (paths absolute)."""

    command: str | None
    directory: str
    environment: tuple[tuple[str, str], ...]
    logfile: str
    stderr_logfile: str | None


def _template(text: str, absolute: Any) -> str:
    """A path template: made absolute now when it holds no expansion, else after expanding.

    The folder joined in is escaped, so a `%` in it stays literal when the template is expanded.
    """
    return text if "%" in text else _escape(absolute(text))


def worker_settings(program: ProgramConfig, index: int) -> WorkerSettings:
    """Expand the program's templates for worker `index`. Raises ExpansionError (with the key)."""
    values = program.expansions(index)

    def one(key: str, text: str) -> str:
        try:
            return expand(text, values, os.environ)
        except ExpansionError as exc:
            raise ExpansionError(f"{key}: {exc}") from None

    def path(key: str, text: str) -> str:
        expanded = one(key, text)
        return os.path.normpath(os.path.join(program.base, os.path.expanduser(expanded)))

    return WorkerSettings(
        command=None if program.command is None else one("command", program.command),
        directory=path("directory", program.directory),
        environment=tuple((k, one("environment", v)) for k, v in program.environment),
        logfile=path("logfile", program.logfile),
        stderr_logfile=None if program.stderr_logfile is None else path("stderr_logfile", program.stderr_logfile),
    )


def _escape(path: str) -> str:
    return path.replace("%", "%%")


def _build_program(path: str, name: str, sec: Any, absolute: Any, defaults: dict[str, Any]) -> ProgramConfig:
    where = f"{path}: [program:{name}]"
    runner = sec["runner"]
    mode = sec["mode"] or ("loop" if runner in ("php", "python") else "daemon")
    main_dir = defaults["base"]  # relative paths, in included files too, are the main file's
    directory = _template(sec["directory"], absolute) if sec["directory"] else _escape(main_dir)
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

    user = _user(where, sec["user"])
    env = sec["environment"] or {}
    interpreter = sec["interpreter"]
    numprocs_max = _check_scaling(where, sec)
    after_fork = absolute(sec["after_fork"]) if sec["after_fork"] else None
    if (sec["warm"] or after_fork) and runner != "php":
        raise ConfigError(f"{where} {'warm' if sec['warm'] else 'after_fork'}: only for runner = php")
    if after_fork and not os.path.isfile(after_fork):
        raise ConfigError(f"{where} after_fork: file not found: {after_fork}")
    if sec["max_request"] and mode != "loop":
        raise ConfigError(f"{where} max_request: only for mode = loop (a daemon-mode program serves no requests)")
    if sec["request_timeout"] and mode != "loop" and runner in ("php", "python"):
        raise ConfigError(f"{where} request_timeout: only for mode = loop (a daemon-mode {runner} program serves no requests)")
    logfile = sec["logfile"]
    stderr_logfile = sec["stderr_logfile"]
    templates = [command or "", directory, logfile or "", stderr_logfile or "", *env.values()]
    program = ProgramConfig(
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
        user=user,
        autostart=sec["autostart"],
        logfile=_template(logfile, absolute) if logfile else _escape(os.path.join(defaults["logdir"], f"{name}.log")),
        stderr_logfile=_template(stderr_logfile, absolute) if stderr_logfile else None,
        log_max_bytes=defaults["log_max_bytes"] if sec["log_max_bytes"] is None else sec["log_max_bytes"],
        log_backups=defaults["log_backups"] if sec["log_backups"] is None else sec["log_backups"],
        here=os.path.dirname(path),
        base=main_dir,
        per_worker=any("process_num" in names_used(t) for t in templates),
        numprocs_max=numprocs_max,
        scale_source=sec["scale_source"],
        scale_jobs_per_worker=sec["scale_jobs_per_worker"],
        scale_interval_s=max(0.05, sec["scale_interval"]),
        scale_cooldown_s=sec["scale_cooldown"],
        scale_step=sec["scale_step"],
        request_timeout_s=sec["request_timeout"],
        max_lifetime_s=sec["max_lifetime"],
        max_lifetime_jitter_s=sec["max_lifetime_jitter"],
        warm=sec["warm"],
        after_fork=after_fork,
    )
    _check_workers(where, program, user)
    # The runner files, the script and the bootstrap are read by the worker itself, as the user.
    for entry in [*(b for b in program.bootstrap if "/" in b), script, _runner_file(runner)] if user else []:
        if entry and user and not user.can(entry, os.R_OK):
            raise ConfigError(f"{where}: user {user.name} cannot read {entry}")
    return program


def _runner_file(runner: str) -> str | None:
    from gsuper import runners  # runners imports this module

    return runners.runner_file(runner)


def _user(where: str, text: str | None) -> users.User | None:
    """The `user` key: a known user, and a master that can become it."""
    if text is None:
        return None
    try:
        user = users.lookup(text)
    except LookupError as exc:
        raise ConfigError(f"{where} user: {exc}") from None
    if os.geteuid() not in (0, user.uid):
        raise ConfigError(
            f"{where} user: only a master running as root can run workers as {user.name} "
            f"(this one would run as uid {os.geteuid()})"
        )
    return user


def _check_workers(where: str, program: ProgramConfig, user: users.User | None) -> None:
    """Expand every worker's templates and check what they point to (each distinct value once)."""
    seen_dirs: set[str] = set()
    seen_programs: set[tuple[str, str, str | None]] = set()
    # Up to numprocs_max: an autoscaled program may start that many, each its own expansion.
    for index in range(max(program.numprocs, program.numprocs_max) if program.per_worker else 1):
        try:
            ws = worker_settings(program, index)
        except ExpansionError as exc:
            raise ConfigError(f"{where} {exc}") from None
        if ws.directory not in seen_dirs:
            seen_dirs.add(ws.directory)
            if not os.path.isdir(ws.directory):
                raise ConfigError(f"{where} directory: no such folder {ws.directory}")
            if user is not None and not user.can(ws.directory, os.R_OK | os.X_OK):
                raise ConfigError(f"{where} directory: user {user.name} cannot enter {ws.directory}")
        env = dict(ws.environment)
        if program.runner == "exec":
            assert ws.command is not None
            try:
                argv = shlex.split(ws.command)
            except ValueError as exc:
                raise ConfigError(f"{where} command: cannot be split into words ({exc})") from None
            if not argv:
                raise ConfigError(f"{where} command: is empty")
            key, name = "command", argv[0]
        else:
            key, name = "interpreter", program.interpreter or RUNNER_INTERPRETERS[program.runner]
            name = (shlex.split(name) or [name])[0]
        if (name, ws.directory, env.get("PATH")) not in seen_programs:
            seen_programs.add((name, ws.directory, env.get("PATH")))
            _require_program(where, key, name, ws.directory, env, user)


def _check_scaling(where: str, sec: Any) -> int:
    """numprocs_max (numprocs when absent), after checking the autoscaling keys fit together."""
    numprocs, numprocs_max, source = sec["numprocs"], sec["numprocs_max"], sec["scale_source"]
    if numprocs_max is None:
        numprocs_max = numprocs
    if numprocs_max < numprocs:
        raise ConfigError(
            f"{where} numprocs_max: {numprocs_max} is below numprocs {numprocs} "
            "(numprocs is the least number of workers, numprocs_max the most)"
        )
    if source is not None:
        from gsuper.backlog import parse_source

        try:
            parse_source(source)
        except ValueError as exc:
            raise ConfigError(f"{where} scale_source: {exc}") from None
    elif numprocs_max > numprocs:
        raise ConfigError(f"{where} scale_source: required when numprocs_max ({numprocs_max}) is above numprocs ({numprocs})")
    return int(numprocs_max)


def _require_program(
    where: str, key: str, program: str, directory: str, env: dict[str, str], user: users.User | None = None
) -> None:
    if "/" in program:
        full = os.path.join(directory, program)
        if not (os.path.isfile(full) and os.access(full, os.X_OK)):
            raise ConfigError(f"{where} {key}: {full} is not an executable file")
        if user is not None and not user.can(full, os.X_OK):
            raise ConfigError(f"{where} {key}: user {user.name} cannot run {full}")
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
    specs = [("[gsuper]", SPEC_GSUPER), ("[program:NAME]", SPEC_PROGRAM), ("[group:NAME]", SPEC_GROUP)]
    specs.append(("[include]", SPEC_INCLUDE))
    specs.append(("[hook:NAME]", SPEC_HOOK))
    for title, spec in specs:
        out += [f"## `{title}`", "", "| key | type | default | meaning |", "|---|---|---|---|"]
        doc = ""
        for line in spec.strip().splitlines():
            if line.startswith("#"):  # a key's documentation may span several comment lines
                doc = f"{doc} {line[1:].strip()}".strip()
                continue
            key, _, check = (part.strip() for part in line.partition("="))
            m = re.search(r"default=(?:list\((.*?)\)|([^,)]+))", check)
            default = "required" if not m else (m.group(1) if m.group(1) is not None else m.group(2))
            default = default.strip('"') if default not in ("None", "") else "none"
            kind = check.split("(")[0]
            out.append(f"| `{key}` | {kind} | `{default}` | {doc} |")
            doc = ""
        out.append("")
    return "\n".join(out)


if __name__ == "__main__":
    print(reference_markdown())
