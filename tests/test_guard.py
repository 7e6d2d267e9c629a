"""The pure parts of gsuper.guard (request deadlines, lifetimes, the busy page), with a fake
clock and fake workers: no process is started here."""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from gsuper import guard
from gsuper.config import ProgramConfig
from gsuper.guard import Busy, BusyPage, Guard

S = 1_000_000_000  # ns per second


def program(**overrides: Any) -> ProgramConfig:
    base = ProgramConfig(
        name="p", runner="php", mode="loop", script="/x.php", handler=None, command=None, interpreter=None,
        bootstrap=(), numprocs=1, max_request=0, max_request_jitter=0, memory_limit_bytes=0,
        memory_check_interval_s=None, usleep_us=1000, autorestart="true", exitcodes=(0,), startsecs_s=1.0,
        startretries=3, stopsignal=15, stop_timeout_s=10.0, directory="/", environment=(), on_error="continue",
        priority=999,
    )  # type: ignore[arg-type]  # fmt: skip
    return replace(base, **overrides)


def test_over_deadline_only_past_the_timeout_and_only_when_busy():
    busy = Busy(since_ns=10 * S, request=7)
    assert not guard.over_deadline(busy, 2.0, 12 * S)  # exactly 2 s: not over yet
    assert guard.over_deadline(busy, 2.0, 12 * S + 1)
    assert not guard.over_deadline(None, 2.0, 100 * S)  # idle
    assert not guard.over_deadline(busy, 0.0, 100 * S)  # no timeout


def test_sane_readings_fall_within_this_life():
    assert guard.sane(Busy(5 * S, 1), spawned_ns=6 * S, now_ns=7 * S) is None  # stamped before the spawn
    assert guard.sane(Busy(8 * S, 1), spawned_ns=6 * S, now_ns=7 * S) is None  # in the future
    assert guard.sane(Busy(6 * S, 1), spawned_ns=6 * S, now_ns=7 * S) == Busy(6 * S, 1)
    assert guard.sane(None, 0, 1) is None


def test_busy_seconds():
    assert guard.busy_seconds(None, 5 * S) is None
    assert guard.busy_seconds(Busy(4 * S, 1), 5 * S + S // 2) == 1.5


def test_lifetime_with_jitter_drawn_per_life():
    assert guard.draw_lifetime(program()) == 0.0
    assert guard.draw_lifetime(program(max_lifetime_s=60.0)) == 60.0
    draws = {guard.draw_lifetime(program(max_lifetime_s=60.0, max_lifetime_jitter_s=30.0)) for _ in range(50)}
    assert all(60.0 <= d <= 90.0 for d in draws) and len(draws) > 1
    assert guard.draw_lifetime(program(max_lifetime_s=60.0, max_lifetime_jitter_s=30.0), lambda a, b: b) == 90.0
    assert not guard.over_lifetime(100.0, 0.0, 1e9)
    assert not guard.over_lifetime(100.0, 60.0, 159.9)
    assert guard.over_lifetime(100.0, 60.0, 160.0)


def test_who_ends_a_life_and_who_gets_a_page():
    assert guard.runner_enforces_lifetime(program(runner="python"))
    assert not guard.runner_enforces_lifetime(program(mode="daemon"))
    assert not guard.runner_enforces_lifetime(program(runner="exec", mode="loop"))
    assert guard.has_busy_page(program())  # php loop: always, for busy_s
    assert not guard.has_busy_page(program(runner="exec", mode="daemon"))
    assert guard.has_busy_page(program(runner="exec", mode="daemon", request_timeout_s=5.0))


@pytest.mark.parametrize(
    "limits,period", [([], None), ([0.0], None), ([2.0], 0.2), ([0.05], 0.02), ([600.0, 0.0], 0.25), ([2.0, 1.0], 0.1)]
)
def test_check_period_is_a_tenth_of_the_shortest_limit_within_bounds(limits, period):
    assert guard.check_period(limits) == period


def test_the_page_reads_what_a_runner_writes_and_idle_is_none():
    page = BusyPage()
    try:
        assert page.fd is not None
        assert page.read() is None
        os.pwrite(page.fd, struct.pack("=qq", 123 * S, 42), 0)  # as the PHP runner writes it
        assert page.read() == Busy(123 * S, 42)
        os.pwrite(page.fd, struct.pack("=q", 0), 0)
        assert page.read() is None
        page.close_fd()
        assert page.fd is None
    finally:
        page.close()


@dataclass
class FakeWorker:
    """What Guard uses of a Worker."""

    program: ProgramConfig
    reading: Busy | None = None
    started_at: float = 0.0
    lifetime_s: float = 0.0
    ended: list[tuple[int, float]] = field(default_factory=list)
    recycled: list[str] = field(default_factory=list)

    def busy(self, now_ns: int) -> Busy | None:
        return self.reading

    def end_request(self, request: int, ran_s: float) -> None:
        self.ended.append((request, ran_s))

    def recycle(self, reason: str) -> None:
        self.recycled.append(reason)


def test_guard_ends_only_the_request_over_its_deadline():
    now = [100 * S]
    hung = FakeWorker(program(request_timeout_s=2.0), Busy(97 * S, 51))
    healthy = FakeWorker(program(request_timeout_s=2.0), Busy(99 * S, 9))
    idle = FakeWorker(program(request_timeout_s=2.0))
    unguarded = FakeWorker(program(), Busy(1 * S, 3))
    g = Guard(lambda: [hung, healthy, idle, unguarded], clock_ns=lambda: now[0])
    assert g.period([hung, healthy, idle, unguarded]) == 0.2  # type: ignore[list-item]
    g.check()
    assert hung.ended == [(51, 3.0)]
    assert healthy.ended == idle.ended == unguarded.ended == []
    now[0] = 101 * S + 1
    g.check()
    assert healthy.ended == [(9, 2.000000001)]


def test_guard_stops_daemons_over_their_lifetime_and_leaves_loops_to_their_runner():
    now = [1000 * S]
    daemon = FakeWorker(program(runner="exec", mode="daemon", max_lifetime_s=60.0), started_at=900.0, lifetime_s=60.0)
    young = FakeWorker(program(runner="exec", mode="daemon", max_lifetime_s=60.0), started_at=990.0, lifetime_s=60.0)
    loop = FakeWorker(program(max_lifetime_s=60.0), started_at=900.0, lifetime_s=60.0)
    g = Guard(lambda: [daemon, young, loop], clock_ns=lambda: now[0])
    assert g.period([daemon, loop]) == 0.25  # type: ignore[list-item]
    assert g.period([loop]) is None  # type: ignore[list-item]  # the runner ends its own life
    g.check()
    assert daemon.recycled == ["max_lifetime"] and young.recycled == [] and loop.recycled == []
