"""gsuper: keep background scripts alive (PHP, Python, shell, any command).

Usage:
  gsuper -s start   [-c FILE] [-p NAME]... [-g GROUP]... [--foreground]
  gsuper -s stop    [-c FILE] [-p NAME]... [-g GROUP]... [--timeout SEC]
  gsuper -s exit    [-c FILE]
  gsuper -s restart [-c FILE] [-p NAME]... [-g GROUP]... [--rolling]
  gsuper -s reload  [-c FILE]
  gsuper -s scale   [-c FILE] NAME=N
  gsuper -s tail    [-c FILE] [-p NAME] [-n LINES] [-f]
  gsuper -s status  [-c FILE] [-p NAME]... [-g GROUP]... [--json]
  gsuper -s check   [-c FILE]
  gsuper -s import  FILE
  gsuper help [COMMAND]
  gsuper -h | --help
  gsuper --version

Options:
  -c FILE, --config FILE    Configuration file [default: gsuper.ini].
  -p NAME, --program NAME   Act on this program only (repeatable).
  -g GROUP, --group GROUP   Act on this group's programs only (repeatable).
  --foreground              Run the master in this terminal, logging to stderr.
  --timeout SEC             Seconds each worker gets before SIGKILL (instead of stop_timeout).
  --rolling                 Replace workers one at a time, each replacement up first.
  -n LINES, --lines LINES   Lines of log to print [default: 10].
  -f, --follow              Keep printing what is appended to the log.
  --json                    Print status as one JSON document.
  -h, --help                Show this help.
  --version                 Show the version.
"""

from __future__ import annotations

import os
import sys
import time

from gsuper import __version__, client

# What only some commands need is imported where they need it: `status` takes a fast path
# (gsuper/client.py) that must not pay for docopt, configobj, the configspec or typing.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from gsuper import config

COMMANDS = ("start", "stop", "exit", "restart", "reload", "scale", "tail", "status", "check", "import")
HELP = {
    "start": "Start the master and its workers (daemonized; --foreground keeps it in the terminal).\n"
    "With -p/-g and a running master, start just those programs.",
    "stop": "Graceful stop: every worker finishes the request it is in, then exits; waits until\n"
    "they are gone (and, with no -p/-g, the master too). SIGKILL after stop_timeout.",
    "exit": "Forced stop: SIGKILL to every worker's process group and to the master at once.",
    "restart": "stop then start, on the same configuration. --rolling replaces workers one at a\n"
    "time, each replacement ready before the old one is stopped.",
    "reload": "Re-read the configuration and apply the difference (like SIGHUP to the master).",
    "scale": "Set a program's worker count now: gsuper -s scale NAME=N.",
    "tail": "Print a program's log (the master's with no -p); -f follows it across rotation.",
    "status": "One row per worker; --json prints one JSON document.",
    "check": "Validate the configuration and start nothing (like nginx -t).",
    "import": "Print a gsuper.ini equivalent to a supervisord.conf, a PM2 ecosystem file or the original\n"
    "manager's serviceConf.php; what does not carry over is a comment, and named on stderr.",
}


class Fail(Exception):
    """A request that could not be done: message for stderr, and an exit code."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def main(argv: list[str] | None = None) -> int:
    """Entry point of `gsuper` and `bin/gsuper`."""
    argv = sys.argv[1:] if argv is None else argv
    try:
        fast = client.parse_status_argv(argv)
        if fast is not None:
            code = client.status(fast)  # None: it cannot vouch for the answer; the full path runs
            if code is not None:
                return code
        from docopt import DocoptExit, docopt

        try:
            args = docopt(__doc__ or "", argv=argv, version=f"gsuper {__version__}", default_help=True)
        except DocoptExit:
            print(f"gsuper: {_usage_problem(argv)}", file=sys.stderr)
            return 2
        except SystemExit as exc:  # --help and --version print and exit through here
            return int(exc.code or 0)
        if args["help"]:
            return _help(args["COMMAND"])
        command = next(c for c in COMMANDS if args[c])
        return int(globals()[f"cmd_{command}"](args))
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `gsuper -s status | head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except Exception as exc:  # noqa: BLE001 - a user never gets a traceback
        return _failed(exc)


def _failed(exc: Exception) -> int:
    """The one sentence and exit code of a command that failed."""
    try:
        from gsuper import config, control
    except Exception as broken:  # noqa: BLE001 - a broken install: still one sentence
        print(f"gsuper: internal error ({type(exc).__name__}: {exc}; {broken}); please report it", file=sys.stderr)
        return 1
    if isinstance(exc, config.ConfigError):
        print(f"gsuper: {exc}", file=sys.stderr)
        return 2
    if isinstance(exc, (Fail, control.ControlError)):
        print(f"gsuper: {exc}", file=sys.stderr)
        return exc.code if isinstance(exc, Fail) else 1
    if isinstance(exc, PermissionError):  # e.g. `-s exit` by a user against root's master
        where = f" on {exc.filename}" if exc.filename else ""
        print(f"gsuper: permission denied{where}: run this as root or as the user the master runs as", file=sys.stderr)
        return 1
    # This is a bug to report.
    print(f"gsuper: internal error ({type(exc).__name__}: {exc}); please report it", file=sys.stderr)
    return 1


def _usage_problem(argv: list[str]) -> str:
    if "-s" in argv:
        i = argv.index("-s")
        given = argv[i + 1] if i + 1 < len(argv) else ""
        if not given or given.startswith("-"):
            return f"-s needs a command: {', '.join(COMMANDS)} (see gsuper --help)"
        if given not in COMMANDS:
            return f"unknown command {given!r}; the commands are {', '.join(COMMANDS)} (see gsuper --help)"
        return f"wrong options for {given}; usage: {_usage_line(given)}"
    return "a command is required, as in gsuper -s start -c gsuper.ini (see gsuper --help)"


def _help(command: str | None) -> int:
    if command is None:
        print(__doc__)
        return 0
    if command not in HELP:
        raise Fail(f"no help for {command!r}; the commands are {', '.join(COMMANDS)}", 2)
    print(f"{_usage_line(command)}\n\n{HELP[command]}")
    return 0


def _usage_line(command: str) -> str:
    """The command's line of the docopt usage text."""
    import re

    return next(ln.strip() for ln in (__doc__ or "").splitlines() if re.match(rf"\s+gsuper -s {command}\b", ln))


# -- helpers ------------------------------------------------------------------------------------


def _load(args: dict[str, Any], warn: bool = False) -> config.GsuperConfig:
    from gsuper import config

    cfg = config.load(args["--config"])
    for warning in cfg.warnings if warn else ():  # e.g. an [include] glob that matches no file
        print(f"gsuper: warning: {warning}", file=sys.stderr)
    return _located(cfg)


def _located(cfg: config.GsuperConfig) -> config.GsuperConfig:
    """The paths the running master uses, should the file's rundir or logdir have been edited."""
    from gsuper import registry

    cfg, note = registry.locate(cfg)
    if note:
        print(f"gsuper: warning: {note}", file=sys.stderr)
    return cfg


def _load_for_running(args: dict[str, Any]) -> config.GsuperConfig:
    """The configuration, or, when it no longer validates but its master runs, just its paths.

    A typo saved into the file must not keep anyone from stopping or inspecting the master that
    runs the previous version; the master checks program and group names itself.
    """
    from gsuper import config, daemon

    try:
        return _load(args)
    except config.ConfigError as exc:
        cfg = _located(config.load_paths_only(args["--config"]))
        if not daemon.running_pid(cfg.pidfile):
            raise
        print(f"gsuper: warning: {exc}; acting on the running master anyway", file=sys.stderr)
        return cfg


def _selection(args: dict[str, Any], cfg: config.GsuperConfig) -> tuple[list[str], list[str], list[str]]:
    programs, groups = list(args["--program"] or []), list(args["--group"] or [])
    if not cfg.programs:  # only the paths are known (see _load_for_running): the master checks
        return programs, groups, programs
    return programs, groups, cfg.select(programs, groups)


def _running(cfg: config.GsuperConfig) -> int:
    from gsuper import daemon

    pid = daemon.running_pid(cfg.pidfile)
    if not pid:
        raise Fail(f"not running (no master holds {cfg.pidfile})")
    return pid


def _ask(cfg: config.GsuperConfig, payload: dict[str, Any], timeout_s: float | None = 10.0) -> dict[str, Any]:
    from gsuper import control

    reply = control.request(cfg.sockfile, payload, timeout_s)
    if not reply.get("ok"):
        raise Fail(str(reply.get("error", "the master refused the request")), 2 if reply.get("config_error") else 1)
    return reply


def _print_started(programs: dict[str, int]) -> None:
    for name, numprocs in programs.items():
        print(f"{name}: {numprocs} worker{'s' if numprocs != 1 else ''} started")


# -- commands -----------------------------------------------------------------------------------


def _preflight(cfg: config.GsuperConfig) -> None:
    """Warnings to stderr; the first reason the config cannot run here is a Fail (exit 2)."""
    from gsuper import preflight

    for text in preflight.warnings(cfg):
        print(f"gsuper: warning: {text}", file=sys.stderr)
    problems = preflight.errors(cfg)
    if problems:
        raise Fail("; ".join(problems), 2)


def cmd_check(args: dict[str, Any]) -> int:
    """Validate the configuration only."""
    cfg = _load(args, warn=True)
    _preflight(cfg)
    from gsuper.grace import grace_warnings

    for warning in grace_warnings(cfg, os.environ):
        print(f"gsuper: warning: {warning}", file=sys.stderr)
    workers = sum(p.numprocs for p in cfg.programs.values())
    print(f"{cfg.path}: configuration OK ({len(cfg.programs)} programs, {workers} workers, {len(cfg.groups)} groups)")
    return 0


def cmd_import(args: dict[str, Any]) -> int:
    """Print the gsuper.ini equivalent of another process manager's configuration."""
    from gsuper import importers

    try:
        imported = importers.import_file(args["FILE"])
    except importers.ImportFailure as exc:
        raise Fail(str(exc), 2) from None
    for line in imported.warnings + importers.not_imported(imported):
        print(f"gsuper: {line}", file=sys.stderr)
    sys.stdout.write(importers.render(imported))
    return 0


def cmd_start(args: dict[str, Any]) -> int:
    """Start the master (or, with -p/-g on a running master, those programs)."""
    from gsuper import daemon

    cfg = _load(args, warn=True)
    programs, groups, names = _selection(args, cfg)
    pid = daemon.running_pid(cfg.pidfile)
    if not pid:
        _preflight(cfg)
    if pid:
        if not programs and not groups:
            raise Fail(f"already running (pid {pid})")
        reply = _ask(cfg, {"cmd": "start", "programs": programs, "groups": groups}, None)
        _print_started(reply["programs"])
        return 0
    # autostart = false: started only when named with -p, not by a group.
    only = [n for n in names if n in programs or cfg.programs[n].autostart] if (programs or groups) else None
    from gsuper.master import Master  # gevent is loaded only where a master runs

    if args["--foreground"]:
        def notify(msg: dict[str, Any]) -> None:
            if msg["ok"]:
                print(f"gsuper: master {msg['pid']} running in the foreground", file=sys.stderr)
                if cfg.logs_to_stdout:  # stdout carries only log records (JSON lines, maybe)
                    for name, n in msg["programs"].items():
                        print(f"gsuper: {name}: {n} worker{'s' if n != 1 else ''} started", file=sys.stderr)
                else:
                    _print_started(msg["programs"])
                    sys.stdout.flush()
            else:
                print(f"gsuper: {msg['error']}", file=sys.stderr)

        return Master(cfg, only, foreground=True).run(notify)
    return _start_daemon(cfg, only, Master)


def _start_daemon(cfg: config.GsuperConfig, only: list[str] | None, master_cls: Any) -> int:
    from gsuper import daemon

    # The master is made in the daemon, after the fork: its hub and start time are the daemon's.
    master_log = None if cfg.logs_to_stdout else os.path.join(cfg.logdir, "gsuper.log")
    msg = daemon.start_daemon(master_log, lambda notify: master_cls(cfg, only).run(notify))
    if msg is None:
        raise Fail(f"the master died while starting; see {master_log or 'its stdout (logdir = -)'}")
    if not msg["ok"]:
        raise Fail(msg["error"])
    print(f"gsuper: master {msg['pid']} started")
    _print_started(msg["programs"])
    if msg.get("unspawned"):
        failed = "; ".join(msg["unspawned"])
        raise Fail(f"{len(msg['unspawned'])} workers could not be spawned (the master retries them): {failed}")
    return 0


def cmd_stop(args: dict[str, Any]) -> int:
    """Graceful stop, waiting with progress until the workers (and master) are gone."""
    from gsuper import config

    cfg = _load_for_running(args)
    programs, groups, names = _selection(args, cfg)
    try:
        timeout_s = config.parse_duration(args["--timeout"]) if args["--timeout"] else None
    except ValueError as exc:
        raise Fail(f"--timeout: {exc}", 2) from None
    _running(cfg)
    killed = _stop(cfg, programs, groups, names, timeout_s)
    if killed:
        # CONTRACT: "a worker would not stop" is exit 1; the requests they were in were cut off.
        raise Fail(_killed_sentence(killed))
    return 0


def _killed_sentence(killed: int) -> str:
    who, were = ("workers", "were") if killed != 1 else ("worker", "was")
    return f"stopped, but {killed} {who} did not finish within the timeout and {were} killed (SIGKILL)"


def _stop(cfg: config.GsuperConfig, programs: list[str], groups: list[str], names: list[str], timeout_s: float | None) -> int:
    """Stop and wait with progress; return how many workers had to be SIGKILLed."""
    from gsuper import control, daemon
    from gsuper.states import LIVE_STATE_NAMES

    whole = not programs and not groups
    ask_stop = {"cmd": "stop", "programs": programs, "groups": groups, "timeout": timeout_s, "wait": True}
    pending = control.Pending(cfg.sockfile, ask_stop)
    reply: dict[str, Any] | None = None
    # With only the paths known (a broken file), the master's own stop_timeout is unknown here.
    longest = timeout_s if timeout_s is not None else max((p.stop_timeout_s for p in cfg.programs.values()), default=600)
    deadline = time.monotonic() + longest + 15
    progress = _Progress()
    while True:
        if pending.ready():
            reply = pending.result()
            if reply is not None and not reply.get("ok"):
                progress.done()
                raise Fail(str(reply.get("error", "the master refused the request")))
            if reply is not None or not whole:
                break
        try:
            ask = {"cmd": "status", "programs": programs, "groups": groups, "rss": False}
            status = control.request(cfg.sockfile, ask, 5)["status"]
        except control.ControlError:
            status = None
        if status is None:
            if not daemon.running_pid(cfg.pidfile):
                break
            left: list[dict[str, Any]] = []
        else:
            left = [w for w in status["workers"] if w["state"] in LIVE_STATE_NAMES]
        progress.show(left)
        if time.monotonic() > deadline:
            progress.done()
            raise Fail(f"{len(left)} workers would not stop within {longest + 15:.0f}s")
        time.sleep(0.05)
    progress.done()
    if reply is None and pending.ready():  # the master replied, then exited before we looked
        reply = pending.result()
    if reply is not None and whole:
        daemon.wait_gone(cfg.pidfile, 10)  # the reply comes just before the master exits
    killed = int(reply.get("killed") or 0) if reply else 0
    if not killed:
        print("stopped" if whole else f"stopped {', '.join(names)}")
    return killed


class _Progress:
    """Which workers are still draining: one updated line on a terminal, plain lines on a pipe."""

    def __init__(self) -> None:
        self.tty = sys.stdout.isatty()
        self.last: str | None = None

    def show(self, left: list[dict[str, Any]]) -> None:
        if not left:
            return
        if self.tty:
            parts = [
                f"{w['program']}#{w['index']}" + (f" ({w['stop_in_s']}s to SIGKILL)" if w.get("stop_in_s") is not None else "")
                for w in left[:6]
            ]
            more = f" +{len(left) - 6} more" if len(left) > 6 else ""
            plural = "s" if len(left) != 1 else ""
            sys.stdout.write(f"\r\033[Kstopping: {len(left)} worker{plural} left: {', '.join(parts)}{more}")
            sys.stdout.flush()
            self.last = "tty"
            return
        line = f"stopping: {len(left)} worker{'s' if len(left) != 1 else ''} left"
        if line != self.last:
            print(line, flush=True)
            self.last = line

    def done(self) -> None:
        if self.tty and self.last:
            sys.stdout.write("\r\033[K")
            sys.stdout.flush()


def cmd_exit(args: dict[str, Any]) -> int:
    """SIGKILL every worker's process group and the master at once."""
    cfg = _load_for_running(args)
    pid = _running(cfg)
    from gsuper import daemon, record

    groups = record.force_exit(pid, cfg.workersfile)
    if not daemon.wait_gone(cfg.pidfile, 10):
        raise Fail(f"master {pid} did not die")
    for path in (cfg.pidfile, cfg.sockfile, cfg.workersfile):
        try:
            os.unlink(path)
        except OSError:
            pass
    from gsuper import registry

    registry.forget(cfg)
    print(f"killed master {pid} and {groups} worker process groups")
    return 0


def cmd_restart(args: dict[str, Any]) -> int:
    """stop then start; --rolling replaces workers one at a time."""
    cfg = _load(args)
    programs, groups, names = _selection(args, cfg)
    if args["--rolling"]:
        _running(cfg)
        reply = _ask(cfg, {"cmd": "restart", "rolling": True, "programs": programs, "groups": groups}, None)
        for name, n in reply["replaced"].items():
            print(f"{name}: {n} workers replaced one at a time")
        return 0
    from gsuper import daemon

    if daemon.running_pid(cfg.pidfile):
        killed = _stop(cfg, programs, groups, names, None)
        if killed:  # the restart goes on: the start is what was asked for
            print(f"gsuper: warning: {_killed_sentence(killed)}", file=sys.stderr)
    args = dict(args, **{"--foreground": False})
    return cmd_start(args)


def cmd_reload(args: dict[str, Any]) -> int:
    """Re-read the configuration and apply the difference."""
    cfg = _load(args, warn=True)
    _running(cfg)
    reply = _ask(cfg, {"cmd": "reload"}, None)
    for line in reply["changes"]:
        print(line)
    if reply.get("errors"):
        raise Fail(f"the reload could not apply every change: {'; '.join(reply['errors'])}")
    return 0


def cmd_scale(args: dict[str, Any]) -> int:
    """Set a program's worker count now."""
    import re

    from gsuper import config

    cfg = _load(args)
    name, sep, count = args["NAME=N"].partition("=")
    if not sep or not re.fullmatch(r"[0-9]+", count.strip()):  # not isdigit: "²" is a digit to it
        raise Fail(f"scale takes NAME=N, like member_1=4 (got {args['NAME=N']!r})", 2)
    if int(count) > config.MAX_WORKERS:
        limit = config.MAX_WORKERS
        raise Fail(f"scale {name}: the worker count must be a whole number from 0 to {limit} (got {count.strip()})", 2)
    if name not in cfg.programs:
        raise Fail(f"{cfg.path}: no program named {name!r}", 2)
    _running(cfg)
    reply = _ask(cfg, {"cmd": "scale", "program": name, "numprocs": int(count)}, None)
    if reply.get("floor") is not None:  # autoscaled: N is the minimum for now (docs/operations.md)
        floor = reply["floor"]
        print(f"{name}: at least {floor} workers until the next reload or restart; {reply['before']} -> {reply['after']} workers")
        return 0
    print(f"{name}: {reply['before']} -> {reply['after']} workers")
    return 0


def cmd_status(args: dict[str, Any]) -> int:
    """One row per worker, or the JSON document."""
    cfg = _load_for_running(args)
    programs, groups, _names = _selection(args, cfg)
    _running(cfg)
    reply = _ask(cfg, client.status_request(programs, groups, bool(args["--json"])))
    client.print_reply(reply, bool(args["--json"]))
    return 0


def cmd_tail(args: dict[str, Any]) -> int:
    """Print the last lines of a log, and follow it across rotation with -f."""
    cfg = _load(args)
    names = list(args["--program"] or [])
    if names and names[0] not in cfg.programs:
        raise Fail(f"{cfg.path}: no program named {names[0]!r}", 2)
    try:
        lines = int(args["--lines"])
    except ValueError:
        raise Fail(f"-n takes a number of lines (got {args['--lines']!r})", 2) from None
    if cfg.logs_to_stdout:
        raise Fail(
            f"{cfg.path}: logdir = - sends every log line to the master's stdout, not to files: "
            "read them where that goes (docker logs, kubectl logs, journalctl -u)"
        )
    from gsuper.runners import settings
    from gsuper.tail import follow, last_lines

    # The program's `logfile` (worker 0's, when it differs per worker).
    path = settings(cfg.programs[names[0]], 0).logfile if names else os.path.join(cfg.logdir, "gsuper.log")

    if not os.path.exists(path) and not args["--follow"]:
        raise Fail(f"no log yet at {path}")
    for chunk in follow(path, lines) if args["--follow"] else [last_lines(path, lines)]:
        sys.stdout.buffer.write(chunk)
        sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
