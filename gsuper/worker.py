"""One worker slot: spawn, read the status pipe, wait, and decide restart, backoff or FATAL.

Each slot runs one greenlet (:meth:`Worker._run`) that blocks on its child's exit (a libev
child watcher, see :mod:`gsuper.spawn`): a death is seen at once, with no polling loop. Every
change of state goes through :meth:`_transition`, which checks the table in :mod:`gsuper.states`.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import random
import signal
import time
from collections.abc import Callable
from typing import Any

import gevent
import gevent.event

from gsuper import runners
from gsuper.config import ProgramConfig
from gsuper.logs import LogFile, PipeReader, output_to_log
from gsuper.spawn import Child, spawn
from gsuper.states import RUNNING_STATES, SIGNALLABLE_STATES, ProcessState, check_transition

S = ProcessState
log = logging.getLogger("gsuper")

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
MIN_UPTIME_S = 1.0
STATUS_LINE_MAX = 65536
CRASH_SIGNALS = {signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL}
REPORTING_RUNNERS = ("php", "python")  # they report ready after their bootstrap


def backoff_delay(failures: int) -> float:
    """Seconds to wait after `failures` failed starts in a row: 0.1 s doubling, capped at 10 s."""
    return float(min(BACKOFF_FIRST_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def exit_reason(code: int) -> str:
    """The status reason of an exit the worker did not explain itself."""
    if code < 0:
        return "crashed" if -code in CRASH_SIGNALS else "killed"
    return "crashed" if code else "exited"


class Worker:
    """One slot of a program: at most one live process at a time, restarted by policy."""

    def __init__(
        self,
        program: ProgramConfig,
        index: int,
        logfile: LogFile,
        on_change: Callable[[Worker], None] | None = None,
    ) -> None:
        self.program = program
        self.index = index
        self.logfile = logfile
        self.on_change = on_change
        self.state = S.STOPPED
        self.proc: Child | None = None
        self.pid: int | None = None
        self.started_at = 0.0
        self.restarts = 0
        self.requests = 0
        self.rss_bytes: int | None = None
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
        self._recycle_reason: str | None = None
        self._reported_exit: str | None = None
        self._failures = 0
        self._loop: gevent.Greenlet | None = None
        self._status_reader: PipeReader | None = None
        self._output_reader: PipeReader | None = None

    # -- public operations ------------------------------------------------------------------

    @property
    def name(self) -> str:
        """`program#index`, as in logs and process titles."""
        return f"{self.program.name}#{self.index}"

    def start(self) -> None:
        """Start the slot's run loop (if at rest) and return once its first spawn was tried."""
        if self._loop is not None and not self._loop.dead:
            return
        self._wanted = True
        self._stopping = False
        self._failures = 0
        self._wake.clear()
        self.spawned.clear()
        self.at_rest.clear()
        self._loop = gevent.spawn(self._run)
        self.spawned.wait()

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop gracefully: stopsignal to the group, SIGKILL after the timeout; wait until at rest."""
        self._wanted = False
        self._wake.set()
        proc = self.proc
        if proc is not None and self.state in SIGNALLABLE_STATES:
            timeout = self.program.stop_timeout_s if timeout_s is None else timeout_s
            self._stopping = True
            self.stop_deadline = time.monotonic() + timeout
            self._transition(S.STOPPING)
            self._terminate(proc, timeout)
        self.at_rest.wait()
        if self.state in (S.EXITED, S.FATAL):
            self._transition(S.STOPPED)

    def kill(self) -> None:
        """SIGKILL the whole process group at once (forced exit); the loop ends without restart."""
        self._wanted = False
        self._wake.set()
        if self.proc is not None and self.state in SIGNALLABLE_STATES:
            self._stopping = True
            self._transition(S.STOPPING)
        self._signal(signal.SIGKILL)

    def recycle(self, reason: str) -> None:
        """Replace the live process gracefully (e.g. over memory_limit); respawned at once."""
        proc = self.proc
        if proc is None or self.state not in SIGNALLABLE_STATES or self._recycle_reason or self._stopping:
            return
        self._recycle_reason = reason
        log.info("%s (pid %s): recycling (%s)", self.name, proc.pid, reason)
        gevent.spawn(self._terminate, proc, self.program.stop_timeout_s)

    def snapshot(self) -> dict[str, Any]:
        """The worker's row in `status --json`."""
        alive = self.state in RUNNING_STATES and self.pid is not None
        return {
            "program": self.program.name,
            "index": self.index,
            "pid": self.pid if alive else None,
            "state": self.state.value,
            "uptime_s": round(time.monotonic() - self.started_at, 3) if alive else 0.0,
            "restarts": self.restarts,
            "requests": self.requests,
            "rss_bytes": self.rss_bytes if alive else None,
            "last_exit": self.last_exit,
            "last_error": self.last_error,
            "stop_in_s": round(max(0.0, self.stop_deadline - time.monotonic()), 1)
            if self.state is S.STOPPING and self.stop_deadline
            else None,
        }

    # -- the run loop -------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            while self._wanted:
                self._transition(S.STARTING)
                code = self._spawn_and_wait()
                if not self._after_exit(code):
                    break
        except Exception:  # noqa: BLE001 - a bug in one slot must not take the master down
            log.exception("%s: supervision loop failed", self.name)
            self._force_state(S.FATAL)
        finally:
            self.proc = None
            self._loop = None
            self.spawned.set()
            self.at_rest.set()
            self._notify()

    def _spawn_and_wait(self) -> int | None:
        """Spawn one process and wait for it to exit; None when it could not be spawned."""
        proc = self._spawn()
        self.spawned.set()
        if proc is None:
            return None
        if proc.wait(self.program.startsecs_s) is None:
            self._startsecs_passed()
        code = proc.wait()
        assert code is not None
        # The runner's last report (its exit reason) is already in the pipe: let the reader take it.
        if self._status_reader is not None:
            self._status_reader.eof.wait(timeout=0.2)
        # Orphans of the worker left in its group go with it.
        try:
            os.killpg(proc.pid, signal.SIGKILL)
        except OSError:
            pass
        return int(code)

    def _spawn(self) -> Child | None:
        program = self.program
        self._reported_exit = None
        self._recycle_reason = None
        self.up.clear()
        max_request = program.max_request
        if max_request and program.max_request_jitter:
            max_request += random.randint(0, program.max_request_jitter)
        status_r, status_w = os.pipe()
        out_r, out_w = os.pipe()
        for fd in (status_r, out_r):
            os.set_blocking(fd, False)
        argv = runners.argv_for(program)
        try:
            proc = spawn(argv, runners.env_for(program, self.index, status_w, max_request), program.directory, out_w, status_w)
        except OSError as exc:
            for fd in (status_r, out_r):
                os.close(fd)
            self.last_error = f"cannot start {argv[0]}: {exc.strerror}"
            log.error("%s: %s", self.name, self.last_error)
            return None
        finally:
            os.close(status_w)
            os.close(out_w)
        self.proc, self.pid = proc, proc.pid
        self.started_at = time.monotonic()
        if program.runner != "exec" or program.mode != "loop":
            self.requests = 0
        self.rss_bytes = None
        self._output_reader = PipeReader(out_r, output_to_log(self.index, self.logfile))
        self._status_reader = PipeReader(status_r, self._on_reports, STATUS_LINE_MAX)
        log.debug("%s: spawned pid %d", self.name, proc.pid)
        self._notify()
        return proc

    def _after_exit(self, code: int | None) -> bool:
        """Apply the restart policy to an exit; return True to spawn again."""
        program = self.program
        uptime = time.monotonic() - self.started_at if code is not None else 0.0
        reason = self._classify(code)
        self.last_exit = {"reason": reason, "code": code}
        if code is not None:
            log.info("%s (pid %s) exited: %s, code %s, after %.2fs", self.name, self.pid, reason, code, uptime)
            if code in (126, 127) and uptime < MIN_UPTIME_S:  # the exec itself failed (see the program's log)
                self.last_error = f"could not execute {runners.argv_for(program)[0]} (exit {code})"
        self.stop_deadline = None
        if self._stopping:
            self._transition(S.STOPPED)
            return False
        loop_run = program.runner == "exec" and program.mode == "loop" and code == 0
        if reason in ("max_request", "memory_limit") or loop_run:
            # A recycle or one finished run of a loop-mode command: respawn at once, no failure.
            self._transition(S.EXITED)
            self._failures = 0
            if loop_run:  # the next run is the next request, not a restart
                self.requests += 1
                self._wake.wait(program.usleep_us / 1e6)
            return self._respawn_if_wanted(counted=not loop_run)
        expected = code in program.exitcodes
        restart = program.autorestart == "true" or (program.autorestart == "unexpected" and not expected)
        if uptime >= max(program.startsecs_s, MIN_UPTIME_S):
            self._transition(S.EXITED)
            self._failures = 0
            if not restart:
                self._wanted = False
                return False
            return self._respawn_if_wanted()
        if not restart and expected:
            self._transition(S.EXITED)
            self._wanted = False
            return False
        # Died too soon: a failed start.
        self._failures += 1
        if self.state is S.RUNNING:  # startsecs < 1 had already promoted it
            self._transition(S.EXITED)
        self._transition(S.BACKOFF)
        if self._failures > program.startretries:
            window = max(program.startsecs_s, MIN_UPTIME_S)
            self.last_error = self.last_error or f"exited {self._failures} times within {window}s of starting"
            log.error("%s: FATAL after %d failed starts in a row", self.name, self._failures)
            self._transition(S.FATAL)
            self._wanted = False
            return False
        delay = backoff_delay(self._failures)
        log.info("%s: failed start %d of %d, retry in %.1fs", self.name, self._failures, program.startretries + 1, delay)
        self._wake.clear()
        self._wake.wait(delay)
        if not self._wanted:
            self._transition(S.STOPPED)
            return False
        self.restarts += 1
        return True

    def _startsecs_passed(self) -> None:
        if self.state is S.STARTING:
            self._transition(S.RUNNING)
            # A runner that reports is up at its ready report (after its bootstrap), not before.
            if self.program.runner not in REPORTING_RUNNERS:
                self.up.set()

    def _respawn_if_wanted(self, counted: bool = True) -> bool:
        if not self._wanted:
            self._transition(S.STOPPED)
            return False
        self.restarts += counted
        return True

    def _classify(self, code: int | None) -> str:
        if code is None:
            return "crashed"
        if self._stopping:
            return "stopped"
        if self._recycle_reason:
            return self._recycle_reason
        if code == 0 and self._reported_exit in ("max_request", "memory_limit"):
            return self._reported_exit
        return exit_reason(code)

    # -- helpers ------------------------------------------------------------------------------

    def _terminate(self, proc: Child, timeout: float) -> None:
        """stopsignal to the group; SIGKILL to the group if the process is still there after timeout."""
        self._signal(self.program.stopsignal)
        if proc.wait(timeout) is None:
            log.warning("%s (pid %s) did not stop within %.1fs: SIGKILL to its group", self.name, proc.pid, timeout)
            self._signal(signal.SIGKILL)

    def _signal(self, sig: int) -> None:
        proc = self.proc
        if proc is None or proc.returncode is not None:
            return
        try:
            os.killpg(proc.pid, sig)
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
            if isinstance(event.get("requests"), int):
                self.requests = event["requests"]
        elif kind == "ready":
            self.up.set()
            if self.state is S.STARTING:  # serving already: RUNNING without waiting for startsecs
                self._transition(S.RUNNING)
        elif kind == "error":
            self.last_error = str(event.get("message", ""))[:500]
        elif kind == "exit":
            self._reported_exit = str(event.get("reason"))
            if isinstance(event.get("requests"), int):
                self.requests = event["requests"]
            if self._reported_exit == "bootstrap":
                self.last_error = "bootstrap failed: " + str(event.get("message", "see the program's log"))

    def _transition(self, new: ProcessState) -> None:
        check_transition(self.state, new)
        log.debug("%s: %s -> %s", self.name, self.state.value, new.value)
        self.state = new
        self._notify()

    def _force_state(self, new: ProcessState) -> None:
        self.state = new
        self._notify()

    def _notify(self) -> None:
        if self.on_change is not None:
            self.on_change(self)
