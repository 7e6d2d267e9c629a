"""Periodic checks of the master: one loop schedules each check per program, only for the
programs that need it, each at its own interval.

A check is a small object with two methods: `interval_s(program)` (None: this program needs no
such check) and `run(programs, now)` (act on the programs that are due). The memory check
(`memory_limit`) is the first; request deadlines, lifetimes and backlog readings of 0.2 are
checks of the same shape. :meth:`Monitor.tick` is a plain function of the clock, so schedules
are tested without waiting.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Protocol

from gsuper.memsample import SAMPLER, proc_table, tree_members
from gsuper.policy import ExitReason
from gsuper.pss import members_pss

if TYPE_CHECKING:
    from gsuper.program import Program
    from gsuper.worker import Worker

log = logging.getLogger("gsuper")

#: A schedule may run a check this much early rather than sleep again for a sliver of time.
SLACK_S = 0.01


def sample_rss(workers: Iterable[Worker], pss: bool = False) -> list[tuple[Worker, int]]:
    """Sample the tree RSS (and with `pss`, the tree PSS) of the given workers that have a
    live process; store it on each; return (worker, rss) of those found.

    Through :data:`gsuper.memsample.SAMPLER`: a worker of a program with `memory_limit` keeps
    its tree's /proc descriptors open between samples (sampled every interval); any other
    (sampled only for status) opens, reads and closes them. Without children files in /proc,
    one pass over /proc serves every worker.
    """
    found = []
    table: tuple[dict[int, int], dict[int, list[int]]] | None = None
    for w in workers:
        proc = w.proc
        # Not yet reaped (the child watcher sets returncode when libev reaps): the pid is ours.
        if proc is None or proc.returncode is not None:
            continue
        got = None if SAMPLER.fallback else SAMPLER.sample(proc.pid, keep=bool(w.config.memory_limit_bytes))
        if got is None and SAMPLER.fallback:
            if table is None:
                table = proc_table()
            if proc.pid in table[0]:
                members = tree_members(proc.pid, table[1])
                got = sum(table[0].get(p, 0) for p in members), members
        if got is None:
            continue
        total, members = got
        w.observe_rss(total)
        if pss:
            w.observe_pss(members_pss(members))
        found.append((w, total))
    return found


class Check(Protocol):
    """One kind of periodic check."""

    name: str

    def interval_s(self, program: Program) -> float | None:
        """Seconds between two runs for this program; None when the program needs none."""

    def run(self, programs: list[Program], now: float) -> None:
        """Act on the programs that are due."""


class MemoryCheck:
    """`memory_limit`: sample each limited program's worker trees; recycle any over its limit."""

    name = "memory"

    def __init__(self, default_interval_s: Callable[[], float]) -> None:
        self.default_interval_s = default_interval_s

    def interval_s(self, program: Program) -> float | None:
        """The program's memory_check_interval (or [gsuper]'s) when it has a memory_limit."""
        if not program.config.memory_limit_bytes:
            return None
        return program.config.memory_check_interval_s or self.default_interval_s()

    def run(self, programs: list[Program], now: float) -> None:
        """Sample every due program's starting and running workers; recycle those over their limit."""
        workers = [w for p in programs for w in p.stoppable_workers()]
        for w, rss in sample_rss(workers):
            limit = w.config.memory_limit_bytes
            if limit and rss > limit:
                log.warning("%s (pid %s) uses %d bytes, over memory_limit %d", w.name, w.pid, rss, limit)
                w.recycle(ExitReason.MEMORY_LIMIT)


class Monitor:
    """Runs every registered check for every program that needs it, each at its interval."""

    def __init__(
        self,
        programs: Callable[[], Iterable[Program]],
        idle_s: Callable[[], float],
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.programs = programs
        self.idle_s = idle_s  # how long to sleep when nothing is scheduled (a reload may add work)
        self.clock = clock
        self.checks: list[Check] = []
        self._due: dict[tuple[str, str], float] = {}

    def add(self, check: Check) -> None:
        """Register a check."""
        self.checks.append(check)

    def tick(self, now: float) -> float:
        """Run what is due at `now`; return the seconds until something is due next.

        A program's first run of a check comes one interval after the program is first seen.
        """
        programs = list(self.programs())
        next_due = now + self.idle_s()
        seen: set[tuple[str, str]] = set()
        for check in self.checks:
            due_now = []
            for program in programs:
                interval = check.interval_s(program)
                if interval is None:
                    continue
                key = (check.name, program.name)
                seen.add(key)
                due = self._due.setdefault(key, now + interval)
                if now >= due - SLACK_S:
                    due_now.append(program)
                    due = self._due[key] = now + interval
                next_due = min(next_due, due)
            if due_now:
                try:
                    check.run(due_now, now)
                except Exception:  # noqa: BLE001 - a failing check must not end the others
                    log.exception("the %s check failed", check.name)
        for key in set(self._due) - seen:  # programs removed, or no longer needing the check
            del self._due[key]
        return max(0.0, next_due - now)

    def run_forever(self, sleep: Callable[[float], object]) -> None:
        """The monitor's greenlet."""
        while True:
            sleep(self.tick(self.clock()))
