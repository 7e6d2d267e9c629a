"""Worker and Program in-process (fast tier): a scripted child on a virtual clock, no process.

What the real-process suites (test_core, test_operations) show through bin/gsuper, shown here
at the level of the slot, in milliseconds.
"""

from __future__ import annotations

import errno
import signal
from typing import Any

import pytest

from fakes import FakeClock, FakeSpawner, Life, NullLog, ParkingProcess, program_config, until
from gsuper.events import Event, EventStream
from gsuper.program import Program, RollingError
from gsuper.worker import Worker


def make(
    *lives: Life, fail: Any = None, fail_errno: int = errno.ENOENT, **config: Any
) -> tuple[Worker, FakeSpawner, FakeClock, list[Event]]:
    clock = FakeClock()
    spawner = FakeSpawner(clock, *lives, fail=fail, fail_errno=fail_errno)
    events = EventStream()
    seen: list[Event] = []
    events.subscribe(seen.append)
    worker = Worker(program_config(**config), 0, NullLog(), events, spawner, clock)  # type: ignore[arg-type]
    return worker, spawner, clock, seen


def states(seen: list[Event]) -> list[str]:
    return [e.state for e in seen if e.kind == "state"]  # type: ignore[misc]


def test_a_crash_after_startsecs_respawns_at_once() -> None:
    w, spawner, clock, seen = make(Life(for_s=5.0, code=-signal.SIGKILL), Life())
    w.start()
    until(lambda: len(spawner.spawned) == 2 and w.state.value == "RUNNING", "the respawn")
    assert spawner.spawned[1].born == pytest.approx(spawner.spawned[0].born + 5.0)  # no delay at all
    assert w.restarts == 1 and w.last_exit == {"reason": "killed", "code": -signal.SIGKILL}
    assert states(seen) == ["STARTING", "RUNNING", "EXITED", "STARTING", "RUNNING"]
    exits = [e for e in seen if e.kind == "exit"]
    assert [(e.reason, e.code, e.pid) for e in exits] == [("killed", -signal.SIGKILL, spawner.spawned[0].pid)]
    w.stop()
    assert w.state.value == "STOPPED"


def test_quick_deaths_back_off_doubling_then_fatal() -> None:
    w, spawner, clock, seen = make(Life(for_s=0.05, code=1))
    w.start()
    until(lambda: w.state.value == "FATAL", "FATAL")
    births = [p.born for p in spawner.spawned]
    gaps = [round(b - a - 0.05, 3) for a, b in zip(births, births[1:])]
    assert gaps == [0.1, 0.2, 0.4]  # the first start and 3 retries, then FATAL
    assert w.last_error == "exited 4 times within 1.0s of starting"
    assert states(seen)[-2:] == ["BACKOFF", "FATAL"]
    w.stop()
    assert w.state.value == "STOPPED"


def test_a_recycle_reported_by_the_runner_is_at_once_and_no_failure() -> None:
    recycle = Life(for_s=0.01, code=0, reports=[{"event": "exit", "reason": "max_request", "requests": 7}])
    w, spawner, _clock, seen = make(recycle, recycle, recycle, recycle, recycle, Life(), runner="php", mode="loop")
    w.start()
    until(lambda: len(spawner.spawned) == 6, "five recycles")
    assert w.state.value in ("STARTING", "RUNNING") and w.last_exit == {"reason": "max_request", "code": 0}
    assert "BACKOFF" not in states(seen)
    assert sum(e.data["done"] for e in seen if e.kind == "request") == 35
    w.stop()


def test_stop_sends_stopsignal_then_kill_after_the_timeout() -> None:
    w, spawner, _clock, _seen = make(Life(on_term=0), stopsignal=signal.SIGQUIT)
    w.start()
    w.stop()
    assert spawner.spawned[0].signals[0] == signal.SIGQUIT
    assert w.state.value == "STOPPED" and w.last_exit == {"reason": "stopped", "code": 0}


def test_memory_recycle_by_the_master_respawns_at_once() -> None:
    from gsuper.policy import ExitReason

    w, spawner, _clock, seen = make(Life(on_term=0), Life())
    w.start()
    until(lambda: w.state.value == "STARTING", "started")
    w.recycle(ExitReason.MEMORY_LIMIT)
    until(lambda: len(spawner.spawned) == 2, "the replacement")
    assert w.last_exit == {"reason": "memory_limit", "code": 0}
    assert "BACKOFF" not in states(seen)
    w.stop()


def test_a_spawn_that_fails_is_a_failed_start_with_the_reason() -> None:
    w, spawner, _clock, _seen = make(fail=lambda n: n <= 2)
    w.start()
    until(lambda: len(spawner.spawned) == 1, "the third try spawned")
    assert spawner.calls == 3 and w.restarts == 2
    assert w.last_error is not None and "No such file or directory" in w.last_error
    w.stop()


def test_out_of_descriptors_at_spawn_is_retried_and_never_fatal() -> None:
    # EMFILE on 10 spawns in a row (startretries is 3): a transient error, retried each second,
    # never FATAL, not counted as a restart; the reason is in last_error meanwhile.
    w, spawner, clock, seen = make(fail=lambda n: n <= 10, fail_errno=errno.EMFILE)
    t0 = clock.now()
    w.start()
    until(lambda: spawner.calls >= 3, "a few retries")
    assert w.last_error == "too many open files" and w.state.value == "BACKOFF"
    until(lambda: len(spawner.spawned) == 1, "the eleventh try spawned")
    assert "FATAL" not in states(seen) and w.restarts == 0 and w.last_exit is None
    assert clock.now() - t0 >= 10.0  # one second between two tries
    w.stop()


def test_a_loop_mode_command_counts_runs_as_requests() -> None:
    w, spawner, _clock, _seen = make(Life(for_s=0.001, code=0), mode="loop", usleep_us=500_000)
    w.start()
    until(lambda: len(spawner.spawned) >= 4, "four runs")
    w.stop()
    births = [p.born for p in spawner.spawned]
    assert [round(b - a, 3) for a, b in zip(births, births[1:])][:3] == [0.501, 0.501, 0.501]
    assert w.requests >= 3 and w.restarts == 0


# -- Program ---------------------------------------------------------------------------------


def make_program(*lives: Life, **config: Any) -> tuple[Program, FakeSpawner, list[Event]]:
    clock = FakeClock()
    spawner = FakeSpawner(clock, *lives)
    events = EventStream()
    seen: list[Event] = []
    events.subscribe(seen.append)
    return Program(program_config(**config), NullLog(), events, spawner, clock), spawner, seen  # type: ignore[arg-type]


def test_scale_up_and_down_keeps_the_others() -> None:
    program, spawner, seen = make_program(numprocs=2)
    program.start()
    first = {w.index: w.pid for w in program.workers}
    program.scale(4)
    assert [w.index for w in program.workers] == [0, 1, 2, 3] and program.config.numprocs == 4
    program.scale(1)
    assert [(w.index, w.pid) for w in program.workers] == [(0, first[0])]
    assert [e.data["direction"] for e in seen if e.kind == "scaled"] == ["up", "down"]
    # The stopped ones were asked to stop (the KILL after the exit is for what they left in their group).
    assert spawner.spawned[1].signals == [signal.SIGTERM, signal.SIGKILL]
    program.stop()
    assert not program.is_running()


def test_rolling_restart_replaces_each_worker_after_its_replacement_is_up() -> None:
    ready = Life(reports=[{"event": "ready"}])
    program, spawner, _seen = make_program(ready, numprocs=3, runner="php", mode="loop")
    program.start()
    old = [w.pid for w in program.workers]
    assert program.rolling_restart() == 3
    assert len(program.workers) == 3 and not {w.pid for w in program.workers} & set(old)
    # Each old worker got its TERM only after the next replacement was spawned.
    order = [p.pid for p in spawner.spawned]
    assert order[:3] == old
    program.stop()


def test_rolling_restart_keeps_the_old_worker_when_the_replacement_fails() -> None:
    ready = Life(reports=[{"event": "ready"}])
    broken = Life(for_s=0.01, code=1)
    program, _spawner, _seen = make_program(ready, broken, numprocs=1, runner="php", mode="loop", startretries=0)
    program.start()
    old = program.workers[0]
    with pytest.raises(RollingError, match="did not come up"):
        program.rolling_restart()
    assert program.workers == [old] and old.state.value in ("STARTING", "RUNNING")
    program.stop()


# -- a running slot parks on its process's exit (no greenlet per running worker) ----------------


def loop_greenlets(w: Worker) -> list[Any]:
    """The live greenlets running the slot's loop."""
    import gc

    import gevent

    return [g for g in gc.get_objects() if isinstance(g, gevent.Greenlet) and not g.dead and g._run == w._run]


def make_parking(**config: Any) -> tuple[Worker, FakeSpawner, list[Event]]:
    clock = FakeClock()
    spawner = FakeSpawner(clock, Life(), process=ParkingProcess)
    events = EventStream()
    seen: list[Event] = []
    events.subscribe(seen.append)
    worker = Worker(program_config(**config), 0, NullLog(), events, spawner, clock)  # type: ignore[arg-type]
    return worker, spawner, seen


def test_a_running_slot_holds_no_greenlet_and_resumes_at_the_exit() -> None:
    w, spawner, seen = make_parking()
    w.start()
    until(lambda: w.state.value == "RUNNING" and not loop_greenlets(w), "RUNNING, parked")
    assert not w.at_rest.is_set()
    w.start()  # a second start of a parked slot is a no-op, not a second loop
    assert len(spawner.spawned) == 1
    spawner.spawned[0].exit(-signal.SIGKILL)
    until(lambda: len(spawner.spawned) == 2 and w.state.value == "RUNNING" and not loop_greenlets(w), "the respawn, parked")
    assert w.restarts == 1 and w.last_exit == {"reason": "killed", "code": -signal.SIGKILL}
    assert states(seen) == ["STARTING", "RUNNING", "EXITED", "STARTING", "RUNNING"]
    w.stop()
    assert w.state.value == "STOPPED" and w.at_rest.is_set() and w.proc is None


def test_stop_and_kill_of_a_parked_slot() -> None:
    w, spawner, _seen = make_parking(stopsignal=signal.SIGQUIT)
    w.start()
    until(lambda: w.state.value == "RUNNING" and not loop_greenlets(w), "parked")
    w.stop()
    assert spawner.spawned[0].signals[0] == signal.SIGQUIT
    assert w.state.value == "STOPPED" and w.last_exit == {"reason": "stopped", "code": -signal.SIGQUIT}
    w.start()
    until(lambda: w.state.value == "RUNNING" and not loop_greenlets(w), "parked again")
    w.kill()
    until(lambda: w.at_rest.is_set(), "at rest after the kill")
    assert w.state.value == "STOPPED" and spawner.spawned[1].signals[0] == signal.SIGKILL and len(spawner.spawned) == 2


def test_a_parked_slot_recycles_over_memory_limit() -> None:
    from gsuper.policy import ExitReason

    w, spawner, _seen = make_parking()
    w.start()
    until(lambda: w.state.value == "RUNNING" and not loop_greenlets(w), "parked")
    w.recycle(ExitReason.MEMORY_LIMIT)
    until(lambda: len(spawner.spawned) == 2 and w.state.value == "RUNNING", "the replacement")
    assert w.last_exit is not None and w.last_exit["reason"] == "memory_limit"
    w.stop()
