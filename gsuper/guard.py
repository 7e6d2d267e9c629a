"""Guarding the request: `request_timeout`, `max_lifetime` and the busy page.

A runner tells the master that a request began without a pipe message per request: the master
gives each worker a small shared page (an anonymous `memfd`, so there is no path anyone could
plant or open) as fd `GSUPER_BUSY_FD`. At the start of a request the runner stores there a
CLOCK_MONOTONIC "busy since" stamp in nanoseconds and the request number, and 0 when it is idle
again (docs/runners.md, "The busy page"). CLOCK_MONOTONIC is one clock for every process of the
machine, so the master compares the stamp with its own `time.monotonic_ns()`.

The master enforces the timeout itself (a hung request may sleep, block in a system call, block
or ignore TERM, or spin): :class:`RequestTimeoutCheck`, one of the monitor's periodic checks
(gsuper.monitor), reads every guarded worker's page and SIGKILLs the group of one over its
deadline; :class:`LifetimeCheck` stops daemons older than their `max_lifetime`. The decisions
are pure functions of the readings and a clock, tested in tests/test_guard.py.
"""

from __future__ import annotations

import mmap
import os
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from gsuper.policy import ExitReason

if TYPE_CHECKING:
    from gsuper.config import ProgramConfig
    from gsuper.program import Program


#: Layout of the page: busy-since stamp (ns, CLOCK_MONOTONIC, 0 = idle), request number.
PAGE_FORMAT = "=qq"
PAGE_BYTES = 64  # the two fields, and room for a later one; a mapping is one page anyway
#: Bounds of the period of the guard's check (seconds): a tenth of the shortest timeout.
CHECK_MIN_S = 0.02
CHECK_MAX_S = 0.25


@dataclass(frozen=True)
class Busy:
    """One reading of a worker's page: busy since `since_ns` with request number `request`."""

    since_ns: int
    request: int


class BusyPage:
    """The master's side of one worker's busy page: an anonymous shared page, mapped."""

    def __init__(self) -> None:
        fd = os.memfd_create("gsuper-busy", os.MFD_CLOEXEC)
        try:
            os.ftruncate(fd, PAGE_BYTES)
            self._map = mmap.mmap(fd, PAGE_BYTES, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except OSError:
            os.close(fd)
            raise
        self.fd: int | None = fd  # passed to the worker, then closed here (the mapping stays)

    def close_fd(self) -> None:
        """Close the master's descriptor once the worker has its own copy."""
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None

    def close(self) -> None:
        """Unmap the page (and close the descriptor if still open)."""
        self.close_fd()
        self._map.close()

    def read(self) -> Busy | None:
        """The current request, or None when the worker is idle.

        Read twice: a reading taken while the runner was writing could mix two stamps; two
        equal readings in a row cannot be a torn one.
        """
        first = struct.unpack_from(PAGE_FORMAT, self._map, 0)
        if first[0] <= 0:
            return None
        second = struct.unpack_from(PAGE_FORMAT, self._map, 0)
        if first != second:
            return None  # mid-write: the next check sees it settled
        return Busy(first[0], first[1])


# -- pure decisions ------------------------------------------------------------------------------


def runner_enforces_lifetime(program: ProgramConfig) -> bool:
    """php and python loops end their own life between requests; the master stops the rest."""
    return program.runner in ("php", "python") and program.mode == "loop"


def has_busy_page(program: ProgramConfig) -> bool:
    """Whether the workers get a busy page: php/python loops always (for `busy_s` in status),
    any other program when it has a request_timeout to report against."""
    return runner_enforces_lifetime(program) or program.request_timeout_s > 0


def draw_lifetime(program: ProgramConfig, rng: Callable[[float, float], float] = random.uniform) -> float:
    """Seconds this life may last (0: unlimited), with 0..max_lifetime_jitter added."""
    if program.max_lifetime_s <= 0:
        return 0.0
    extra = rng(0.0, program.max_lifetime_jitter_s) if program.max_lifetime_jitter_s > 0 else 0.0
    return program.max_lifetime_s + extra


def sane(busy: Busy | None, spawned_ns: int, now_ns: int) -> Busy | None:
    """A reading that can be true: stamped after this life began and not in the future."""
    if busy is None or busy.since_ns < spawned_ns or busy.since_ns > now_ns:
        return None
    return busy


def busy_seconds(busy: Busy | None, now_ns: int) -> float | None:
    """How long the current request has run, or None when idle."""
    return None if busy is None else max(0, now_ns - busy.since_ns) / 1e9


def over_deadline(busy: Busy | None, timeout_s: float, now_ns: int) -> bool:
    """Whether the current request has run longer than `timeout_s` (0: no timeout)."""
    return timeout_s > 0 and busy is not None and now_ns - busy.since_ns > timeout_s * 1e9


def over_lifetime(started_s: float, lifetime_s: float, now_s: float) -> bool:
    """Whether a life that began at `started_s` (monotonic) has passed `lifetime_s` (0: never)."""
    return lifetime_s > 0 and now_s - started_s >= lifetime_s


def check_period(timeouts: Iterable[float]) -> float | None:
    """Seconds between two checks: a tenth of the shortest timeout, within the bounds; None when
    nothing is guarded."""
    shortest = min((t for t in timeouts if t > 0), default=0.0)
    if shortest <= 0:
        return None
    return min(CHECK_MAX_S, max(CHECK_MIN_S, shortest / 10))


# -- the periodic checks (registered with gsuper.monitor.Monitor) ------------------------------


class RequestTimeoutCheck:
    """`request_timeout`: SIGKILL the group of a worker whose request is over its deadline."""

    name = "request_timeout"

    def interval_s(self, program: Program) -> float | None:
        """A tenth of the program's request_timeout (within bounds); None without one."""
        return check_period([program.config.request_timeout_s])

    def run(self, programs: list[Program], now: float) -> None:
        """Read the busy page (or reported begin) of every live worker of the due programs."""
        now_ns = int(now * 1e9)
        for program in programs:
            timeout_s = program.config.request_timeout_s
            for w in program.live_workers():
                busy = w.busy(now_ns)
                if busy is not None and over_deadline(busy, timeout_s, now_ns):
                    w.end_request(busy.request, (now_ns - busy.since_ns) / 1e9)


class LifetimeCheck:
    """`max_lifetime` of workers that do not end their own life (daemon mode, exec, shell):
    stop them gracefully (stopsignal, stop_timeout) and replace them at once."""

    name = "max_lifetime"

    def interval_s(self, program: Program) -> float | None:
        """A tenth of the program's max_lifetime (within bounds); None when its runner ends
        its own life or it has no max_lifetime."""
        if runner_enforces_lifetime(program.config):
            return None
        return check_period([program.config.max_lifetime_s])

    def run(self, programs: list[Program], now: float) -> None:
        """Recycle every starting or running worker older than its drawn lifetime."""
        for program in programs:
            for w in program.stoppable_workers():
                if over_lifetime(w.started_at, w.lifetime_s, now):
                    w.recycle(ExitReason.MAX_LIFETIME)
