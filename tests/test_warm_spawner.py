"""Fast tier: the decisions of WarmSpawner (gsuper/template.py) with a fake template on a
virtual clock. No process is started: the template is scripted, and so is the cold spawner.

Build at the first spawn, reuse, rebuild after a death (with backoff when it died young), renew
on reload / rolling restart, fall back to cold with the reason, a failed fork starts that one
worker cold, close and the takeover record.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import Any

import gevent
import gevent.event
import pytest

from fakes import FakeClock, program_config, until
from gsuper.template import BACKOFF_START_S, TemplateError, WarmSpawner

_pids = itertools.count(20_000_000)


class FakeChild:
    def __init__(self) -> None:
        self.pid = next(_pids)
        self.returncode: int | None = None
        self._exited = gevent.event.Event()

    def wait(self, timeout: float | None = None) -> int | None:
        self._exited.wait(timeout)
        return self.returncode

    def die(self, code: int) -> None:
        self.returncode = code
        self._exited.set()


class FakeTemplate:
    """A template whose build and forks do what the test says; it records what was asked."""

    fail_build: str | None = None  # the next builds fail with this reason
    fail_fork: bool = False
    fork_oserror: int | None = None  # the next forks raise OSError(this errno)

    def __init__(self, config: Any, output: Any, on_change: Any) -> None:
        self.config = config
        self.child = FakeChild()
        self.started_at = 0.0
        self.closing = False
        self.closed = False
        self.forks: list[int] = []
        self.spare_pid: int | None = next(_pids)

    @property
    def pid(self) -> int | None:
        return self.child.pid if self.child.returncode is None else None

    @property
    def alive(self) -> bool:
        return self.pid is not None and not self.closing

    def build(self) -> None:
        if FakeTemplate.fail_build:
            raise TemplateError(FakeTemplate.fail_build)

    def fork(self, config: Any, index: int, max_request: int, on_output: Any, on_reports: Any, on_errors: Any = None) -> Any:
        if FakeTemplate.fork_oserror is not None:
            raise OSError(FakeTemplate.fork_oserror, os.strerror(FakeTemplate.fork_oserror))
        if FakeTemplate.fail_fork:
            raise TemplateError("the template could not fork a worker (fork: out of memory)")
        self.forks.append(index)
        return ("forked", self, index)

    def close(self) -> None:
        self.closing = self.closed = True

    def kill(self) -> None:
        self.closing = True


class Made:
    """The factory: every template built, in order."""

    def __init__(self) -> None:
        self.all: list[FakeTemplate] = []

    def __call__(self, config: Any, output: Any, on_change: Any) -> FakeTemplate:
        template = FakeTemplate(config, output, on_change)
        self.all.append(template)
        return template


def make(**kw: Any) -> tuple[WarmSpawner, Made, FakeClock, list[int]]:
    FakeTemplate.fail_build, FakeTemplate.fail_fork, FakeTemplate.fork_oserror = None, False, None
    made, clock, cold = Made(), FakeClock(), []

    def cold_spawner(config: Any, index: int, max_request: int, on_output: Any, on_reports: Any, **_: Any) -> Any:
        cold.append(index)
        return ("cold", index)

    spawner = WarmSpawner("p", lambda data: None, cold=cold_spawner, make_template=made, clock=clock, **kw)
    return spawner, made, clock, cold


WARM = program_config(warm=True, runner="php")


def spawn(spawner: WarmSpawner, index: int = 0, config: Any = WARM) -> Any:
    return spawner(config, index, 0, lambda data: None, lambda data: None)


def test_the_template_is_built_at_the_first_spawn_and_serves_every_later_one():
    spawner, made, _clock, cold = make()
    assert made.all == []  # nothing before a spawn
    assert spawn(spawner, 0)[0] == "forked"
    assert spawn(spawner, 1)[0] == "forked"
    assert len(made.all) == 1 and made.all[0].forks == [0, 1] and cold == []
    assert spawner.describe(WARM) == {"warm": True, "warm_error": None, "template_pid": made.all[0].pid}


def test_a_program_that_is_not_warm_spawns_cold_and_builds_nothing():
    spawner, made, _clock, cold = make()
    plain = program_config()
    assert spawn(spawner, 3, plain) == ("cold", 3)
    assert made.all == [] and cold == [3] and spawner.describe(plain) == {}


def test_a_template_that_dies_is_rebuilt_at_once_when_it_lived_long_with_backoff_when_young():
    spawner, made, clock, _cold = make()
    spawn(spawner)
    first = made.all[0]
    clock.t += 5.0  # lived long: rebuilt at once, no backoff
    before = clock.t
    first.child.die(-9)
    until(lambda: len(made.all) == 2, "a rebuilt template")
    assert clock.t == before
    until(lambda: first.closed, "the dead template's remains closed (its spare with it)")
    second = made.all[1]
    second.child.die(1)  # died at once: the next build waits the backoff, doubling
    until(lambda: len(made.all) == 3, "a second rebuild")
    assert clock.t - before == pytest.approx(BACKOFF_START_S)
    made.all[2].child.die(1)
    until(lambda: len(made.all) == 4, "a third rebuild")
    assert clock.t - before == pytest.approx(BACKOFF_START_S * 3)  # 0.1 + 0.2
    assert spawn(spawner, 1) == ("forked", made.all[3], 1)


def test_renew_builds_a_new_template_at_the_next_spawn_and_closes_the_old():
    spawner, made, _clock, _cold = make()
    spawn(spawner)
    spawner.renew()  # reload or rolling restart
    assert len(made.all) == 1, "renew builds lazily, at the next spawn"
    assert spawn(spawner, 0) == ("forked", made.all[1], 0)
    until(lambda: made.all[0].closed, "the old template closed")
    # A config that changed (reload) also makes a new one.
    changed = program_config(warm=True, runner="php", environment={"A": "1"})
    spawn(spawner, 0, changed)
    assert len(made.all) == 3 and made.all[2].config == changed


def test_a_failed_build_runs_the_program_cold_with_the_reason_until_renewed():
    spawner, made, _clock, cold = make()
    FakeTemplate.fail_build = "bootstrap failed: no database"
    assert spawn(spawner, 0) == ("cold", 0)
    assert spawn(spawner, 1) == ("cold", 1)
    assert len(made.all) == 1, "a failed build is not retried for the same config"
    assert spawner.describe(WARM) == {"warm": False, "warm_error": "bootstrap failed: no database", "template_pid": None}
    FakeTemplate.fail_build = None
    spawner.renew()  # reload / restart tries again
    assert spawn(spawner, 0)[0] == "forked"
    assert spawner.describe(WARM)["warm"] is True and cold == [0, 1]


def test_a_failed_fork_starts_that_worker_cold_and_the_next_spawn_rebuilds():
    spawner, made, _clock, cold = make()
    spawn(spawner, 0)
    FakeTemplate.fail_fork = True
    assert spawn(spawner, 1) == ("cold", 1)
    until(lambda: made.all[0].closed, "the broken template closed")
    FakeTemplate.fail_fork = False
    assert spawn(spawner, 2) == ("forked", made.all[1], 2)
    assert cold == [1]


def test_out_of_descriptors_is_the_slots_to_retry_and_keeps_the_template():
    spawner, made, _clock, cold = make()
    spawn(spawner, 0)
    FakeTemplate.fork_oserror = errno.EMFILE
    with pytest.raises(OSError) as caught:
        spawn(spawner, 1)
    assert caught.value.errno == errno.EMFILE and cold == []
    FakeTemplate.fork_oserror = None
    gevent.sleep(0)
    assert spawn(spawner, 1) == ("forked", made.all[0], 1) and not made.all[0].closed


def test_close_and_the_takeover_record():
    spawner, made, _clock, _cold = make()
    assert spawner.record_entries() == []
    spawn(spawner)
    template = made.all[0]
    assert [e.pgid for e in spawner.record_entries()] == [template.pid, template.spare_pid]
    spawner.close()
    assert template.closed and spawner.record_entries() == [] and spawner.template is None
    spawn(spawner)
    assert len(made.all) == 2, "a start after a stop builds a new template"
    gevent.sleep(0)
