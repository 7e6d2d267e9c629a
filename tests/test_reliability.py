"""Nothing lost: a real Redis queue consumed by PHP workers while gsuper recycles, stops, starts,
restarts rolling, reloads (exactly once), and while workers and the master are SIGKILLed (at
least once). The counts are printed."""

import os
import random
import re
import signal
import time

import pytest

from conftest import PHP, ROOT, wait_for

pytestmark = [
    pytest.mark.timeout(240),
    pytest.mark.skipif(PHP is None, reason="php-cli is not installed"),
]

EXAMPLE = ROOT / "examples" / "php_redis"


def has_php_redis() -> bool:
    import subprocess

    return PHP is not None and "redis" in subprocess.run([PHP, "-m"], capture_output=True, text=True).stdout.split()


pytestmark.append(pytest.mark.skipif(not has_php_redis(), reason="php-redis is not installed"))


def program(name: str, port: int, extra: str, env: str = "") -> str:
    return f"""
[program:{name}]
runner       = php
handler      = App\\Jobs\\Consumer::handle
bootstrap    = {EXAMPLE}/vendor/autoload.php, {EXAMPLE}/bootstrap/app.php
directory    = {EXAMPLE}
numprocs     = 2
usleep       = 0
stop_timeout = 10
environment  = REDIS_PORT={port}, QUEUE=rel, JOB_MS=2{env}
{extra}
"""


def config(port: int, env: str = "") -> str:
    return (
        "[gsuper]\nmemory_check_interval = 0.5\n"
        + program("counted", port, "max_request = 300\nmax_request_jitter = 100", env)
        + program("leaky", port, "memory_limit = 28M", ", LEAK_KB=40")
    )


def push(client, count: int) -> list[str]:
    ids = [f"job-{i}" for i in range(count)]
    pipe = client.pipeline()
    for chunk in range(0, count, 1000):
        pipe.lpush("rel", *ids[chunk : chunk + 1000])
    pipe.execute()
    return ids


def drained(client) -> bool:
    return client.llen("rel") == 0 and not client.keys("rel:processing:*")


def test_exactly_once_through_recycles_stop_start_rolling_and_reload(gs, redis_server, capsys):
    client = redis_server
    gs.write(config(client.port))
    gs.start()
    ids = push(client, 10_000)
    done = lambda: client.llen("rel:done")  # noqa: E731

    wait_for(lambda: done() >= 1500, 60, what="1500 jobs done")
    gs.run("-s", "stop", check=True)
    stopped_at = done()
    assert client.keys("rel:processing:*") == [], "a graceful stop left a job unfinished"
    gs.start()
    wait_for(lambda: done() >= stopped_at + 1500, 60, what="1500 more jobs")
    gs.run("-s", "restart", "--rolling", check=True)
    wait_for(lambda: done() >= stopped_at + 3000, 60, what="1500 more jobs")
    gs.write(config(client.port, env=", DEPLOY=2"))
    reload = gs.run("-s", "reload", check=True)
    assert "changed counted: 2 workers replaced one at a time" in reload.stdout
    wait_for(lambda: done() >= 10_000 and drained(client), 120, "every job done", 0.1)

    finished = client.lrange("rel:done", 0, -1)
    log = gs.log()
    recycles = log.count("exited: max_request"), log.count("exited: memory_limit")
    with capsys.disabled():
        print(
            f"\nexactly-once: {len(ids)} jobs pushed, {len(finished)} done, {len(set(finished))} distinct; "
            f"recycles: {recycles[0]} by max_request, {recycles[1]} by memory_limit; "
            "stop/start, rolling restart and reload applied"
        )
    assert len(finished) == len(ids) and set(finished) == set(ids), "a job was lost or done twice"
    assert recycles[0] >= 3 and recycles[1] >= 3
    assert "FATAL" not in log and "failed start" not in log


def test_at_least_once_through_sigkills_of_workers_and_master(gs, redis_server, capsys):
    client = redis_server
    gs.write(config(client.port).replace("JOB_MS=2", "JOB_MS=3"))
    gs.start()
    ids = push(client, 5_000)
    rng = random.Random(7)
    kills = 0
    deadline = time.monotonic() + 60
    while client.llen("rel:done") < 3500 and time.monotonic() < deadline:
        live = [w["pid"] for w in gs.workers() if w["pid"] and w["state"] == "RUNNING"]
        if live and client.llen("rel:done") > 500 * (kills + 1):
            try:
                os.kill(rng.choice(live), signal.SIGKILL)
                kills += 1
            except ProcessLookupError:  # it was just being recycled
                pass
        if kills == 4:
            os.kill(gs.master_pid(), signal.SIGKILL)  # the master too: its workers drain and exit
            wait_for(lambda: not gs.running(), what="the master gone")
            gs.start()  # takes over the stale pid file
            kills += 1
        time.sleep(0.05)
    wait_for(lambda: client.llen("rel:done") >= len(ids) and drained(client), 120, "every job done", 0.1)

    finished = client.lrange("rel:done", 0, -1)
    twice = len(finished) - len(set(finished))
    with capsys.disabled():
        print(
            f"\nat-least-once: {len(ids)} jobs pushed, {len(set(finished))} distinct done, {twice} done twice, "
            f"after {kills - 1} worker SIGKILLs and 1 master SIGKILL"
        )
    assert set(finished) == set(ids), "a job was lost"
    assert twice <= kills, "more jobs ran twice than workers were killed"


def test_hung_jobs_are_ended_by_request_timeout_and_done_exactly_once(gs, redis_server, capsys):
    """Every 50th of 2,000 jobs hangs on its first attempt: request_timeout = 2 ends each hung
    worker, a fresh one recovers the job, and every job is done exactly once; no healthy worker
    is disturbed (exactly one replacement per hang)."""
    client = redis_server
    gs.write(
        "[gsuper]\n"
        + program("guarded", client.port, "request_timeout = 2")
        .replace("numprocs     = 2", "numprocs     = 4")
        .replace("JOB_MS=2", "JOB_MS=1")
    )
    gs.start()
    ids = [f"hang-once:job-{i}" if i % 50 == 49 else f"job-{i}" for i in range(2000)]
    hangs = sum(1 for i in ids if i.startswith("hang-once:"))
    client.lpush("rel", *ids)
    wait_for(lambda: client.llen("rel:done") >= len(ids) and drained(client), 150, "every job done", 0.1)

    finished = client.lrange("rel:done", 0, -1)
    rows = gs.workers("guarded")
    log = gs.log()
    kills = re.findall(r"guarded#\d \(pid \d+\): request \d+ ran (\d+\.\d+)s, over request_timeout 2s", log)
    with capsys.disabled():
        print(
            f"\nrequest_timeout: {len(ids)} jobs pushed ({hangs} hang on their first attempt), {len(finished)} done, "
            f"{len(set(finished))} distinct; {len(kills)} workers ended by request_timeout, "
            f"{sum(w['restarts'] for w in rows)} replacements"
        )
    assert len(finished) == len(ids) and set(finished) == set(ids), "a job was lost or done twice"
    assert len(kills) == hangs and all(2.0 <= float(s) < 3.0 for s in kills), kills
    assert sum(w["restarts"] for w in rows) == hangs, "a healthy worker was disturbed"
    assert all((w["last_exit"] or {}).get("reason") in (None, "request_timeout") for w in rows), rows
    assert "FATAL" not in log and "failed start" not in log and "crashed" not in log
    gs.run("-s", "stop", check=True)
