"""gsuper.guard in-process (fast tier): the pure decisions, the busy page, the two monitor
checks on fake workers, and a Worker slot on a scripted child and a virtual clock (fakes.py).
No process is started here."""

from __future__ import annotations

import os
import signal
import struct
from dataclasses import dataclass, field, replace
from typing import Any

import pytest

from fakes import FakeClock, FakeSpawner, Life, NullLog, program_config, until
from gsuper import guard
from gsuper.config import ProgramConfig
from gsuper.guard import Busy, BusyPage, LifetimeCheck, RequestTimeoutCheck
from gsuper.policy import ExitReason
from gsuper.worker import Worker

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
    """What the checks use of a Worker."""

    config: ProgramConfig
    reading: Busy | None = None
    started_at: float = 0.0
    lifetime_s: float = 0.0
    ended: list[tuple[int, float]] = field(default_factory=list)
    recycled: list[ExitReason] = field(default_factory=list)

    def busy(self, now_ns: int) -> Busy | None:
        return self.reading

    def end_request(self, request: int, ran_s: float) -> None:
        self.ended.append((request, ran_s))

    def recycle(self, reason: ExitReason) -> None:
        self.recycled.append(reason)


@dataclass
class FakeProgram:
    config: ProgramConfig
    workers: list[FakeWorker]
    name: str = "p"

    def live_workers(self) -> list[FakeWorker]:
        return self.workers

    def stoppable_workers(self) -> list[FakeWorker]:
        return self.workers


def test_request_timeout_check_ends_only_the_request_over_its_deadline():
    cfg = program(request_timeout_s=2.0)
    hung, healthy, idle = FakeWorker(cfg, Busy(97 * S, 51)), FakeWorker(cfg, Busy(99 * S, 9)), FakeWorker(cfg)
    check = RequestTimeoutCheck()
    assert check.interval_s(FakeProgram(cfg, [])) == 0.2  # type: ignore[arg-type]
    assert check.interval_s(FakeProgram(program(), [])) is None  # type: ignore[arg-type]
    programs = [FakeProgram(cfg, [hung, healthy, idle])]
    check.run(programs, 100.0)  # type: ignore[arg-type]
    assert hung.ended == [(51, 3.0)]
    assert healthy.ended == idle.ended == []
    check.run(programs, 101.5)  # type: ignore[arg-type]
    assert healthy.ended == [(9, 2.5)]


def test_lifetime_check_stops_daemons_and_leaves_loops_to_their_runner():
    daemon_cfg = program(runner="exec", mode="daemon", max_lifetime_s=60.0)
    old, young = (
        FakeWorker(daemon_cfg, started_at=900.0, lifetime_s=60.0),
        FakeWorker(daemon_cfg, started_at=990.0, lifetime_s=60.0),
    )
    check = LifetimeCheck()
    assert check.interval_s(FakeProgram(daemon_cfg, [])) == 0.25  # type: ignore[arg-type]
    assert check.interval_s(FakeProgram(program(max_lifetime_s=60.0), [])) is None  # type: ignore[arg-type]
    check.run([FakeProgram(daemon_cfg, [old, young])], 1000.0)  # type: ignore[list-item]
    assert old.recycled == [ExitReason.MAX_LIFETIME] and young.recycled == []


# -- the slot, on a scripted child and a virtual clock (tests/fakes.py) ---------------------------




def test_a_hung_request_is_killed_and_respawned_at_once_never_a_failed_start():
    clock = FakeClock()
    spawner = FakeSpawner(clock, Life(busy=True), Life())
    cfg = program_config(runner="php", mode="loop", script="/x.php", command=None, request_timeout_s=0.5, startsecs_s=1.0)
    w = Worker(cfg, 0, NullLog(), None, spawner, clock)  # type: ignore[arg-type]
    p = FakeProgram(cfg, [w])  # type: ignore[list-item]
    w.start()
    check = RequestTimeoutCheck()
    check.run([p], clock.now() + 0.4)  # type: ignore[list-item]
    assert spawner.spawned[0].signals == []  # within the timeout: left alone
    assert w.snapshot()["busy_s"] == 0.0
    check.run([p], clock.now() + 0.6)  # type: ignore[list-item]
    assert spawner.spawned[0].signals[0] == signal.SIGKILL
    until(lambda: len(spawner.spawned) == 2, "the respawn")
    assert w.last_exit == {"reason": "request_timeout", "code": -signal.SIGKILL}
    assert w.restarts == 1 and w._failures == 0 and w.state.value != "BACKOFF"  # killed before startsecs: still no failure
    assert spawner.spawned[1].born == pytest.approx(spawner.spawned[0].born)  # at once, no delay
    assert w.snapshot()["busy_s"] is None
    w.stop()


def test_a_daemon_over_its_lifetime_is_stopped_gracefully_and_replaced():
    clock = FakeClock()
    spawner = FakeSpawner(clock, Life(lifetime_s=60.0, on_term=0), Life())
    cfg = program_config(max_lifetime_s=60.0)
    w = Worker(cfg, 0, NullLog(), None, spawner, clock)  # type: ignore[arg-type]
    w.start()
    until(lambda: w.state.value == "RUNNING", "running")
    LifetimeCheck().run([FakeProgram(cfg, [w])], clock.now() + 61.0)  # type: ignore[list-item]
    until(lambda: len(spawner.spawned) == 2, "the replacement")
    assert spawner.spawned[0].signals[0] == signal.SIGTERM  # its stopsignal, not a kill
    assert w.last_exit == {"reason": "max_lifetime", "code": 0} and w.restarts == 1
    w.stop()


def test_an_exec_program_reports_begin_and_idle_on_the_status_pipe():
    clock = FakeClock()
    spawner = FakeSpawner(clock, Life(reports=[{"event": "begin", "request": 3}]))
    cfg = program_config(request_timeout_s=1.0)
    w = Worker(cfg, 0, NullLog(), None, spawner, clock)  # type: ignore[arg-type]
    w.start()
    until(lambda: w.busy(int(clock.now() * 1e9)) is not None, "the begin report")
    assert w.busy(int(clock.now() * 1e9)).request == 3  # type: ignore[union-attr]
    w._on_reports(b'{"event": "idle"}\n')
    assert w.busy(int(clock.now() * 1e9)) is None
    w._on_reports(b'{"event": "begin", "request": 4}\n{"event": "request", "requests": 4}\n')
    assert w.busy(int(clock.now() * 1e9)) is None  # request 4 reported done
    w.stop()
