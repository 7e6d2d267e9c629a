"""Guarding the request: `request_timeout`, `max_lifetime` and the busy page.

A runner tells the master that a request began without a pipe message per request: the master
gives each worker a small shared page (an anonymous `memfd`, so there is no path anyone could
plant or open) as fd `GSUPER_BUSY_FD`. At the start of a request the runner stores there a
CLOCK_MONOTONIC "busy since" stamp in nanoseconds and the request number, and 0 when it is idle
again (docs/runners.md, "The busy page"). CLOCK_MONOTONIC is one clock for every process of the
machine, so the master compares the stamp with its own `time.monotonic_ns()`.

The master enforces the timeout itself (a hung request may sleep, block in a system call, block
or ignore TERM, or spin): :class:`Guard` checks every guarded worker periodically and SIGKILLs
the group of one over its deadline. The decisions are pure functions of the readings and a
clock, tested with a fake clock in tests/test_guard.py.
"""

from __future__ import annotations

import logging
import mmap
import os
import random
import struct
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import gevent

if TYPE_CHECKING:
    from gsuper.config import ProgramConfig
    from gsuper.worker import Worker

log = logging.getLogger("gsuper")

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


# -- the periodic check --------------------------------------------------------------------------


class Guard:
    """One greenlet of the master: ends requests over their deadline, lives over their lifetime
    (where the runner does not end them itself), at a period set by the shortest limit."""

    def __init__(self, workers: Callable[[], Iterable[Worker]], clock_ns: Callable[[], int] = time.monotonic_ns) -> None:
        self._workers = workers
        self._clock_ns = clock_ns

    def period(self, workers: list[Worker]) -> float | None:
        """The check period for these workers, or None when none is guarded."""
        limits = []
        for w in workers:
            limits.append(w.program.request_timeout_s)
            if w.lifetime_s and not runner_enforces_lifetime(w.program):
                limits.append(w.lifetime_s)
        return check_period(limits)

    def check(self) -> None:
        """One pass over every worker."""
        now_ns = self._clock_ns()
        for w in list(self._workers()):
            program = w.program
            if program.request_timeout_s > 0:
                busy = w.busy(now_ns)
                if over_deadline(busy, program.request_timeout_s, now_ns):
                    assert busy is not None
                    w.end_request(busy.request, (now_ns - busy.since_ns) / 1e9)
                    continue
            if w.lifetime_s and not runner_enforces_lifetime(program) and over_lifetime(w.started_at, w.lifetime_s, now_ns / 1e9):
                w.recycle("max_lifetime")

    def run(self) -> None:
        """Check forever; idle (1 s naps) while no program is guarded."""
        while True:
            period = self.period(list(self._workers()))
            gevent.sleep(period if period is not None else 1.0)
            if period is not None:
                try:
                    self.check()
                except Exception:  # noqa: BLE001 - a bug here must not end the guard for everyone
                    log.exception("request guard check failed")
