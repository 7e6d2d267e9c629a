"""The master: the hub that owns the programs, the event stream, the signal queue and shutdown.

It delegates the rest: periodic checks to :mod:`gsuper.monitor`, the takeover record to
:mod:`gsuper.record`, control requests to :mod:`gsuper.commands`, the reload diff to
:mod:`gsuper.reload`, libc set-up to :mod:`gsuper.osutil`. It talks to programs only, never
to their workers' fields.
"""

from __future__ import annotations

import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from typing import Any

import gevent
import gevent.event
import gevent.queue
import psutil

from gsuper import __version__, config, osutil, record
from gsuper.commands import Commands, Refused
from gsuper.control import ControlServer
from gsuper.daemon import PidFile, describe
from gsuper.events import Event, EventStream
from gsuper.logs import LogFile, setup_master_logging
from gsuper.monitor import MemoryCheck, Monitor, sample_rss
from gsuper.program import Program, RollingError
from gsuper.pss import add_pss
from gsuper.reload import Kind, plan_reload
from gsuper.spawn import SETPRIV
from gsuper.template import WarmSpawner

log = logging.getLogger("gsuper")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
RECORD_DELAY_S = 0.05  # changes within this time share one rewrite of the takeover record

Notify = Callable[[dict[str, Any]], None]


def _stderr(text: str) -> None:
    print(f"gsuper: {text}", file=sys.stderr)


class Master:
    """Supervises every program of one configuration file."""

    def __init__(self, cfg: config.GsuperConfig, only: list[str] | None = None, foreground: bool = False) -> None:
        self.config = cfg
        self.only = only
        self.foreground = foreground
        self.started_at = time.monotonic()
        self.programs: dict[str, Program] = {}
        self.logfiles: dict[str, LogFile] = {}
        self.events = EventStream()
        self.pidfile = PidFile(cfg.pidfile)
        self.commands = Commands(self)
        self.control = ControlServer(cfg.sockfile, self.commands.dispatch)
        self.master_log = LogFile(os.path.join(cfg.logdir, "gsuper.log"), cfg.log_max_bytes, cfg.log_backups, _stderr)
        self.monitor = Monitor(self.programs.values, lambda: self.config.memory_check_interval_s)
        self.monitor.add(MemoryCheck(lambda: self.config.memory_check_interval_s))
        self.stopping = False
        self._signals: gevent.queue.Queue[int] = gevent.queue.Queue()
        self._done = gevent.event.Event()
        self._record_pending = False
        self._busy = False  # a reload or rolling restart is being applied
        self._created = psutil.Process().create_time()
        self.events.subscribe(self._on_event)

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
            osutil.no_inherited_fds()
            osutil.set_title(f"gsuper: master {self.config.path}")
            osutil.become_subreaper()
            if stale:
                record.end_leftovers(self.config.workersfile, gevent.sleep, _announce_leftovers)
            self.control.start()
            for sig in HANDLED_SIGNALS:
                gevent.signal_handler(sig, self._signals.put_nowait, sig)
            gevent.spawn(self._signal_loop)
            gevent.spawn(self.monitor.run_forever, gevent.sleep)
            log.info("master %d started with %s", os.getpid(), self.config.path)
            if SETPRIV is None:
                log.warning("setpriv (util-linux) is not installed: workers will not get SIGTERM if the master dies")
            selected = self.only if self.only is not None else list(self.config.programs)
            for pcfg in self.config.programs.values():
                self.programs[pcfg.name] = self._make_program(pcfg)
            self.start_programs(selected)
            notify(
                {
                    "ok": True,
                    "pid": os.getpid(),
                    "programs": {n: self.config.programs[n].numprocs for n in selected},
                    "unspawned": [line for n in selected for line in self.programs[n].unspawned()],
                }
            )
            osutil.trim_heap()
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
            _remove(self.config.workersfile)
            self.pidfile.release()
            log.info("master %d exited", os.getpid())

    def _make_program(self, pcfg: config.ProgramConfig) -> Program:
        logfile = self.logfiles.get(pcfg.name)
        if logfile is None:
            path = os.path.join(self.config.logdir, f"{pcfg.name}.log")
            logfile = LogFile(path, self.config.log_max_bytes, self.config.log_backups, log.warning)
            self.logfiles[pcfg.name] = logfile
        return Program(pcfg, logfile, self.events, spawner=WarmSpawner(pcfg.name, logfile))

    def _by_priority(self, names: Iterable[str], descending: bool = False) -> list[list[Program]]:
        levels: dict[int, list[Program]] = defaultdict(list)
        for name in names:
            program = self.programs[name]
            levels[program.config.priority].append(program)
        return [levels[p] for p in sorted(levels, reverse=descending)]

    def start_programs(self, names: Iterable[str]) -> None:
        """Start the named programs, lowest priority first; return once each worker was spawned."""
        for level in self._by_priority(names):
            gevent.joinall([gevent.spawn(p.start) for p in level], raise_error=True)

    def stop_programs(self, names: Iterable[str], timeout_s: float | None = None) -> None:
        """Stop the named programs gracefully, highest priority first."""
        for level in self._by_priority(names, descending=True):
            gevent.joinall([gevent.spawn(p.stop, timeout_s) for p in level], raise_error=True)

    def shutdown(self, timeout_s: float | None = None) -> None:
        """Graceful stop of every program (highest priority first), then the master exits."""
        if self.stopping:
            return
        self.stopping = True
        for program in self.programs.values():
            program.halt()
        log.info("stopping every program")
        self.stop_programs(list(self.programs), timeout_s)
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
        if self.stopping:
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

    # -- the takeover record ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        # A process came or went: rewrite the record soon (one write for a burst of changes).
        if event.kind in ("started", "exit") and not self._record_pending:
            self._record_pending = True
            gevent.spawn_later(RECORD_DELAY_S, self._write_record)

    def _write_record(self) -> None:
        self._record_pending = False
        entries = [e for p in self.programs.values() for e in p.record_entries()]
        try:
            record.write(self.config.workersfile, os.getpid(), self._created, entries)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.config.workersfile, exc.strerror)

    # -- what the control commands ask --------------------------------------------------------

    def status(self, names: list[str] | None = None, with_rss: bool = True) -> dict[str, Any]:
        """Master and worker rows; RSS sampled now for every live worker tree (unless not asked)."""
        chosen = [self.programs[n] for n in (names if names is not None else list(self.programs))]
        if with_rss:
            sample_rss(w for p in chosen for w in p.live_workers())
        rows = sorted((row for p in chosen for row in p.snapshot()), key=lambda r: (r["program"], r["index"]))
        if with_rss:
            add_pss(rows)
        return {
            "master": {
                "pid": os.getpid(),
                "config": self.config.path,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "version": __version__,
                "stopping": self.stopping,
            },
            "workers": rows,
        }

    def _exclusive(self, what: str) -> None:
        if self.stopping:
            raise Refused("the master is stopping")
        if self._busy:
            raise Refused(f"a reload or rolling restart is already in progress; {what} refused")
        self._busy = True

    def rolling_restart(self, names: list[str]) -> dict[str, int]:
        """Replace the named programs' workers one at a time; how many of each were replaced.

        Raises Refused, or RollingError with `replaced` set to what was done before it.
        """
        self._exclusive("rolling restart")
        replaced: dict[str, int] = {}
        try:
            for name in names:
                replaced[name] = self.programs[name].rolling_restart()
        except RollingError as exc:
            exc.replaced = replaced
            raise
        finally:
            self._busy = False
        return replaced

    def reload(self) -> dict[str, Any]:
        """Re-read the file and apply the difference: add, remove, scale, or replace one worker
        at a time what changed. The reply lists the changes, and the errors of those that failed."""
        try:
            new = config.load(self.config.path)
        except config.ConfigError as exc:
            return {"ok": False, "error": str(exc), "config_error": True}
        try:
            self._exclusive("reload")
        except Refused:
            return {"ok": False, "error": "a reload, rolling restart or stop is already in progress"}
        try:
            changes, errors = self._apply(new)
        finally:
            self._busy = False
        self.events.emit(Event("reloaded", data={"changes": changes, "errors": errors}))
        return {"ok": True, "changes": changes, "errors": errors}

    def _apply(self, new: config.GsuperConfig) -> tuple[list[str], list[str]]:
        running = {n for n, p in self.programs.items() if p.is_running()}
        current = {n: p.config for n, p in self.programs.items()}
        plan = plan_reload(self.config, new, running, current)
        changes: list[str] = list(plan.notes)
        errors: list[str] = []
        logging.getLogger("gsuper").setLevel(new.loglevel.upper())
        self.config = new
        removed = [c.name for c in plan.of_kind(Kind.REMOVE)]
        self.stop_programs(removed)
        for name in removed:
            del self.programs[name]
            changes.append(f"removed {name}: stopped")
        for change in plan.changes:
            program, cfg = self.programs.get(change.name), change.config
            if program is None or cfg is None:
                continue
            if change.kind is Kind.UNCHANGED:
                changes.append(f"unchanged {change.name}")
            elif change.kind is Kind.SCALE:
                before = len(program.workers)
                if change.name in running:
                    program.adopt(cfg)
                else:
                    program.reconfigure(cfg)
                changes.append(f"scaled {change.name}: {before} -> {cfg.numprocs} workers")
            elif change.kind is Kind.RECONFIGURE:
                program.reconfigure(cfg)
                changes.append(f"changed {change.name}: new settings (not running)")
            elif change.kind is Kind.ROLLING:
                try:
                    n = program.rolling_restart(cfg)
                    changes.append(f"changed {change.name}: {n} workers replaced one at a time")
                except RollingError as exc:
                    changes.append(f"changed {change.name}: rolling restart stopped: {exc}")
                    errors.append(f"{change.name}: {exc}")
        added = [c.name for c in plan.of_kind(Kind.ADD)]
        for name in added:
            self.programs[name] = self._make_program(new.programs[name])
        self.start_programs(added)
        changes.extend(f"added {n}: {new.programs[n].numprocs} workers started" for n in added)
        for line in changes:
            log.info("reload: %s", line)
        return changes, errors


def _announce_leftovers(count: int) -> None:
    log.warning("a previous master died; ending %d processes its workers left", count)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
