"""The monitor's schedule (fast tier): which check runs for which program, and when."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from fakes import program_config
from gsuper.monitor import MemoryCheck, Monitor


@dataclass
class FakeProgram:
    name: str
    config: Any


@dataclass
class Recorder:
    name: str
    intervals: dict[str, float | None]
    runs: list[tuple[float, list[str]]] = field(default_factory=list)

    def interval_s(self, program: Any) -> float | None:
        return self.intervals.get(program.name)

    def run(self, programs: list[Any], now: float) -> None:
        self.runs.append((now, [p.name for p in programs]))


def test_each_program_at_its_own_interval_and_only_where_needed() -> None:
    programs = [FakeProgram(n, None) for n in ("fast", "slow", "none")]
    check = Recorder("c", {"fast": 0.5, "slow": 2.0, "none": None})
    monitor = Monitor(lambda: programs, idle_s=lambda: 5.0)
    monitor.add(check)
    now, waits = 0.0, []
    for _ in range(6):
        wait = monitor.tick(now)
        waits.append(wait)
        now += wait
    assert check.runs == [(0.5, ["fast"]), (1.0, ["fast"]), (1.5, ["fast"]), (2.0, ["fast", "slow"]), (2.5, ["fast"])]
    assert waits[0] == 0.5


def test_nothing_to_check_sleeps_the_idle_interval_and_removed_programs_are_forgotten() -> None:
    programs = [FakeProgram("a", None)]
    check = Recorder("c", {"a": 1.0})
    monitor = Monitor(lambda: programs, idle_s=lambda: 3.0)
    monitor.add(check)
    assert monitor.tick(0.0) == 1.0
    programs.clear()
    assert monitor.tick(1.0) == 3.0 and check.runs == []
    programs.append(FakeProgram("a", None))
    assert monitor.tick(10.0) == 1.0  # seen anew: its first run comes one interval later
    assert check.runs == []


def test_a_failing_check_does_not_stop_the_others() -> None:
    programs = [FakeProgram("a", None)]

    class Broken(Recorder):
        def run(self, programs: list[Any], now: float) -> None:
            raise RuntimeError("bug")

    good = Recorder("good", {"a": 1.0})
    monitor = Monitor(lambda: programs, idle_s=lambda: 3.0)
    monitor.add(Broken("broken", {"a": 1.0}))
    monitor.add(good)
    monitor.tick(0.0)
    monitor.tick(1.0)
    assert good.runs == [(1.0, ["a"])]


def test_memory_check_interval_only_for_limited_programs() -> None:
    check = MemoryCheck(lambda: 1.0)
    unlimited = FakeProgram("u", program_config())
    limited = FakeProgram("l", program_config(memory_limit_bytes=10 << 20))
    own = FakeProgram("o", program_config(memory_limit_bytes=10 << 20, memory_check_interval_s=0.25))
    assert [check.interval_s(p) for p in (unlimited, limited, own)] == [None, 1.0, 0.25]  # type: ignore[arg-type]


def test_the_heap_is_trimmed_every_interval_until_libc_has_no_malloc_trim(monkeypatch):
    from gsuper import master, osutil

    answers = [True, True, False]  # glibc twice, then (as on musl) no malloc_trim
    calls: list[str] = []
    monkeypatch.setattr(osutil, "trim_heap", lambda: calls.append("trim") or answers.pop(0))
    slept: list[float] = []
    master.trim_heap_forever(lambda s: slept.append(s) or calls.append("sleep"))
    assert calls == ["sleep", "trim"] * 3  # a sleep before each trim; it ends at the first False
    assert slept == [master.TRIM_EVERY_S] * 3
