"""The master: programs, the signal queue, the memory monitor, the control commands, shutdown."""

from __future__ import annotations

import ctypes
import json
import logging
import os
import signal
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import gevent.queue
import psutil

from gsuper import __version__, config
from gsuper.control import ControlServer
from gsuper.daemon import PidFile, describe
from gsuper.logs import LogFile, setup_master_logging
from gsuper.program import Program, RollingError
from gsuper.spawn import SETPRIV
from gsuper.states import ProcessState
from gsuper.worker import Worker

log = logging.getLogger("gsuper")

PR_SET_CHILD_SUBREAPER = 36
HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
LIVE = (ProcessState.STARTING, ProcessState.RUNNING, ProcessState.STOPPING)

Notify = Callable[[dict[str, Any]], None]


def tree_rss(roots: Iterable[int]) -> dict[int, int]:
    """Resident memory of each root process plus all its descendants, from one pass over /proc."""
    roots = set(roots)
    children: dict[int, list[int]] = defaultdict(list)
    rss: dict[int, int] = {}
    for proc in psutil.process_iter(["ppid", "memory_info"]):
        info = proc.info
        if info["memory_info"] is None:
            continue
        rss[proc.pid] = info["memory_info"].rss
        children[info["ppid"]].append(proc.pid)
    totals: dict[int, int] = {}
    for root in roots:
        if root not in rss:
            continue
        total, stack, seen = 0, [root], set()
        while stack:
            pid = stack.pop()
            if pid in seen:
                continue
            seen.add(pid)
            total += rss.get(pid, 0)
            stack.extend(children.get(pid, ()))
        totals[root] = total
    return totals


class Master:
    """Supervises every program of one configuration file."""

    def __init__(self, cfg: config.GsuperConfig, only: list[str] | None = None, foreground: bool = False) -> None:
        self.config = cfg
        self.only = only
        self.foreground = foreground
        self.started_at = time.monotonic()
        self.programs: dict[str, Program] = {}
        self.logfiles: dict[str, LogFile] = {}
        self.pidfile = PidFile(cfg.pidfile)
        self.control = ControlServer(cfg.sockfile, self.dispatch)
        self.master_log = LogFile(os.path.join(cfg.logdir, "gsuper.log"), cfg.log_max_bytes, cfg.log_backups)
        self._signals: gevent.queue.Queue[int] = gevent.queue.Queue()
        self._done = gevent.event.Event()
        self._shutting_down = False
        self._record_pending = False
        self._busy = False  # a reload or rolling restart is being applied
        self._created = psutil.Process().create_time()

    # -- life ---------------------------------------------------------------------------------

    def run(self, notify: Notify) -> int:
        """Take the pid file, start the programs, serve until stopped. Returns the exit code."""
        setup_master_logging(self.master_log, self.config.loglevel, self.foreground)
        try:
            stale = self.pidfile.acquire()
        except Exception as exc:  # noqa: BLE001 - AlreadyRunning or an OS error, told to the CLI
            notify({"ok": False, "error": describe(exc)})
            return 1
        try:
            _no_inherited_fds()
            _set_title(f"gsuper: master {self.config.path}")
            ctypes.CDLL(None).prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
            if stale:
                self._end_leftovers()
            self.control.start()
            for sig in HANDLED_SIGNALS:
                gevent.signal_handler(sig, self._signals.put_nowait, sig)
            gevent.spawn(self._signal_loop)
            gevent.spawn(self._memory_monitor)
            log.info("master %d started with %s", os.getpid(), self.config.path)
            if SETPRIV is None:
                log.warning("setpriv (util-linux) is not installed: workers will not get SIGTERM if the master dies")
            selected = self.only if self.only is not None else list(self.config.programs)
            for name, pcfg in self.config.programs.items():
                self.programs[name] = self._make_program(pcfg)
            self._start_programs(selected)
            unspawned = [f"{w.name}: {w.last_error}" for n in selected for w in self.programs[n].workers if w.pid is None]
            notify(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "programs": {n: self.config.programs[n].numprocs for n in selected},
                    "unspawned": unspawned,
                }
            )
            # Hand back to the system what start-up (imports, the CLI's part) left free on the heap.
            ctypes.CDLL(None).malloc_trim(0)
            self._done.wait()
            return 0
        except Exception as exc:
            log.exception("master failed")
            notify({"ok": False, "error": f"the master failed to start: {describe(exc)}"})
            for program in self.programs.values():
                program.kill()
            return 1
        finally:
            self.control.close()
            self._remove(self.config.workersfile)
            self.pidfile.release()
            log.info("master %d exited", os.getpid())

    def _make_program(self, pcfg: config.ProgramConfig) -> Program:
        logfile = self.logfiles.get(pcfg.name)
        if logfile is None:
            path = os.path.join(self.config.logdir, f"{pcfg.name}.log")
            logfile = self.logfiles[pcfg.name] = LogFile(path, self.config.log_max_bytes, self.config.log_backups)
        return Program(pcfg, logfile, self._on_worker_change)

    def _by_priority(self, names: Iterable[str], descending: bool = False) -> list[list[Program]]:
        levels: dict[int, list[Program]] = defaultdict(list)
        for name in names:
            program = self.programs[name]
            levels[program.config.priority].append(program)
        return [levels[p] for p in sorted(levels, reverse=descending)]

    def _start_programs(self, names: Iterable[str]) -> None:
        for level in self._by_priority(names):
            gevent.joinall([gevent.spawn(p.start) for p in level], raise_error=True)

    def _stop_programs(self, names: Iterable[str], timeout_s: float | None = None) -> None:
        for level in self._by_priority(names, descending=True):
            gevent.joinall([gevent.spawn(p.stop, timeout_s) for p in level], raise_error=True)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Graceful stop of every program (highest priority first), then the master exits."""
        if self._shutting_down:
            return
        self._shutting_down = True
        for program in self.programs.values():
            program.halt()
        log.info("stopping every program")
        self._stop_programs(list(self.programs), timeout_s)
        self._done.set()

    def force_exit(self) -> None:
        """SIGKILL every worker's group at once and exit."""
        log.warning("forced exit: SIGKILL to every worker")
        for program in self.programs.values():
            program.kill()
        self._done.set()

    # -- signals ------------------------------------------------------------------------------

    def _signal_loop(self) -> None:
        while True:
            sig = self._signals.get()
            name = signal.Signals(sig).name.lower()
            log.info("received %s", name.upper())
            handler = getattr(self, f"handle_{name}")
            gevent.spawn(handler)

    def handle_sigterm(self) -> None:
        """First TERM: graceful stop; a second one escalates to a forced exit."""
        if self._shutting_down:
            self.force_exit()
        else:
            self.shutdown()

    handle_sigint = handle_sigterm
    handle_sigquit = handle_sigterm

    def handle_sighup(self) -> None:
        """Reload the configuration."""
        result = self.reload()
        if not result["ok"]:
            log.error("reload refused: %s", result["error"])

    def handle_sigusr1(self) -> None:
        """Reopen every log file (after logrotate moved them)."""
        self.master_log.reopen()
        for logfile in self.logfiles.values():
            logfile.reopen()
        log.info("log files reopened")

    # -- memory -------------------------------------------------------------------------------

    def _memory_monitor(self) -> None:
        """Sample the worker trees of programs with a memory_limit, each at its own interval."""
        due: dict[str, float] = {}
        while True:
            limited = [p for p in self.programs.values() if p.config.memory_limit_bytes]
            intervals = {p.name: p.config.memory_check_interval_s or self.config.memory_check_interval_s for p in limited}
            gevent.sleep(min(intervals.values(), default=self.config.memory_check_interval_s))
            now = time.monotonic()
            workers = []
            for program in limited:
                if now < due.get(program.name, 0.0) or program.name not in intervals:
                    continue
                due[program.name] = now + intervals[program.name] - 0.01
                live = (ProcessState.STARTING, ProcessState.RUNNING)
                workers += [w for w in program.workers if w.pid is not None and w.state in live]
            if not workers:
                continue
            usage = tree_rss(w.pid for w in workers if w.pid is not None)
            for w in workers:
                rss = usage.get(w.pid or 0)
                if rss is None:
                    continue
                w.rss_bytes = rss
                if rss > w.program.memory_limit_bytes:
                    limit = w.program.memory_limit_bytes
                    log.warning("%s (pid %s) uses %d bytes, over memory_limit %d", w.name, w.pid, rss, limit)
                    w.recycle("memory_limit")

    # -- the record of live workers, for a takeover after a crash ------------------------------

    def _on_worker_change(self, _worker: Worker) -> None:
        if not self._record_pending:
            self._record_pending = True
            gevent.spawn_later(0.05, self._write_record)

    def _write_record(self) -> None:
        self._record_pending = False
        workers = []
        for program in self.programs.values():
            for w in program.workers:
                if w.proc is not None and w.proc.returncode is None:
                    workers.append({"pgid": w.proc.pid, "stop_timeout_s": w.program.stop_timeout_s})
        tmp = self.config.workersfile + ".tmp"
        try:
            with open(tmp, "w") as fh:
                # Every process of those groups was created after this master: a later start
                # uses that to tell them from unrelated processes that reuse a pid.
                json.dump({"master": os.getpid(), "master_started": self._created, "workers": workers}, fh)
            os.replace(tmp, self.config.workersfile)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.config.workersfile, exc.strerror)

    def _end_leftovers(self) -> None:
        """After a master was killed: end what its workers left (their process groups)."""
        try:
            with open(self.config.workersfile) as fh:
                record = json.load(fh)
            groups = {int(w["pgid"]): float(w["stop_timeout_s"]) for w in record["workers"]}
            since = float(record["master_started"])
        except (OSError, ValueError, KeyError, TypeError):
            return
        members = _group_members(groups, since)
        if not members:
            return
        log.warning("a previous master died; ending %d processes its workers left", len(members))
        for pgid in {pg for pg, _ in members}:
            _killpg(pgid, signal.SIGTERM)
        deadline = time.monotonic() + max(groups.values(), default=0)
        while _group_members(groups, since) and time.monotonic() < deadline:
            gevent.sleep(0.05)
        for pgid in {pg for pg, _ in _group_members(groups, since)}:
            _killpg(pgid, signal.SIGKILL)

    # -- control commands ---------------------------------------------------------------------

    def dispatch(self, request: dict[str, Any]) -> dict[str, Any]:
        """Run one control request and return the reply."""
        cmd = request["cmd"]
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        try:
            names = self._names(request)
        except config.ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        result: dict[str, Any] = handler(request, names)
        return result

    def _names(self, request: dict[str, Any]) -> list[str]:
        programs = request.get("programs") or []
        groups = request.get("groups") or []
        if not isinstance(programs, list) or not isinstance(groups, list):
            raise config.ConfigError("programs and groups must be lists")
        selected = self.config.select([str(p) for p in programs], [str(g) for g in groups])
        return [n for n in selected if n in self.programs]

    def cmd_ping(self, _request: dict[str, Any], _names: list[str]) -> dict[str, Any]:
        """Liveness."""
        return {"ok": True, "pid": os.getpid()}

    def cmd_status(self, request: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """The status document of CONTRACT.md (only the selected programs' workers).

        `"rss": false` skips sampling memory: the CLI polls status while a stop drains, and one
        pass over /proc per poll would be work done for nothing.
        """
        return {"ok": True, "status": self.status(names, with_rss=request.get("rss", True) is not False)}

    def status(self, names: list[str] | None = None, with_rss: bool = True) -> dict[str, Any]:
        """Master and worker rows; RSS sampled now for every live worker tree (unless not asked)."""
        chosen = [self.programs[n] for n in (names if names is not None else list(self.programs))]
        workers = sorted((w for p in chosen for w in p.workers), key=lambda w: (w.program.name, w.index, w.started_at))
        usage = tree_rss(w.pid for w in workers if w.pid is not None and w.state in LIVE) if with_rss else {}
        rows = []
        for w in workers:
            if w.pid is not None and w.pid in usage and w.state in LIVE:
                w.rss_bytes = usage[w.pid]
            rows.append(w.snapshot())
        return {
            "master": {
                "pid": os.getpid(),
                "config": self.config.path,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "version": __version__,
                "stopping": self._shutting_down,
            },
            "workers": rows,
        }

    def cmd_start(self, _request: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Start the selected programs' slots that are at rest."""
        if self._shutting_down:
            return {"ok": False, "error": "the master is stopping"}
        self._start_programs(names)
        return {"ok": True, "programs": {n: self.programs[n].config.numprocs for n in names}}

    def cmd_stop(self, request: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Stop the selected programs, or everything and the master; replies at once."""
        timeout = request.get("timeout")
        timeout_s = float(timeout) if isinstance(timeout, (int, float)) else None
        if not request.get("programs") and not request.get("groups"):
            gevent.spawn(self.shutdown, timeout_s)
            return {"ok": True, "shutdown": True}
        gevent.spawn(self._stop_programs, names, timeout_s)
        return {"ok": True, "shutdown": False, "programs": names}

    def cmd_restart(self, request: dict[str, Any], names: list[str]) -> dict[str, Any]:
        """Rolling restart of the selected programs (the plain restart is stop then start)."""
        if not request.get("rolling"):
            return {"ok": False, "error": "only the rolling restart is done by the master"}
        if self._shutting_down:
            return {"ok": False, "error": "the master is stopping"}
        if self._busy:
            return {"ok": False, "error": "a reload or rolling restart is already in progress"}
        self._busy = True
        replaced: dict[str, int] = {}
        try:
            for name in names:
                replaced[name] = self.programs[name].rolling_restart()
        except RollingError as exc:
            return {"ok": False, "error": str(exc), "replaced": replaced}
        finally:
            self._busy = False
        return {"ok": True, "replaced": replaced}

    def cmd_scale(self, request: dict[str, Any], _names: list[str]) -> dict[str, Any]:
        """Set one program's worker count now."""
        name, numprocs = request.get("program"), request.get("numprocs")
        if self._shutting_down:
            return {"ok": False, "error": "the master is stopping"}
        if name not in self.programs:
            return {"ok": False, "error": f"no program named {name!r}"}
        if not isinstance(numprocs, int) or not 0 <= numprocs <= 1000:
            return {"ok": False, "error": "the worker count must be a whole number from 0 to 1000"}
        program = self.programs[name]
        before = len(program.workers)
        program.scale(numprocs)
        log.info("scaled %s from %d to %d workers", name, before, numprocs)
        return {"ok": True, "program": name, "before": before, "after": numprocs}

    def cmd_reload(self, _request: dict[str, Any], _names: list[str]) -> dict[str, Any]:
        """Re-read the configuration and apply the difference."""
        return self.reload()

    def reload(self) -> dict[str, Any]:
        """Apply a new configuration: add, remove, restart (rolling) or scale what changed."""
        try:
            new = config.load(self.config.path)
        except config.ConfigError as exc:
            return {"ok": False, "error": str(exc), "config_error": True}
        if self._busy or self._shutting_down:
            return {"ok": False, "error": "a reload, rolling restart or stop is already in progress"}
        self._busy = True
        try:
            changes, errors = self._apply(new)
            return {"ok": True, "changes": changes, "errors": errors}
        finally:
            self._busy = False

    def _apply(self, new: config.GsuperConfig) -> tuple[list[str], list[str]]:
        """Returns the changes made, and the errors of those that could not be made."""
        old = self.config
        changes: list[str] = []
        errors: list[str] = []
        if (new.rundir, new.logdir) != (old.rundir, old.logdir):
            changes.append("rundir and logdir changes take effect at the next start")
        logging.getLogger("gsuper").setLevel(new.loglevel.upper())
        self.config = new
        removed = [n for n in old.programs if n not in new.programs]
        self._stop_programs(removed)
        for name in removed:
            del self.programs[name]
            changes.append(f"removed {name}: stopped")
        for name, pcfg in new.programs.items():
            program = self.programs.get(name)
            if program is None:
                continue
            if program.config == pcfg:
                changes.append(f"unchanged {name}")
                continue
            running = any(w.state is not ProcessState.STOPPED for w in program.workers)
            if program.config.same_except_numprocs(pcfg):
                before = len(program.workers)
                if running:
                    program.adopt(pcfg)
                else:
                    program.reconfigure(pcfg)
                changes.append(f"scaled {name}: {before} -> {pcfg.numprocs} workers")
            elif not running:
                program.reconfigure(pcfg)
                changes.append(f"changed {name}: new settings (not running)")
            else:
                try:
                    n = program.rolling_restart(pcfg)
                    changes.append(f"changed {name}: {n} workers replaced one at a time")
                except RollingError as exc:
                    changes.append(f"changed {name}: rolling restart stopped: {exc}")
                    errors.append(f"{name}: {exc}")
        added = [n for n in new.programs if n not in self.programs]
        for name in added:
            self.programs[name] = self._make_program(new.programs[name])
        self._start_programs(added)
        changes.extend(f"added {n}: {new.programs[n].numprocs} workers started" for n in added)
        for line in changes:
            log.info("reload: %s", line)
        return changes, errors

    @staticmethod
    def _remove(path: str) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except OSError:
        pass


def _group_members(groups: dict[int, float], since: float) -> list[tuple[int, int]]:
    """(pgid, pid) of live processes in the recorded groups, started after `since`."""
    found = []
    for proc in psutil.process_iter(["create_time", "status"]):
        try:
            if proc.info["status"] == psutil.STATUS_ZOMBIE or proc.info["create_time"] < since:
                continue
            pgid = os.getpgid(proc.pid)
        except (OSError, TypeError):
            continue
        if pgid in groups and proc.pid != os.getpid():
            found.append((pgid, proc.pid))
    return found


def _no_inherited_fds() -> None:
    """Mark every descriptor above stderr close-on-exec, so that none the master inherited (from
    a shell, a CI runner, a service manager) reaches a worker; workers are spawned without
    closing descriptors, so this is what keeps them clean."""
    for name in os.listdir("/proc/self/fd"):
        fd = int(name)
        if fd > 2:
            try:
                os.set_inheritable(fd, False)
            except OSError:
                pass


def _set_title(title: str) -> None:
    try:
        import setproctitle

        setproctitle.setproctitle(title)
    except ImportError:
        pass
