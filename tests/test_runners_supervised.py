"""The request-loop runners under the real master: max_request, memory_limit, usleep, graceful
stop, bootstrap hooks, failing bootstraps, exec loop mode. Each test runs for PHP and Python."""

import collections
import os
import signal
import time

import psutil
import pytest

from conftest import PHP, ROOT, wait_for

pytestmark = pytest.mark.timeout(90)

RUNNERS = [
    pytest.param("php", marks=pytest.mark.skipif(PHP is None or not (ROOT / "runners/php/worker.php").exists(), reason="no php")),
    "python",
]

# Per-request business code writing "pid" lines, and a bootstrap writing one line per load.
REQUEST = {
    "php": "<?php\nfile_put_contents(__DIR__ . '/reqs.txt', getmypid() . \"\\n\", FILE_APPEND | LOCK_EX);\n",
    "python": "import os\nwith open('reqs.txt', 'a') as fh:\n    fh.write(f'{os.getpid()}\\n')\n",
}
BOOT = {
    "php": "<?php\nfile_put_contents(__DIR__ . '/boots.txt', getmypid() . \"\\n\", FILE_APPEND | LOCK_EX);\n",
    "python": "import os\nwith open('boots.txt', 'a') as fh:\n    fh.write(f'{os.getpid()}\\n')\n",
}
EXT = {"php": "php", "python": "py"}


def lines(path):
    return path.read_text().split() if path.exists() else []


@pytest.mark.parametrize("runner", RUNNERS)
def test_max_request_exact_per_life_and_bootstrap_once(gs, runner):
    ext = EXT[runner]
    gs.file(f"req.{ext}", REQUEST[runner])
    gs.file(f"boot.{ext}", BOOT[runner])
    gs.write(f"""
    [program:counted]
    runner = {runner}
    script = req.{ext}
    bootstrap = boot.{ext}
    max_request = 7
    usleep = 1000
    numprocs = 2
    """)
    gs.start()
    reqs = gs.root / "reqs.txt"
    wait_for(lambda: len(set(lines(gs.root / "boots.txt"))) >= 6, 30, what="six worker lives")
    gs.run("-s", "stop", check=True)
    per_pid = collections.Counter(lines(reqs))
    boots = collections.Counter(lines(gs.root / "boots.txt"))
    assert all(n == 1 for n in boots.values()), "a bootstrap ran more than once in one life"
    finished = [pid for pid in boots if per_pid[pid] == 7]
    assert len(finished) >= 4
    assert all(per_pid[pid] <= 7 for pid in boots), per_pid
    log = gs.log()
    assert "exited: max_request, code 0" in log and "FATAL" not in log and "failed start" not in log


@pytest.mark.parametrize("runner", RUNNERS)
def test_status_reports_requests_and_recycle_reason(gs, runner):
    ext = EXT[runner]
    gs.file(f"req.{ext}", REQUEST[runner])
    gs.write(f"""
    [program:counted]
    runner = {runner}
    script = req.{ext}
    max_request = 50
    usleep = 20000
    """)
    gs.start()
    row = wait_for(lambda: [w for w in gs.workers("counted") if w["last_exit"] and w["requests"] > 0], 30, what="a recycle")[0]
    assert row["last_exit"] == {"reason": "max_request", "code": 0}
    assert row["restarts"] >= 1 and row["state"] in ("STARTING", "RUNNING")


LEAK = {
    "php": "<?php\n$GLOBALS['hog'][] = str_repeat('x', 2 * 1024 * 1024);\nusleep(20000);\n",
    "python": "import builtins, time\n"
    "builtins.__dict__.setdefault('hog', []).append(bytearray(2 * 1024 * 1024))\ntime.sleep(0.02)\n",
}


@pytest.mark.parametrize("runner", RUNNERS)
def test_memory_limit_replaces_a_leaking_worker(gs, runner):
    ext = EXT[runner]
    gs.file(f"leak.{ext}", LEAK[runner])
    gs.write(f"""
    [program:leaky]
    runner = {runner}
    script = leak.{ext}
    memory_limit = 60M
    """)
    gs.start()
    first = wait_for(lambda: gs.workers("leaky")[0]["pid"], what="a first worker")
    row = wait_for(
        lambda: [w for w in gs.workers("leaky") if w["pid"] not in (None, first) and w["last_exit"]], 30, what="a replacement"
    )[0]
    assert row["last_exit"] == {"reason": "memory_limit", "code": 0}
    assert "FATAL" not in gs.log()


# A process that grows by 4 MiB every 50 ms, touching each page (so that it is resident).
HOG = """
import time
hog = []
while True:
    hog.append(bytearray(4 * 1024 * 1024))
    for chunk in hog[-1:]:
        chunk[::4096] = b"x" * len(chunk[::4096])
    time.sleep(0.05)
"""


def test_master_replaces_an_exec_worker_over_memory_limit(gs):
    gs.file("hog.py", HOG)
    gs.write(f"""
    [program:hog]
    command = {os.sys.executable} hog.py
    memory_limit = 50M
    memory_check_interval = 0.2
    stop_timeout = 2
    """)
    gs.start()
    first = wait_for(lambda: gs.workers("hog")[0]["pid"], what="a first worker")
    row = wait_for(lambda: [w for w in gs.workers("hog") if w["pid"] not in (None, first)], 30, what="a replacement")[0]
    assert row["last_exit"]["reason"] == "memory_limit"
    assert "over memory_limit" in gs.log()


def test_master_counts_a_workers_children_against_memory_limit(gs):
    """The memory held by a worker's child (here sh's, which grows) counts: the tree is sampled."""
    gs.file("hog.py", HOG)
    gs.write(f"""
    [program:tree]
    command = sh -c "{os.sys.executable} hog.py; true"
    memory_limit = 50M
    memory_check_interval = 0.2
    stop_timeout = 2
    """)
    gs.start()
    first = wait_for(lambda: gs.workers("tree")[0]["pid"], what="a first worker")
    row = wait_for(lambda: [w for w in gs.workers("tree") if w["pid"] not in (None, first)], 30, what="a replacement")[0]
    assert row["last_exit"]["reason"] == "memory_limit"
    assert f"tree#0 (pid {first}) uses" in gs.log()


EMPTY = {"php": "<?php\n", "python": "pass\n"}


@pytest.mark.timing
@pytest.mark.parametrize("runner", RUNNERS)
def test_usleep_keeps_a_loop_that_never_sleeps_off_the_cpu(gs, runner):
    ext = EXT[runner]
    gs.file(f"empty.{ext}", EMPTY[runner])
    gs.write(f"""
    [program:spin]
    runner = {runner}
    script = empty.{ext}
    usleep = 2000
    """)
    gs.start()
    pid = gs.wait_workers("spin", "RUNNING")[0]["pid"]
    proc = psutil.Process(pid)
    wait_for(lambda: gs.workers("spin")[0]["requests"] > 50, what="requests")
    before, t0 = sum(proc.cpu_times()[:2]), time.monotonic()
    wait_for(lambda: time.monotonic() - t0 >= 1.5, what="a measuring window")
    used = (sum(proc.cpu_times()[:2]) - before) / (time.monotonic() - t0)
    assert used < 0.5, f"{runner} worker used {used:.0%} of a core"
    assert gs.workers("spin")[0]["requests"] > 200


SLOW = {
    "php": "<?php\n$id = getmypid() . '-' . microtime(true);\n"
    "file_put_contents(__DIR__ . '/begun.txt', \"$id\\n\", FILE_APPEND | LOCK_EX);\n"
    "$t = microtime(true); while (microtime(true) - $t < 2) { usleep(10000); }\n"
    "file_put_contents(__DIR__ . '/done.txt', \"$id\\n\", FILE_APPEND | LOCK_EX);\n",
    "python": "import os, time\nrid = f'{os.getpid()}-{time.time()}'\nopen('begun.txt', 'a').write(rid + '\\n')\n"
    "time.sleep(2)\nopen('done.txt', 'a').write(rid + '\\n')\n",
}


@pytest.mark.parametrize("runner", RUNNERS)
def test_graceful_stop_completes_the_request_in_progress(gs, runner):
    ext = EXT[runner]
    gs.file(f"slow.{ext}", SLOW[runner])
    gs.write(f"""
    [program:slow]
    runner = {runner}
    script = slow.{ext}
    numprocs = 2
    """)
    gs.start()
    wait_for(lambda: len(lines(gs.root / "begun.txt")) >= 2, 15, what="requests in progress")
    gs.run("-s", "stop", check=True)
    assert sorted(lines(gs.root / "begun.txt")) == sorted(lines(gs.root / "done.txt"))
    assert gs.log().count("exited: stopped, code 0") == 2


BAD_BOOT = {"php": "<?php\nthrow new RuntimeException('no database');\n", "python": "raise RuntimeError('no database')\n"}


@pytest.mark.parametrize("runner", RUNNERS)
def test_failing_bootstrap_ends_in_fatal(gs, runner):
    ext = EXT[runner]
    gs.file(f"req.{ext}", REQUEST[runner])
    gs.file(f"boot.{ext}", BAD_BOOT[runner])
    gs.write(f"""
    [program:broken]
    runner = {runner}
    script = req.{ext}
    bootstrap = boot.{ext}
    startretries = 2
    """)
    gs.start()
    row = gs.wait_workers("broken", "FATAL", timeout=20)[0]
    assert row["restarts"] == 2 and row["last_exit"]["code"] == 78
    assert "bootstrap" in (row["last_error"] or "")
    assert "no database" in gs.log("broken")
    assert not (gs.root / "reqs.txt").exists()


def test_exec_loop_mode_counts_each_run_as_a_request(gs):
    gs.file("once.sh", "echo run >> runs.txt\n")
    gs.write("""
    [program:cron]
    command = sh once.sh
    mode = loop
    usleep = 50000
    """)
    gs.start()
    wait_for(lambda: gs.workers("cron")[0]["requests"] >= 10, 20, what="ten runs")
    row = gs.workers("cron")[0]
    assert row["state"] != "FATAL" and row["last_exit"] == {"reason": "exited", "code": 0}
    assert row["restarts"] == 0  # each run is a request, not a restart
    gs.run("-s", "stop", check=True)
    assert len(lines(gs.root / "runs.txt")) >= 10


def test_worker_sees_its_identity_and_the_term_signal(gs):
    gs.file("who.py", "import os\nopen(f'who-{os.environ[\"GSUPER_WORKER\"]}.txt', 'w').write(os.environ['GSUPER_PROGRAM'])\n")
    gs.write("""
    [program:who]
    runner = python
    script = who.py
    numprocs = 2
    """)
    gs.start()
    def written(name):
        path = gs.root / name
        return path.exists() and path.read_text() == "who"  # created, then written: wait for both

    wait_for(lambda: written("who-0.txt") and written("who-1.txt"), what="both workers")
    pid = gs.workers("who")[0]["pid"]
    os.kill(pid, signal.SIGTERM)  # TERM from outside: a clean exit, then a fresh worker
    row = wait_for(lambda: [w for w in gs.workers("who") if w["index"] == 0 and w["pid"] not in (None, pid)], what="a respawn")[0]
    assert row["last_exit"]["code"] == 0
