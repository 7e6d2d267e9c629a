"""One worker slot: spawn, read the status reports, wait, and apply the restart policy.

Each slot runs one greenlet (:meth:`Worker._run`) that blocks on its child's exit (a libev
child watcher, see :mod:`gsuper.spawn`): a death is seen at once, with no polling loop. What to
do after an exit is decided by the pure :func:`gsuper.policy.decide`; this module applies it.
Every change of state goes through :meth:`Worker._transition`, which checks the table in
:mod:`gsuper.states` and emits a `state` event.

Two seams make the slot testable in-process (tests/test_worker.py): the *spawner* (the real one
is :func:`gsuper.spawn.launch_worker`) and the *clock* (:class:`RealClock`), through which every
timed wait goes.
"""

from __future__ import annotations

import errno
import functools
import json
import logging
import random
import signal
import time
from collections.abc import Callable
from typing import Any, Protocol

import gevent
import gevent.event

from gsuper import guard, runners
from gsuper.config import ProgramConfig
from gsuper.events import Event, EventStream
from gsuper.logs import LogFile, LogFiles, output_to_log
from gsuper.policy import Action, Decision, Exit, ExitReason, Rules, decide
from gsuper.spawn import launch_worker
from gsuper.states import LIVE_STATES, STOPPABLE_STATES, ProcessState, check_transition

S = ProcessState
log = logging.getLogger("gsuper")

REPORTING_RUNNERS = ("php", "python")  # they report ready after their bootstrap
DRAIN_S = 0.2  # the most an exit may wait for the runner's last report (the real spawner reads at once)


class Process(Protocol):
    """What a spawner returns: a live worker process.

    It may also have `on_exit(callback)` (the real one does): the callback is called in the hub
    once the process is gone, so that the slot parks instead of blocking a greenlet on `wait`.
    """

    pid: int

    @property
    def returncode(self) -> int | None:
        """The exit status once gone, else None."""

    def wait(self, timeout: float | None = None) -> int | None:
        """The exit status, waiting up to `timeout` (None: still running)."""

    def drain(self, timeout_s: float) -> None:
        """After the exit, let the last status report arrive."""

    def signal_group(self, sig: int) -> None:
        """Signal the process group the worker leads (raises OSError)."""

    def end_strays(self) -> int:
        """After the exit, end what the worker left outside its group (double-forked daemons)."""

    @property
    def lifetime_s(self) -> float:
        """This life's max_lifetime, jitter drawn (0: unlimited)."""

    def busy(self, now_ns: int) -> guard.Busy | None:
        """The request the worker stamped on its busy page, or None when idle."""


class Spawner(Protocol):
    """spawner(config, index, max_request, on_output, on_reports[, on_errors]) -> Process; raises
    OSError. `on_errors` (stderr apart, for stderr_logfile) is passed only when it is wanted."""

    def __call__(
        self,
        config: ProgramConfig,
        index: int,
        max_request: int,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None = None,
    ) -> Process:
        """Start one worker process."""


class Clock(Protocol):
    """The time source of a slot, and its timed waits."""

    def now(self) -> float:
        """Monotonic seconds."""

    def wait(self, event: gevent.event.Event, timeout: float | None) -> bool:
        """Wait for the event up to `timeout` seconds; True when it is set."""


class RealClock:
    """`time.monotonic` and gevent's own timed waits."""

    @staticmethod
    def now() -> float:
        """Monotonic seconds."""
        return time.monotonic()

    @staticmethod
    def wait(event: gevent.event.Event, timeout: float | None) -> bool:
        """Wait cooperatively for the event."""
        return bool(event.wait(timeout))


REAL_CLOCK = RealClock()


class Worker:
    """One slot of a program: at most one live process at a time, restarted by policy."""

    # Slots: a dict per slot cost ~1.5 KiB (1.5 MiB at 1,000 workers); `__dict__` stays for tests
    # that patch a method on one worker.
    __slots__ = (
        "config",
        "index",
        "logfile",
        "events",
        "spawner",
        "clock",
        "state",
        "proc",
        "pid",
        "started_at",
        "restarts",
        "requests",
        "rss_bytes",
        "pss_bytes",
        "last_exit",
        "last_error",
        "stop_deadline",
        "up",
        "spawned",
        "at_rest",
        "_wake",
        "_wanted",
        "_stopping",
        "_recycle_reason",
        "_reported_exit",
        "_failures",
        "_out_of_fds",
        "_running",
        "_pipe_busy",
        "_request_killed",
        "__dict__",
    )

    def __init__(
        self,
        config: ProgramConfig,
        index: int,
        logfile: LogFile | LogFiles,
        events: EventStream | None = None,
        spawner: Spawner = launch_worker,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self.config = config
        self.index = index
        self.logfile = logfile  # LogFiles: each worker's logfile and stderr_logfile by path
        self.events = events
        self.spawner = spawner
        self.clock = clock
        self.state = S.STOPPED
        self.proc: Process | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.requests = 0
        self.rss_bytes: int | None = None
        self.pss_bytes: int | None = None
        self.last_exit: dict[str, Any] | None = None
        self.last_error: str | None = None
        self.stop_deadline: float | None = None
        self.up = gevent.event.Event()  # set at the ready report (php, python) or when startsecs have passed
        self.spawned = gevent.event.Event()  # set after each spawn attempt
        self.at_rest = gevent.event.Event()  # set while no run loop is going
        self.at_rest.set()
        self._wake = gevent.event.Event()
        self._wanted = False
        self._stopping = False
        self._recycle_reason: ExitReason | None = None
        self._reported_exit: str | None = None
        self._failures = 0
        self._out_of_fds = False  # the last spawn failed for want of descriptors (transient)
        self._running = False  # a run loop is going (in a greenlet, or parked on a live process)
        self._pipe_busy: guard.Busy | None = None  # a request an exec program said it began
        self._request_killed = False

    # -- public operations ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """`program#index`, as in logs and process titles."""
        return f"{self.config.name}#{self.index}"

    @property
    def alive(self) -> bool:
        """True while the slot has a process that has not exited."""
        return self.proc is not None and self.proc.returncode is None

    def configure(self, config: ProgramConfig) -> None:
        """Take a new configuration for the next spawn (the live process is left alone)."""
        self.config = config

    def start(self) -> None:
        """Start the slot's run loop (if at rest) and return once its first spawn was tried."""
        if self._running:
            return
        self._wanted = True
        self._stopping = False
        self._failures = 0
        self._wake.clear()
        self.spawned.clear()
        self.at_rest.clear()
        self._running = True
        gevent.spawn(self._run)
        self.spawned.wait()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop gracefully: stopsignal to the group, SIGKILL after the timeout; wait until at rest."""
        self._wanted = False
        self._wake.set()
        proc = self.proc
        if proc is not None and self.state in STOPPABLE_STATES:
            timeout = self.config.stop_timeout_s if timeout_s is None else timeout_s
            self._stopping = True
            self.stop_deadline = self.clock.now() + timeout
            self._transition(S.STOPPING)
            self._terminate(proc, timeout)
        self.at_rest.wait()
        if self.state in (S.EXITED, S.FATAL):
            self._transition(S.STOPPED)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (forced exit); the loop ends without restart."""
        self._wanted = False
        self._wake.set()
        if self.proc is not None and self.state in STOPPABLE_STATES:
            self._stopping = True
            self._transition(S.STOPPING)
        self._signal(signal.SIGKILL)

    def recycle(self, reason: ExitReason) -> None:
        """Replace the live process gracefully (e.g. over memory_limit); respawned at once."""
        proc = self.proc
        if proc is None or self.state not in STOPPABLE_STATES or self._recycle_reason or self._stopping:
            return
        self._recycle_reason = reason
        log.info("%s (pid %s): recycling (%s)", self.name, proc.pid, reason.value)
        gevent.spawn(self._terminate, proc, self.config.stop_timeout_s)

    @property
    def lifetime_s(self) -> float:
        """The live process's max_lifetime (jitter drawn), 0 when unlimited or none runs."""
        return self.proc.lifetime_s if self.proc is not None else 0.0

    def busy(self, now_ns: int) -> guard.Busy | None:
        """The request the live process is in (its busy page, or begin/idle reports on the
        status pipe), or None when idle."""
        if not self.alive or self.proc is None:
            return None
        # exec in loop mode (Rules.loop_runs): each run is one request. Tested here without
        # building the Rules: status asks every worker, 1,000 of them per request.
        if self.config.mode == "loop" and self.config.runner == "exec":
            return guard.Busy(int(self.started_at * 1e9), self.requests + 1)
        return self.proc.busy(now_ns) or self._pipe_busy

    def end_request(self, request: int, ran_s: float) -> None:
        """request_timeout: SIGKILL the group now (a hung request may block or ignore every
        other signal); the slot respawns at once, reason request_timeout, never a failure."""
        proc = self.proc
        if proc is None or proc.returncode is not None or self._request_killed:
            return
        self._request_killed = True
        if not self._stopping:
            self._recycle_reason = ExitReason.REQUEST_TIMEOUT
        log.warning(
            "%s (pid %s): request %d ran %.3fs, over request_timeout %gs: SIGKILL to its group",
            self.name, proc.pid, request, ran_s, self.config.request_timeout_s,
        )  # fmt: skip
        self._signal(signal.SIGKILL)

    def observe_rss(self, rss_bytes: int) -> None:
        """Record a memory sample of the worker's process tree."""
        self.rss_bytes = rss_bytes

    def observe_pss(self, pss_bytes: int | None) -> None:
        """Record the proportional share of the tree's memory (gsuper.pss)."""
        self.pss_bytes = pss_bytes

    def snapshot(self) -> dict[str, Any]:
        """The worker's row in `status --json`."""
        alive = self.state in LIVE_STATES and self.pid is not None
        now = self.clock.now()
        stopping = self.state is S.STOPPING and self.stop_deadline is not None
        busy_s = guard.busy_seconds(self.busy(int(now * 1e9)), int(now * 1e9)) if alive else None
        return {
            "program": self.config.name,
            "index": self.index,
            "pid": self.pid if alive else None,
            "state": self.state.value,
            "uptime_s": round(now - self.started_at, 3) if alive else 0.0,
            "restarts": self.restarts,
            "requests": self.requests,
            "rss_bytes": self.rss_bytes if alive else None,
            "pss_bytes": self.pss_bytes if alive else None,
            "busy_s": None if busy_s is None else round(busy_s, 3),
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "user": self.config.user.name if self.config.user else None,
            "stop_in_s": round(max(0.0, (self.stop_deadline or now) - now), 1) if stopping else None,
        }

    # -- the run loop -------------------------------------------------------------------------

    def _run(self, parked: Process | None = None) -> None:
        """The slot's run loop: spawn, wait, apply the decision, again.

        While a process runs past its `startsecs`, the loop does not keep a greenlet blocked on
        its exit (~8 KiB each: 8 MiB for 1,000 workers): it parks on the process's `on_exit`
        and ends; the exit spawns a greenlet that goes on here with `parked`, the process that
        exited. A spawner whose processes have no `on_exit` (the fakes) keeps the blocking wait.
        """
        parked_now = False
        try:
            while self._wanted or parked is not None:
                if parked is not None:
                    exit, parked = self._after_exit(parked), None
                else:
                    self._transition(S.STARTING)
                    proc = self._spawn()
                    self.spawned.set()
                    if proc is None:
                        exit = Exit(None, transient=self._out_of_fds)
                    else:
                        if proc.wait(self.config.startsecs_s) is None:
                            self._startsecs_passed()
                        on_exit = getattr(proc, "on_exit", None)
                        if on_exit is not None and proc.returncode is None:
                            on_exit(functools.partial(self._resume, proc))
                            parked_now = True
                            return  # _resume goes on once the process is gone
                        exit = self._after_exit(proc)
                if not self._apply(exit):
                    break
        except Exception:  # noqa: BLE001 - a bug in one slot must not take the master down
            log.exception("%s: supervision loop failed", self.name)
            self._force_state(S.FATAL)
        finally:
            if not parked_now:
                self._at_rest()

    def _resume(self, proc: Process) -> None:
        """The parked process exited (called in the hub: it must not block)."""
        gevent.spawn(self._run, proc)

    def _at_rest(self) -> None:
        self.proc = None
        self._running = False
        self.spawned.set()
        self.at_rest.set()

    def _after_exit(self, proc: Process) -> Exit:
        """Once the process is gone: its last report, its group and strays ended; the facts."""
        code = proc.wait()
        assert code is not None
        proc.drain(DRAIN_S)
        # Orphans of the worker left in its group go with it.
        try:
            proc.signal_group(signal.SIGKILL)
        except OSError:
            pass
        if proc.end_strays():
            log.warning("%s: ended processes the worker left outside its group (a daemon that forked away)", self.name)
        served = self.requests if self.config.runner in REPORTING_RUNNERS else None
        uptime = self.clock.now() - self.started_at
        return Exit(int(code), uptime, self._stopping, self._recycle_reason, self._reported_exit, served)

    def _spawn(self) -> Process | None:
        config = self.config
        self._reported_exit = None
        self._recycle_reason = None
        self._pipe_busy, self._request_killed = None, False
        self._out_of_fds = False
        self.up.clear()
        max_request = config.max_request
        if max_request and config.max_request_jitter:
            max_request += random.randint(0, config.max_request_jitter)
        try:
            out, err = self._log_files()
            on_output = output_to_log(self.index, out)
            if err is None:
                proc = self.spawner(config, self.index, max_request, on_output, self._on_reports)
            else:
                on_errors = output_to_log(self.index, err)
                proc = self.spawner(config, self.index, max_request, on_output, self._on_reports, on_errors=on_errors)
        except OSError as exc:
            self._out_of_fds = exc.errno in (errno.EMFILE, errno.ENFILE)
            if self._out_of_fds:
                self.last_error = "too many open files"
                log.error("%s: cannot spawn: too many open files in the master (%s); retrying", self.name, exc.strerror)
            else:
                self.last_error = f"cannot start {runners.argv_for(config, self.index)[0]}: {exc.strerror}"
                log.error("%s: %s", self.name, self.last_error)
            return None
        self.proc, self.pid = proc, proc.pid
        self.started_at = self.clock.now()
        if not Rules.of(config).loop_runs:
            self.requests = 0
        self.rss_bytes = self.pss_bytes = None
        log.debug("%s: spawned pid %d", self.name, proc.pid)
        self._emit("started")
        return proc

    def _log_files(self) -> tuple[LogFile, LogFile | None]:
        """Where this worker's stdout and (when apart) stderr go."""
        if not isinstance(self.logfile, LogFiles):
            return self.logfile, None
        settings = runners.settings(self.config, self.index)
        config = self.config
        out = self.logfile.get(settings.logfile, config.log_max_bytes, config.log_backups)
        if settings.stderr_logfile is None:
            return out, None
        return out, self.logfile.get(settings.stderr_logfile, config.log_max_bytes, config.log_backups)

    def _apply(self, exit: Exit) -> bool:
        """Record an exit and apply the policy's decision; return True to spawn again."""
        rules = Rules.of(self.config)
        decision = decide(exit, rules, self._failures)
        self._failures = decision.failures
        self._record_exit(exit, decision)
        self.stop_deadline = None
        if exit.stopping:
            self._transition(S.STOPPED)
            return False
        if decision.action is Action.RESPAWN:
            self._transition(S.EXITED)
            if decision.loop_run:  # the next run is the next request, not a restart
                self.requests += 1
                self.clock.wait(self._wake, decision.delay_s)
            return self._respawn_if_wanted(decision.counted)
        if decision.action is Action.REST:
            self._transition(S.EXITED)
            self._wanted = False
            return False
        # A failed start: BACKOFF, then a retry or FATAL.
        if self.state is S.RUNNING:  # startsecs < 1 had already promoted it
            self._transition(S.EXITED)
        self._transition(S.BACKOFF)
        if decision.reason is ExitReason.MEMORY_LIMIT:
            self.last_error = (
                f"over memory_limit ({self.config.memory_limit_bytes >> 20}M) before serving a request: "
                "the limit is below what the program needs at rest"
            )
            log.warning("%s: %s", self.name, self.last_error)
        if decision.action is Action.FATAL:
            self.last_error = self.last_error or f"exited {decision.failures} times within {rules.started_after_s}s of starting"
            log.error("%s: FATAL after %d failed starts in a row", self.name, decision.failures)
            self._transition(S.FATAL)
            self._wanted = False
            return False
        if not exit.transient:
            log.info(
                "%s: failed start %d of %d, retry in %.1fs",
                self.name, decision.failures, rules.startretries + 1, decision.delay_s,
            )  # fmt: skip
        self._wake.clear()
        self.clock.wait(self._wake, decision.delay_s)
        if not self._wanted:
            self._transition(S.STOPPED)
            return False
        self.restarts += decision.counted  # a transient retry (no descriptors) spawned nothing
        return True

    def _record_exit(self, exit: Exit, decision: Decision) -> None:
        if exit.transient:  # no process existed: the last real exit stays what status shows
            return
        reason = decision.reason.value
        self.last_exit = {"reason": reason, "code": exit.code}
        if exit.code is None:
            return
        log.info("%s (pid %s) exited: %s, code %s, after %.2fs", self.name, self.pid, reason, exit.code, exit.uptime_s)
        if exit.code in (126, 127) and exit.uptime_s < Rules.of(self.config).started_after_s:
            # The exec itself failed (the program's log has the shell's or setpriv's words).
            self.last_error = f"could not execute {runners.argv_for(self.config, self.index)[0]} (exit {exit.code})"
        self._emit("exit", reason=reason, code=exit.code, data={"uptime_s": round(exit.uptime_s, 3)})

    def _startsecs_passed(self) -> None:
        if self.state is S.STARTING:
            self._transition(S.RUNNING)
            # A runner that reports is up at its ready report (after its bootstrap), not before.
            if self.config.runner not in REPORTING_RUNNERS:
                self.up.set()

    def _respawn_if_wanted(self, counted: bool = True) -> bool:
        if not self._wanted:
            self._transition(S.STOPPED)
            return False
        self.restarts += counted
        return True

    # -- helpers ------------------------------------------------------------------------------

    def _terminate(self, proc: Process, timeout: float) -> None:
        """stopsignal to the group; SIGKILL to the group if the process is still there after timeout."""
        self._signal(self.config.stopsignal)
        if proc.wait(timeout) is None:
            log.warning("%s (pid %s) did not stop within %.1fs: SIGKILL to its group", self.name, proc.pid, timeout)
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            proc.signal_group(sig)
        except OSError as exc:
            if exc.errno != errno.ESRCH:
                log.warning("%s: cannot signal group %s: %s", self.name, proc.pid, exc.strerror)

    def _on_reports(self, data: bytes) -> None:
        """The runner's JSON-line reports, as they arrive."""
        for line in data.splitlines():
            self._on_report(line)

    def _on_report(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind = event.get("event")
        except (ValueError, AttributeError):
            log.debug("%s: ignored status line %r", self.name, line[:200])
            return
        if kind == "request":
            self._count_requests(event)
            if self._pipe_busy is not None and self.requests >= self._pipe_busy.request:
                self._pipe_busy = None
        elif kind == "begin":  # an exec program opts in to request_timeout and busy_s
            number = event.get("request")
            ok = isinstance(number, int) and not isinstance(number, bool)
            self._pipe_busy = guard.Busy(int(self.clock.now() * 1e9), number if ok else self.requests + 1)
        elif kind == "idle":
            self._pipe_busy = None
        elif kind == "ready":
            self.up.set()
            if self.state is S.STARTING:  # serving already: RUNNING without waiting for startsecs
                self._transition(S.RUNNING)
        elif kind == "error":
            self.last_error = str(event.get("message", ""))[:500]
        elif kind == "exit":
            self._reported_exit = str(event.get("reason"))
            self._count_requests(event)
            if self._reported_exit == "bootstrap":
                self.last_error = "bootstrap failed: " + str(event.get("message", "see the program's log"))

    def _count_requests(self, event: dict[str, Any]) -> None:
        requests = event.get("requests")
        if not isinstance(requests, int) or isinstance(requests, bool):
            return
        done = requests - self.requests
        self.requests = requests
        if done > 0:
            ms = event.get("ms")
            data: dict[str, Any] = {"done": done, "requests": requests}
            if isinstance(ms, (int, float)) and not isinstance(ms, bool):
                data["ms"] = float(ms)
            self._emit("request", data=data)

    def _transition(self, new: ProcessState) -> None:
        check_transition(self.state, new)
        log.debug("%s: %s -> %s", self.name, self.state.value, new.value)
        old, self.state = self.state, new
        self._emit("state", state=new.value, data={"from": old.value})

    def _force_state(self, new: ProcessState) -> None:
        old, self.state = self.state, new
        self._emit("state", state=new.value, data={"from": old.value})

    def _emit(self, kind: str, **fields: Any) -> None:
        if self.events is not None:
            self.events.emit(Event(kind, self.config.name, self.index, self.pid, **fields))
