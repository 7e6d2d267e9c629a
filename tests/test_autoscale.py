"""Autoscaling by queue backlog: through the real command line with a real Redis and the PHP
reliable-queue consumer of examples/php_redis; a probe command source; Redis going away and
coming back; bad input. (The decision itself: tests/test_scaling.py; sources: test_backlog.py.)"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import gevent
import pytest

from gsuper import config
from gsuper.autoscale import Autoscaler
from gsuper.events import Event
from gsuper.logs import LogFile
from gsuper.program import Program, program_row
from tests.conftest import PHP, ROOT, wait_for
from tests.test_backlog import stop_redis

EXAMPLE = ROOT / "examples" / "php_redis"
needs_php_redis = pytest.mark.skipif(
    PHP is None or "redis" not in subprocess.run([PHP or "php", "-m"], capture_output=True, text=True).stdout,
    reason="needs php with the redis extension",
)


def programs(gs: Any) -> dict[str, dict[str, Any]]:
    return {p["name"]: p for p in gs.status()["programs"]}


def wait_readings(gs: Any, name: str, more: int) -> None:
    """Wait until the scaler has tried `more` further readings (to see that nothing moves)."""
    first = programs(gs)[name]["readings"]
    wait_for(lambda: programs(gs)[name]["readings"] >= first + more, 10, f"{more} more readings")


def consumer_ini(port: int, numprocs: int, numprocs_max: int, queue: str = "q") -> str:
    return f"""
        [program:jobs]
        runner       = php
        handler      = App\\Jobs\\Consumer::handle
        bootstrap    = {EXAMPLE}/vendor/autoload.php, {EXAMPLE}/bootstrap/app.php
        directory    = {EXAMPLE}
        numprocs     = {numprocs}
        numprocs_max = {numprocs_max}
        scale_source = redis://127.0.0.1:{port}/0/{queue}
        scale_jobs_per_worker = 20
        scale_interval = 0.2
        scale_cooldown = 0.6
        scale_step   = 2
        usleep       = 0
        stop_timeout = 10
        environment  = REDIS_HOST=127.0.0.1, REDIS_PORT={port}, QUEUE={queue}, JOB_MS=20
        """


@needs_php_redis
def test_1500_jobs_scale_up_drain_and_come_back_each_done_once(gs, redis_server):
    r = redis_server
    gs.write(consumer_ini(r.port, 1, 6))
    gs.start()
    gs.wait_workers("jobs", "RUNNING", 1)
    ids = [f"job-{i}" for i in range(1500)]
    for first in range(0, len(ids), 500):
        r.lpush("q", *ids[first : first + 500])
    peak = {"workers": 0, "running": 0}

    def drained() -> bool:
        st = gs.status()
        row = st["programs"][0]
        peak["workers"] = max(peak["workers"], row["workers"])
        peak["running"] = max(peak["running"], sum(w["state"] == "RUNNING" for w in st["workers"]))
        return r.llen("q:done") == 1500

    wait_for(drained, 60, "1500 jobs done", 0.1)
    # From 1 toward numprocs_max, several consumers serving at once (how much faster than a
    # fixed count: bench/autoscale.py, measured, not asserted).
    assert peak["workers"] == 6 and peak["running"] >= 4
    done = r.lrange("q:done", 0, -1)
    assert len(done) == 1500 and set(done) == set(ids)  # every job done, none twice
    # An empty queue: back to numprocs, once the backlog has stayed low for a cooldown.
    row = wait_for(lambda: (p := programs(gs)["jobs"])["workers"] == 1 and p["draining"] == 0 and p, 20, "back to 1")
    assert row["desired"] == 1 and row["backlog"] == 0 and row["backlog_error"] is None
    rows = gs.workers("jobs")
    assert len(rows) == 1 and rows[0]["state"] == "RUNNING"
    stopped = [w for w in rows if w["last_exit"] and w["last_exit"]["reason"] not in ("stopped", None)]
    assert not stopped
    # Drained workers finished their requests: nothing is left in any processing list, and no
    # job was recovered (that would mean a worker died holding one).
    assert all(r.llen(k) == 0 for k in r.scan_iter("q:processing:*"))
    assert "recovered" not in gs.log("jobs")
    log = gs.log()
    ups = re.findall(r"jobs: scaled up from (\d+) to (\d+) workers", log)
    downs = re.findall(r"jobs: scaled down from (\d+) to (\d+) workers", log)
    assert ups and downs
    assert all(int(b) - int(a) <= 2 for a, b in ups) and all(int(a) - int(b) <= 2 for a, b in downs)  # scale_step
    table = gs.run("-s", "status", check=True).stdout
    assert re.search(r"^jobs\s+1\s+1\s+1\s+6\s+redis://127\.0\.0\.1:\d+/0/q\s+0$", table, re.M), table
    gs.run("-s", "stop", check=True)


@needs_php_redis
def test_scale_down_mid_job_finishes_the_job(gs, redis_server):
    """A worker drained while it does a long job finishes it: the job is done once, not redone."""
    r = redis_server
    gs.write(consumer_ini(r.port, 1, 3).replace("scale_jobs_per_worker = 20", "scale_jobs_per_worker = 1"))
    gs.start()
    gs.wait_workers("jobs", "RUNNING", 1)
    jobs = [f"sleep:{1500 + i}" for i in range(6)]  # 1.5 s each, two rounds for 3 workers
    r.lpush("q", *jobs)
    wait_for(lambda: programs(gs)["jobs"]["workers"] == 3, 10, "3 workers")
    wait_for(lambda: r.llen("q") == 0, 10, "every job taken")
    # The queue is empty while the second round of jobs still runs: the scale-down drains
    # workers in the middle of a job.
    wait_for(lambda: programs(gs)["jobs"]["draining"] >= 1 and r.llen("q:done") < 6, 10, "a worker draining mid-job")
    wait_for(lambda: r.llen("q:done") == 6, 15, "the six jobs done")
    wait_for(lambda: programs(gs)["jobs"]["workers"] == 1 and programs(gs)["jobs"]["draining"] == 0, 15, "back to 1")
    assert sorted(r.lrange("q:done", 0, -1)) == sorted(jobs)
    assert all(r.llen(k) == 0 for k in r.scan_iter("q:processing:*"))
    assert "recovered" not in gs.log("jobs")
    gs.run("-s", "stop", check=True)


def sleeper_ini(source: str, numprocs: int = 1, numprocs_max: int = 4, extra: str = "") -> str:
    return f"""
        [program:w]
        command      = sleep 1000
        numprocs     = {numprocs}
        numprocs_max = {numprocs_max}
        scale_source = {source}
        scale_interval = 0.1
        scale_cooldown = 0.3
        scale_step   = 4
        startsecs    = 0
        {extra}
        """


def test_probe_command_source(gs):
    depth = gs.root / "depth"
    depth.write_text("35\n")
    gs.write(sleeper_ini("command:cat depth"))
    gs.start()
    row = wait_for(lambda: (p := programs(gs)["w"])["workers"] == 4 and p, 10, "4 workers")  # ceil(35/10)
    assert row["backlog"] == 35 and row["desired"] == 4
    depth.write_text("12\n")
    wait_for(lambda: programs(gs)["w"]["workers"] == 2, 10, "2 workers")  # ceil(12/10)
    depth.write_text("0\n")
    wait_for(lambda: len(gs.workers("w")) == 1, 10, "back to 1")
    gs.run("-s", "stop", check=True)


def test_a_probe_printing_text_is_one_sentence_and_keeps_the_count(gs):
    depth = gs.root / "depth"
    depth.write_text("25\n")
    gs.write(sleeper_ini("command:cat depth"))
    gs.start()
    wait_for(lambda: programs(gs)["w"]["workers"] == 3, 10, "3 workers")
    depth.write_text("lots\n")
    row = wait_for(lambda: (p := programs(gs)["w"])["backlog_error"] and p, 10, "the error in status")
    assert row["backlog_error"] == "probe 'cat depth': printed 'lots', not one number"
    assert row["backlog"] == 25  # the last good reading, shown as such
    wait_readings(gs, "w", 5)  # readings that fail neither move the count nor log again
    assert programs(gs)["w"]["workers"] == 3
    assert gs.log().count("printed 'lots'") == 1
    table = gs.run("-s", "status", check=True).stdout
    assert "reading failed: probe 'cat depth': printed 'lots', not one number" in table
    gs.run("-s", "stop", check=True)


def test_redis_going_away_and_coming_back(gs, redis_server, tmp_path):
    r = redis_server
    port = r.port
    r.rpush("q", *range(30))
    gs.write(sleeper_ini(f"redis://127.0.0.1:{port}/0/q"))
    gs.start()
    wait_for(lambda: programs(gs)["w"]["workers"] == 3, 10, "3 workers")
    stop_redis(port)
    row = wait_for(lambda: (p := programs(gs)["w"])["backlog_error"] and p, 10, "the error in status")
    assert "cannot reach it (Connection refused)" in row["backlog_error"]
    wait_readings(gs, "w", 5)  # readings keep failing: the count stays, the log says it once
    assert programs(gs)["w"]["workers"] == 3
    assert gs.log().count("cannot read the backlog") == 1
    binary = shutil.which("redis-server")
    assert binary
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        # Back, and empty: the error clears, said once, and the count returns to numprocs.
        wait_for(lambda: programs(gs)["w"]["backlog_error"] is None, 15, "the reading to work again")
        wait_for(lambda: len(gs.workers("w")) == 1, 10, "back to 1")
        assert gs.log().count("the backlog can be read again") == 1
        gs.run("-s", "stop", check=True)
    finally:
        proc.terminate()
        proc.wait(10)


def test_scale_sets_a_temporary_floor_or_is_refused(gs):
    depth = gs.root / "depth"
    depth.write_text("0\n")
    gs.write(sleeper_ini("command:cat depth", numprocs=1, numprocs_max=5))
    gs.start()
    out = gs.run("-s", "scale", "w=3", check=True).stdout
    assert out.strip() == "w: at least 3 workers until the next reload or restart; 1 -> 3 workers"
    row = programs(gs)["w"]
    assert (row["workers"], row["floor"]) == (3, 3)
    wait_readings(gs, "w", 7)  # an empty queue for over two cooldowns: the floor holds
    assert programs(gs)["w"]["workers"] == 3
    refused = gs.run("-s", "scale", "w=9")
    assert refused.returncode == 1
    assert refused.stderr.strip().endswith(
        "w autoscales between 1 and 5 workers; scale sets its minimum, which cannot be above numprocs_max 5 (got 9)"
    )
    gs.run("-s", "reload", check=True)  # a reload ends the floor
    wait_for(lambda: len(gs.workers("w")) == 1, 10, "back to numprocs after the reload")
    assert programs(gs)["w"]["floor"] is None
    gs.run("-s", "stop", check=True)


def test_reload_changes_limits_without_restarting_workers(gs):
    depth = gs.root / "depth"
    depth.write_text("100\n")
    gs.write(sleeper_ini("command:cat depth", numprocs=1, numprocs_max=3))
    gs.start()
    wait_for(lambda: len(gs.workers("w")) == 3, 10, "3 workers")
    pids = {w["pid"] for w in gs.workers("w")}
    gs.write(sleeper_ini("command:cat depth", numprocs=1, numprocs_max=5))
    out = gs.run("-s", "reload", check=True).stdout
    assert "scaled w" in out
    wait_for(lambda: len(gs.workers("w")) == 5, 10, "5 workers under the new maximum")
    assert pids <= {w["pid"] for w in gs.workers("w")}  # the first three were not restarted
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize(
    "keys,sentence",
    [
        (
            "numprocs = 4\nnumprocs_max = 2\nscale_source = command:echo 1",
            "[program:w] numprocs_max: 2 is below numprocs 4 (numprocs is the least number of workers, numprocs_max the most)",
        ),
        (
            "numprocs_max = 4\nscale_source = redis://127.0.0.1:6379/jobs",
            "[program:w] scale_source: 'redis://127.0.0.1:6379/jobs': the path must be /DB/KEY with DB a number, "
            "like redis://127.0.0.1:6379/0/jobs",
        ),
        (
            "numprocs_max = 4\nscale_source = rabbit://q",
            "[program:w] scale_source: 'rabbit://q' is not a backlog source (use redis://HOST:PORT/DB/KEY or command:CMD)",
        ),
        ("numprocs_max = 4", "[program:w] scale_source: required when numprocs_max (4) is above numprocs (1)"),
        (
            "numprocs_max = 4\nscale_source = command:echo 1\nscale_step = 0",
            '[program:w] scale_step: the value "0" is too small',
        ),
    ],
)
def test_bad_input_is_one_sentence_exit_2(gs, keys, sentence):
    gs.write("[program:w]\ncommand = sleep 1000\n" + keys + "\n")
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    assert proc.stderr.strip() == f"gsuper: {gs.config}: {sentence}"
    assert "Traceback" not in proc.stderr


def test_defaults(tmp_path):
    path = tmp_path / "gsuper.ini"
    path.write_text(
        "[program:a]\ncommand = sleep 1\n"
        "[program:b]\ncommand = sleep 1\nnumprocs = 2\nnumprocs_max = 6\nscale_source = command:echo 0\n"
    )
    cfg = config.load(str(path))
    a, b = cfg.programs["a"], cfg.programs["b"]
    assert (a.numprocs_max, a.scale_source, a.autoscaled) == (1, None, False)
    assert (b.numprocs_max, b.autoscaled, b.scale_jobs_per_worker) == (6, True, 10)
    assert (b.scale_interval_s, b.scale_cooldown_s, b.scale_step) == (1.0, 3.0, 1)


# -- in-process: the scaler over a real Program, with a fake clock and the event stream --------


def gwait(condition: Any, timeout: float, what: str) -> None:
    """wait_for in the test's own hub: the Program's greenlets run while it waits."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout}s waiting for {what}")
        gevent.sleep(0.02)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_scaled_events_and_non_blocking_drain(tmp_path):
    depth = tmp_path / "depth"
    depth.write_text("30\n")
    # TERM is ignored by the workers: a drain lasts until stop_timeout (2 s) ends it with SIGKILL.
    # The scaler must neither wait for it nor count the drainer as capacity.
    path = tmp_path / "gsuper.ini"
    path.write_text(
        f"[program:w]\ncommand = sh -c 'trap \"\" TERM; : > {tmp_path}/ready.$$; while :; do sleep 0.05; done'\n"
        "numprocs = 1\nnumprocs_max = 4\nscale_source = command:cat depth\nscale_cooldown = 5\nscale_step = 2\n"
        "stop_timeout = 2\nstartsecs = 0\n"
    )
    pcfg = config.load(str(path)).programs["w"]
    program = Program(pcfg, LogFile(str(tmp_path / "w.log"), 1 << 20, 0))
    events: list[Event] = []
    clock = Clock()
    scaler = Autoscaler(program, events.append, clock=clock)
    program.start()
    try:
        scaler.tick()  # 30 -> 3 wanted, step 2: 1 -> 3
        assert len(program.serving) == 3
        assert [(e.kind, e.reason, e.data) for e in events] == [
            ("scaled", "backlog", {"before": 1, "after": 3, "direction": "up", "backlog": 30})
        ]
        # A worker killed by TERM before its shell ran the trap would skip STOPPING: wait for all three.
        gwait(lambda: len(list(tmp_path.glob("ready.*"))) == 3, 10, "three workers to ignore TERM")
        depth.write_text("0\n")
        clock.now += 1
        assert scaler.tick().reason == "low"  # type: ignore[union-attr]
        clock.now += 5
        decision = scaler.tick()
        assert decision is not None and decision.direction == "down"
        assert len(program.serving) == 1 and len(program.draining) == 2
        drainers = list(program.draining)
        gwait(lambda: all(w.state.value == "STOPPING" for w in drainers), 5, "the drain to begin")
        assert all(w.proc is not None and w.proc.returncode is None for w in drainers)  # still finishing
        assert events[-1].data == {"before": 3, "after": 1, "direction": "down", "backlog": 0}
        # Draining workers do not block the next decision: more backlog, and up it goes at once
        # (after the cooldown), while the two still drain.
        depth.write_text("40\n")
        clock.now += 5
        scaler.tick()
        assert len(program.serving) == 3 and len(program.draining) == 2
        indexes = [w.index for w in program.workers]
        assert len(indexes) == len(set(indexes))  # no two live slots share GSUPER_WORKER
        gwait(lambda: not program.draining, 10, "the drainers to be gone")
        assert len(program.workers) == 3
    finally:
        scaler.close()
        program.stop(timeout_s=0.5)
    assert not program.workers or all(w.state.value == "STOPPED" for w in program.workers)


def test_docs_name_every_key():
    text = (ROOT / "docs" / "operations.md").read_text()
    for key in config.SCALING_FIELDS:
        name = key.removesuffix("_s")
        assert f"`{name}`" in text, name
    assert Path(ROOT / "bench" / "autoscale.py").exists()


# -- fast tier: the monitor's backlog check over a Program of scripted children ---------------


class FakeReader:
    """Readings from a list: a number, or a BacklogError to raise."""

    def __init__(self, *values: Any) -> None:
        self.values = list(values)

    def read(self, timeout_s: float) -> int:
        value = self.values.pop(0) if len(self.values) > 1 else self.values[0]
        if isinstance(value, Exception):
            raise value
        return int(value)

    def close(self) -> None:
        pass


def test_the_monitor_drives_the_backlog_check_with_scripted_workers():
    from fakes import FakeClock, FakeSpawner, NullLog, program_config
    from gsuper.autoscale import BacklogCheck
    from gsuper.backlog import BacklogError
    from gsuper.events import EventStream
    from gsuper.monitor import Monitor

    clock = FakeClock()
    cfg = program_config(
        name="q", numprocs=1, numprocs_max=5, scale_source="command:true", scale_jobs_per_worker=10,
        scale_interval_s=1.0, scale_cooldown_s=2.0, scale_step=2,
    )  # fmt: skip
    events = EventStream()
    seen: list[Event] = []
    events.subscribe(seen.append)
    program = Program(cfg, NullLog(), events, FakeSpawner(clock), clock)  # type: ignore[arg-type]
    check = BacklogCheck()
    # The workers' clock moves on by itself (each timed wait of a scripted child advances it);
    # the monitor and the scaler get their own, moved only by step().
    now = [0.0]
    monitor = Monitor(lambda: [program], lambda: 5.0, lambda: now[0])
    monitor.add(check)
    program.start()
    scaler = check.scaler_for(program)
    scaler.clock = lambda: now[0]
    scaler._reader, scaler._source = FakeReader(45, 45, 45, BacklogError("redis x: cannot reach it"), 0), cfg.scale_source

    def step(dt: float) -> None:
        now[0] += dt
        monitor.tick(now[0])
        gevent.sleep(0.01)  # the reading runs in its own greenlet

    monitor.tick(now[0])  # first seen: due one interval later
    step(1.0)
    assert len(program.serving) == 3  # 45 wants 5; step 2
    assert [(e.reason, e.data["before"], e.data["after"], e.data["direction"]) for e in seen if e.kind == "scaled"] == [
        ("backlog", 1, 3, "up")
    ]
    step(1.0)
    assert len(program.serving) == 3  # cooldown
    step(1.0)
    assert len(program.serving) == 5
    step(1.0)  # the reading fails: the count stays, the error is kept for status
    assert len(program.serving) == 5 and scaler.error == "redis x: cannot reach it" and scaler.backlog == 45
    row = program_row(program, scaler)
    assert (row["desired"], row["numprocs"], row["numprocs_max"], row["backlog"]) == (5, 1, 5, 45)
    for _ in range(3):
        step(1.0)  # 0: low for a cooldown, then down by 2
    assert len(program.serving) == 3 and scaler.error is None
    scaled = [e for e in seen if e.kind == "scaled"]
    assert scaled[-1].data == {"before": 5, "after": 3, "direction": "down", "backlog": 0}
    gevent.sleep(0.01)
    assert len(program.workers) == 3  # the drained ones are gone (scripted children stop at once)
    reply = scaler.set_floor(4)
    assert reply == {"ok": True, "program": "q", "before": 3, "after": 4, "floor": 4}
    assert [e for e in seen if e.kind == "scaled"][-1].reason == "scale"
    assert not scaler.set_floor(6)["ok"]
    check.close()
    program.stop()


def test_a_scale_down_drains_idle_workers_first_when_the_runner_tells(monkeypatch):
    """With issue 11's busy stamp (Worker.busy), idle workers go before busy ones, whatever
    their index; without it, the highest indexes go (tests/test_scaling.py)."""
    from types import SimpleNamespace

    import gsuper.autoscale as autoscale
    from fakes import FakeClock, FakeSpawner, NullLog, program_config

    clock = FakeClock()
    cfg = program_config(name="q", numprocs=1, numprocs_max=4, scale_source="command:true", scale_step=2)
    program = Program(cfg, NullLog(), None, FakeSpawner(clock), clock)  # type: ignore[arg-type]
    program.start()
    program.grow(3)
    busy = {0: 5.0, 1: None, 2: 7.0, 3: 9.0}  # worker 1 idle; 0, 2, 3 in a request since then
    for w in program.workers:
        since = busy[w.index]
        w.busy = (lambda s: lambda now_ns: None if s is None else SimpleNamespace(since_ns=int(s * 1e9)))(since)  # type: ignore[attr-defined]
    monkeypatch.setattr(autoscale, "_has_busy_page", lambda w: True)
    assert autoscale.busy_since(program.workers[1], 0) == 0.0 and autoscale.busy_since(program.workers[2], 0) == 7.0
    scaler = Autoscaler(program)
    scaler.apply(desired_down(2), "backlog")
    assert sorted(w.index for w in program.draining) == [1, 3]  # the idle one, then the highest busy
    gevent.sleep(0.01)
    program.stop()


def desired_down(count: int) -> Any:
    from gsuper.scaling import Decision, History

    return Decision(count, count, "down", History(), "backlog")


def test_check_expands_every_worker_up_to_numprocs_max(gs):
    for i in (0, 1):
        (gs.root / f"w{i}").mkdir()
    gs.write(
        """
        [program:w]
        command      = sleep 1000
        directory    = %(here)s/w%(process_num)d
        numprocs     = 1
        numprocs_max = 3
        scale_source = command:echo 0
        """
    )
    proc = gs.run("-s", "check")
    assert proc.returncode == 2 and f"directory: no such folder {gs.root}/w2" in proc.stderr
