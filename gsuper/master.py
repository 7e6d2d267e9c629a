"""The master: the hub that owns the programs, the event stream, the signal queue and shutdown.

It delegates the rest: periodic checks to :mod:`gsuper.monitor`, the takeover record to
:mod:`gsuper.record`, control requests to :mod:`gsuper.commands`, the reload diff to
:mod:`gsuper.reload`, libc set-up to :mod:`gsuper.osutil`. It talks to programs only, never
to their workers' fields.
"""

from __future__ import annotations

import gc
import logging
import os
import signal
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gevent
import gevent.event
import gevent.queue

from gsuper import __version__, config, osutil, preflight, record, registry, runners
from gsuper.commands import Commands, Refused
from gsuper.control import ControlServer
from gsuper.daemon import PidFile, describe
from gsuper.events import Event, EventStream
from gsuper.guard import LifetimeCheck, RequestTimeoutCheck
from gsuper.logs import LogFile, LogFiles
from gsuper.monitor import MemoryCheck, Monitor, sample_rss
from gsuper.notify import SystemdNotifier, status_of
from gsuper.program import Program, RollingError, program_row
from gsuper.reload import Kind, plan_reload
from gsuper.spawn import SETPRIV
from gsuper.states import ProcessState
from gsuper.stdlog import ProgramStdout, StdoutWriter, configure_master_logging
from gsuper.template import WarmSpawner, template_log

if TYPE_CHECKING:
    from gsuper.autoscale import BacklogCheck
    from gsuper.hooks import HookRunner
    from gsuper.web.server import WebServer

log = logging.getLogger("gsuper")

HANDLED_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT, signal.SIGHUP, signal.SIGUSR1)
#: Signals the master does not use whose default action would end it (and every worker with it):
#: each is logged and otherwise ignored. Faults (SEGV, BUS, ILL, FPE, ABRT, TRAP, SYS) keep their
#: default: they mean the master itself is broken. PIPE and XFSZ are ignored by Python already.
STRAY_SIGNALS = tuple(
    getattr(signal, name)
    for name in ("SIGUSR2", "SIGALRM", "SIGVTALRM", "SIGPROF", "SIGIO", "SIGPWR", "SIGSTKFLT", "SIGXCPU")
    if hasattr(signal, name)
) + tuple(range(signal.SIGRTMIN, signal.SIGRTMAX + 1))
RECORD_DELAY_S = 0.05  # changes within this time share one rewrite of the takeover record
STATUS_RSS_MAX_AGE_S = 1.0  # an older sample is refreshed behind the status that sees it
STATUS_RSS_STALE_S = 60.0  # an older one (or none) is taken before the status is answered
# The refresh waits this long: started at once, it would run in the first pause of the answer's
# own sendall (250 KB for 1,000 workers fills the socket buffer) and hold the answer back.
STATUS_REFRESH_DELAY_S = 0.1

Notify = Callable[[dict[str, Any]], None]


def _stderr(text: str) -> None:
    print(f"gsuper: {text}", file=sys.stderr)


TRIM_EVERY_S = 10.0  # malloc_trim's cost at a 30 MiB heap is well under a millisecond


def trim_heap_forever(sleep: Callable[[float], object]) -> None:
    """Hand the heap that bursts freed back to the system, every TRIM_EVERY_S.

    glibc keeps freed memory for reuse: after a kill storm of 1,000 workers and a few
    1,000-row statuses the master held ~3 MiB more than before (31.6 against 28.5 MB after a
    malloc_trim). Stops on a libc without malloc_trim (musl), which said so once.
    """
    while True:
        sleep(TRIM_EVERY_S)
        if not osutil.trim_heap():
            return


class Master:
    """Supervises every program of one configuration file."""

    def __init__(self, cfg: config.GsuperConfig, only: list[str] | None = None, foreground: bool = False) -> None:
        self.config = cfg
        self.only = only
        self.foreground = foreground
        self.started_at = time.monotonic()
        self.programs: dict[str, Program] = {}
        self.logfiles = LogFiles(log.warning)  # the programs' logfile and stderr_logfile, by path
        self.events = EventStream()
        self.pidfile = PidFile(cfg.pidfile)
        self.commands = Commands(self)
        self.control = ControlServer(cfg.sockfile, self.commands.dispatch)
        self.master_log = LogFile(os.path.join(cfg.logdir, "gsuper.log"), cfg.log_max_bytes, cfg.log_backups, _stderr)
        self.monitor = Monitor(self.programs.values, lambda: self.config.memory_check_interval_s)
        self.monitor.add(MemoryCheck(lambda: self.config.memory_check_interval_s))
        # Made (and gsuper.autoscale imported) once a program has a scale_source: _features().
        self.backlog: BacklogCheck | None = None
        self.monitor.add(RequestTimeoutCheck())
        self.monitor.add(LifetimeCheck())
        self.stopping = False
        self._signals: gevent.queue.Queue[int] = gevent.queue.Queue()
        self._done = gevent.event.Event()
        self._record_pending = False
        self._busy = False  # a reload or rolling restart is being applied
        self._sampled_at = float("-inf")  # when status last sampled every live worker's RSS
        self._sampling: gevent.Greenlet | None = None  # status's sample being refreshed
        self._created = osutil.start_time()
        self.events.subscribe(self._on_event)
        self.web: WebServer | None = None
        self.hooks: HookRunner | None = None
        self._served_http = (cfg.http, cfg.http_token)  # what this master serves, reloads or not
        self.stdout: StdoutWriter | None = None  # logdir = -: every log line goes through it
        self.notifier: SystemdNotifier | None = None  # systemd Type=notify
        self.exit_code = 0  # 3 after on_fatal = exit

    # -- life ---------------------------------------------------------------------------------

    def run(self, notify: Notify) -> int:
        """Take the pid file, start the programs, serve until stopped. Returns the exit code."""
        self.stdout = configure_master_logging(self.config, self.master_log, self.foreground)
        problems = preflight.errors(self.config)
        if problems:  # the CLI checked too; the folders may have changed since
            notify({"ok": False, "error": "; ".join(problems)})
            return 1
        preflight.raise_nofile()
        try:
            stale = self.pidfile.acquire()
        except Exception as exc:  # noqa: BLE001 - AlreadyRunning or an OS error, told to the CLI
            notify({"ok": False, "error": describe(exc)})
            return 1
        try:
            try:
                registry.record(self.config)  # so the CLI finds us even if rundir is edited
            except OSError as exc:
                log.warning("cannot record this master in %s: %s", registry.folder(), exc.strerror or exc)
            osutil.no_inherited_fds()
            osutil.set_title(f"gsuper: master {self.config.path}")
            osutil.become_subreaper()
            # Read (and removed from the environment the workers get) before any spawn.
            self.notifier = SystemdNotifier.from_environ()
            if self.notifier is not None:
                self.notifier.start(lambda: status_of(self.programs.values(), self.stopping))
                self.events.subscribe(self.notifier.changed)
            if stale:
                record.end_leftovers(self.config.workersfile, gevent.sleep, _announce_leftovers)
            self.control.start()
            self._features(self.config)
            self._serve_http()
            for sig in HANDLED_SIGNALS + STRAY_SIGNALS:
                gevent.signal_handler(sig, self._signals.put_nowait, sig)
            gevent.spawn(self._signal_loop)
            gevent.spawn(self.monitor.run_forever, gevent.sleep)
            gevent.spawn(trim_heap_forever, gevent.sleep)
            log.info("master %d started with %s", os.getpid(), self.config.path)
            for warning in self.config.warnings:  # e.g. an [include] glob that matches no file
                log.warning("%s", warning)
            if SETPRIV is None:
                log.warning("setpriv (util-linux) is not installed: workers will not get SIGTERM if the master dies")
            selected = self.only if self.only is not None else self.config.autostarted()
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
            if self.notifier is not None:
                self.notifier.ready()
            osutil.trim_heap()
            # What start-up made lives as long as the master: out of the collector's way, so the
            # garbage a /metrics scrape or a status leaves does not rescan it (bench/http_scrape.py).
            gc.freeze()
            self._done.wait()
            return self.exit_code
        except Exception as exc:
            log.exception("master failed")
            notify({"ok": False, "error": f"the master failed to start: {describe(exc)}"})
            for program in self.programs.values():
                program.kill()
            return 1
        finally:
            if self.web is not None:
                self.web.close()
            if self.hooks is not None:
                self.hooks.close()
            self.control.close()
            _remove(self.config.workersfile)
            registry.forget(self.config)
            self.pidfile.release()
            log.info("master %d exited%s", os.getpid(), f" with status {self.exit_code}" if self.exit_code else "")
            if self.notifier is not None:
                self.notifier.close()
            if self.stdout is not None:
                self.stdout.flush()

    def _make_program(self, pcfg: config.ProgramConfig) -> Program:
        if self.stdout is not None:  # logdir = -: every program's output to stdout, no file
            sink = ProgramStdout(pcfg.name, self.stdout, self.config.log_format)
            template_output = sink.line_writer(-1, [0], "template")
            spawner = WarmSpawner(pcfg.name, template_output, cold=sink.spawner, on_change=self._record_changed)
            program = Program(pcfg, sink, self.events, spawner=spawner)
        else:
            settings = runners.settings(pcfg, 0)
            logfile = self.logfiles.get(settings.logfile, pcfg.log_max_bytes, pcfg.log_backups)
            spawner = WarmSpawner(pcfg.name, template_log(logfile), on_change=self._record_changed)
            program = Program(pcfg, self.logfiles, self.events, spawner=spawner)
        if not pcfg.autostart:  # shown as STOPPED until `start -p NAME`
            program.add_slots()
        return program

    def _features(self, cfg: config.GsuperConfig) -> None:
        """Load what this configuration uses of the optional parts: the autoscaler check (a
        program with a scale_source) and the hook runner ([hook:NAME]). A configuration that
        uses neither never imports gsuper.autoscale, gsuper.backlog, gsuper.scaling nor
        gsuper.hooks (their modules and an event subscriber cost every master otherwise)."""
        if self.backlog is None and any(p.scale_source for p in cfg.programs.values()):
            from gsuper.autoscale import BacklogCheck

            self.backlog = BacklogCheck(lambda: self._busy or self.stopping)
            self.monitor.add(self.backlog)
        if self.hooks is None and cfg.hooks:
            from gsuper.hooks import HookRunner

            self.hooks = HookRunner(cfg.hooks, self.events)

    def _serve_http(self) -> None:
        """Serve [gsuper] http, if set; a port that cannot be bound fails the start."""
        if self.config.http is None:
            return
        host, port = self.config.http
        # Imported only where http is set: prometheus_client and pywsgi cost the master ~12 MiB.
        from gsuper.web.server import MasterSource, WebServer

        web = WebServer(host, port, self.config.http_token, MasterSource(self))
        try:
            web.start()
        except OSError as exc:
            web.close()
            raise OSError(exc.errno, f"cannot serve HTTP on {host}:{port}: {exc.strerror}") from None
        self.web = web

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
        if self.notifier is not None:
            self.notifier.stopping()
        if self.backlog is not None:
            self.backlog.close()
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
            if sig not in HANDLED_SIGNALS:
                log.warning("received signal %d (%s), which the master does not use: ignored", sig, signal.strsignal(sig))
                continue
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
        if self.stdout is None:  # logdir = - has no file to reopen
            self.master_log.reopen()
        self.logfiles.reopen()
        log.info("log files reopened")

    # -- the takeover record ------------------------------------------------------------------

    def _on_event(self, event: Event) -> None:
        if event.kind == "state" and event.state == ProcessState.FATAL.value:
            self._on_fatal(event)
        # A process came or went: rewrite the record soon (one write for a burst of changes).
        if event.kind in ("started", "exit"):
            self._record_changed()

    def _record_changed(self) -> None:
        """Rewrite the takeover record soon (also when a warm program's spare comes or goes)."""
        if not self._record_pending:
            self._record_pending = True
            gevent.spawn_later(RECORD_DELAY_S, self._write_record)

    def _on_fatal(self, event: Event) -> None:
        if self.config.on_fatal == "exit" and not self.stopping:
            name = f"{event.program}#{event.worker}"
            log.error("%s is FATAL and on_fatal = exit: stopping every worker, then exit status 3", name)
            self.exit_code = 3
            gevent.spawn(self.shutdown)

    def _write_record(self) -> None:
        self._record_pending = False
        entries = [e for p in self.programs.values() for e in p.record_entries()]
        try:
            record.write(self.config.workersfile, os.getpid(), self._created, entries)
        except OSError as exc:
            log.warning("cannot write %s: %s", self.config.workersfile, exc.strerror)

    # -- what the control commands ask --------------------------------------------------------

    def status(self, names: list[str] | None = None, with_rss: bool = True, rss_now: bool = False) -> dict[str, Any]:
        """Master and worker rows, from the master's own state.

        RSS and PSS are each worker's last sample. A sample older than STATUS_RSS_MAX_AGE_S is
        refreshed in a greenlet of its own after this answer, one at a time, so a flood of status
        requests costs at most one pass over /proc a second and none waits for it: with 1,000
        workers the PSS pass alone takes ~70 ms. Only when there is none younger than
        STATUS_RSS_STALE_S (the first status, or one after a long quiet) is it taken first, so
        that a status now and then does not show numbers of long ago (`with_rss=False`: none).
        `rss_now` takes it first whenever it is older than STATUS_RSS_MAX_AGE_S: a /metrics
        scrape, which asks at most every 15 s (docs/monitoring.md, memory freshness).
        """
        chosen = [self.programs[n] for n in (names if names is not None else list(self.programs))]
        now = time.monotonic()
        stale_s = STATUS_RSS_MAX_AGE_S if rss_now else STATUS_RSS_STALE_S
        if with_rss and now - self._sampled_at > stale_s:
            self._sample_for_status()
        elif with_rss and now - self._sampled_at > STATUS_RSS_MAX_AGE_S and self._sampling is None:
            self._sampling = gevent.spawn_later(STATUS_REFRESH_DELAY_S, self._sample_for_status)
        rows = sorted((row for p in chosen for row in p.snapshot()), key=lambda r: (r["program"], r["index"]))
        return {
            "master": {
                "pid": os.getpid(),
                "config": self.config.path,
                "uptime_s": round(time.monotonic() - self.started_at, 3),
                "version": __version__,
                "stopping": self.stopping,
            },
            "workers": rows,
            "programs": [program_row(p, self.backlog.get(p) if self.backlog else None) for p in chosen],
        }

    def _sample_for_status(self) -> None:
        try:
            sample_rss((w for p in self.programs.values() for w in p.live_workers()), pss=True)
        finally:
            self._sampled_at = time.monotonic()
            self._sampling = None

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
        new, moved = _pin_folders(self.config, new)
        try:
            self._exclusive("reload")
        except Refused:
            return {"ok": False, "error": "a reload, rolling restart or stop is already in progress"}
        for warning in new.warnings:  # e.g. an [include] glob that matches no file
            log.warning("reload: %s", warning)
        if self.notifier is not None:
            self.notifier.reloading()
        try:
            changes, errors = self._apply(new)
            if self.backlog is not None:
                self.backlog.after_reload(self.programs)
        finally:
            self._busy = False
            if self.notifier is not None:
                self.notifier.ready()
        changes = moved + changes
        try:  # what the CLI's fast status trusts: the bytes this master validated now
            registry.record(self.config)
        except OSError as exc:
            log.warning("cannot record this master in %s: %s", registry.folder(), exc.strerror or exc)
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
        self.start_programs([n for n in added if new.programs[n].autostart])
        for name in added:
            pcfg = new.programs[name]
            started = f"{pcfg.numprocs} workers started" if pcfg.autostart else "not started (autostart = false)"
            changes.append(f"added {name}: {started}")
        if self.hooks is not None:
            self.hooks.reconfigure(new.hooks)
        self._features(new)
        if (new.http, new.http_token) != self._served_http:
            changes.append("http and http_token changes take effect at the next start")
        for line in changes:
            log.info("reload: %s", line)
        self.logfiles.keep_only(self._log_paths())
        return changes, errors

    def _log_paths(self) -> set[str]:
        """The logfile and stderr_logfile paths of every worker slot, as each one is configured."""
        paths: set[str] = set()
        for program in self.programs.values():
            for w in program.workers:
                settings = runners.settings(w.config, w.index)
                paths.update(p for p in (settings.logfile, settings.stderr_logfile) if p)
        return paths


def _pin_folders(old: config.GsuperConfig, new: config.GsuperConfig) -> tuple[config.GsuperConfig, list[str]]:
    """A running master keeps its rundir and logdir (its pid file, socket and open logs are
    there); an edit of either takes effect at the next restart, and the reload says so."""
    notes = [
        f"{key} changed in the file ({getattr(new, key)}): the master keeps {getattr(old, key)} until the next restart"
        for key in ("rundir", "logdir")
        if getattr(new, key) != getattr(old, key)
    ]
    # Folders kept against the file: no digest, so the CLI reads the file and says so (registry.py).
    digest = new.digest if not notes else None
    return replace(new, rundir=old.rundir, logdir=old.logdir, digest=digest), notes


def _announce_leftovers(count: int) -> None:
    log.warning("a previous master died; ending %d processes its workers left", count)


def _remove(path: str) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass
