"""In-process stand-ins for the fast tier: a virtual clock, a scripted child, a program config.

Nothing here starts a process or sends a signal: a FakeProcess's pid is far above any real pid
and `signal_group` only records the signal, so the Worker and Program code under test runs as
it does in the master, with every timed wait taken on virtual time.
"""

from __future__ import annotations

import errno
import functools
import itertools
import os
import signal
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import Any

import gevent
import gevent.event

from gsuper.config import ProgramConfig, load

_pids = itertools.count(10_000_000)


class FakeClock:
    """Virtual monotonic time: a timed wait that nothing ends returns at once, time moved on."""

    def __init__(self, start: float = 1000.0) -> None:
        self.t = start

    def now(self) -> float:
        return self.t

    def wait(self, event: gevent.event.Event, timeout: float | None) -> bool:
        gevent.sleep(0)
        if event.is_set():
            return True
        if timeout is None:
            return bool(event.wait())
        self.t += timeout
        gevent.sleep(0)
        return event.is_set()


@dataclass
class Life:
    """What one spawned process does: live `for_s` virtual seconds (None: until signalled),
    report `reports` (status lines) at once, then exit with `code`. `on_term` is the code it
    exits with when it gets its stop signal (None: the signal's own -N)."""

    for_s: float | None = None
    code: int = 0
    reports: list[dict[str, Any]] = field(default_factory=list)
    on_term: int | None = None
    busy: bool = False  # its busy page says request 1 runs since its spawn (False: idle)
    lifetime_s: float = 0.0  # its drawn max_lifetime


class FakeProcess:
    """A scripted worker process on the virtual clock."""

    def __init__(self, clock: FakeClock, life: Life) -> None:
        self.pid = next(_pids)
        self.clock = clock
        self.life = life
        self.born = clock.t
        self.signals: list[int] = []
        self.lifetime_s = life.lifetime_s
        self._code: int | None = None
        self._gone = gevent.event.Event()

    def busy(self, now_ns: int) -> Any:
        """Its busy page: busy since its spawn, with request 1, when its life says so."""
        from gsuper.guard import Busy

        if not self.life.busy or self._code is not None:
            return None
        return Busy(int(self.born * 1e9), 1)

    @property
    def returncode(self) -> int | None:
        return self._code

    def _end(self, code: int) -> None:
        if self._code is None:
            self._code = code
            self._gone.set()

    def wait(self, timeout: float | None = None) -> int | None:
        gevent.sleep(0)
        if self._code is not None:
            return self._code
        if self.life.for_s is not None:
            left = self.born + self.life.for_s - self.clock.t
            if timeout is not None and timeout < left:
                self.clock.t += timeout
                return None
            self.clock.t += max(left, 0.0)
            self._end(self.life.code)
            return self._code
        if timeout is None:  # lives until signalled or told to exit
            self._gone.wait()
        elif not self._gone.is_set():
            self.clock.t += timeout
        return self._code

    def drain(self, timeout_s: float) -> None:
        return None

    def end_strays(self) -> int:
        return 0

    def signal_group(self, sig: int) -> None:
        self.signals.append(sig)
        if self._code is not None:
            return
        if sig == signal.SIGKILL:
            self._end(-signal.SIGKILL)
        elif sig in (signal.SIGTERM, signal.SIGINT, signal.SIGQUIT):
            self._end(self.life.on_term if self.life.on_term is not None else -sig)

    def exit(self, code: int) -> None:
        """Make the process exit now (a crash, a kill from outside)."""
        self._end(code)


class ParkingProcess(FakeProcess):
    """A FakeProcess with `on_exit`, as the real one has: the slot parks on it while it runs
    (for lives with `for_s = None`: only a signal or `exit()` ends it, nothing waits on it)."""

    def on_exit(self, callback: Callable[[], object]) -> None:
        self._gone.rawlink(lambda _event: callback())


class FakeSpawner:
    """Hands out FakeProcesses following `lives` (the last one repeats); records every spawn."""

    def __init__(
        self,
        clock: FakeClock,
        *lives: Life,
        fail: Callable[[int], bool] | None = None,
        fail_errno: int = errno.ENOENT,
        process: type[FakeProcess] = FakeProcess,
    ) -> None:
        self.process = process
        self.clock = clock
        self.lives = list(lives) or [Life()]
        self.fail = fail  # fail(n) -> True: spawn number n raises OSError(fail_errno)
        self.fail_errno = fail_errno
        self.spawned: list[FakeProcess] = []
        self.calls = 0

    def __call__(self, config: ProgramConfig, index: int, max_request: int, on_output: Any, on_reports: Any) -> FakeProcess:
        self.calls += 1
        if self.fail is not None and self.fail(self.calls):
            raise OSError(self.fail_errno, os.strerror(self.fail_errno))
        life = self.lives[min(len(self.spawned), len(self.lives) - 1)]
        proc = self.process(self.clock, life)
        self.spawned.append(proc)
        import json

        for report in life.reports:
            gevent.spawn(on_reports, json.dumps(report).encode() + b"\n")
        return proc


@functools.lru_cache(maxsize=1)
def _base() -> ProgramConfig:
    # Loaded from a real file, so that every key has the default the configspec gives it.
    with tempfile.TemporaryDirectory() as folder:
        path = os.path.join(folder, "gsuper.ini")
        with open(path, "w") as fh:
            fh.write("[program:p]\ncommand = sleep 1000\n")
        return replace(load(path).programs["p"], directory="/")


def program_config(**changes: Any) -> ProgramConfig:
    """The defaults of `[program:p] command = sleep 1000`, with some fields changed."""
    return replace(_base(), **changes)


class NullLog:
    """A LogFile that keeps what is written, in memory."""

    def __init__(self) -> None:
        self.data = b""

    def write(self, data: bytes) -> None:
        self.data += data


def until(condition: Any, what: str, steps: int = 2000) -> None:
    """Let the hub run until `condition()` holds (bounded, in hub turns, not in time)."""
    import pytest

    for _ in range(steps):
        if condition():
            return
        gevent.sleep(0)
    pytest.fail(f"never happened: {what}")
