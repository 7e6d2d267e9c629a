#!/usr/bin/env python3
"""Autoscaling by queue backlog: time to drain a bursty load, and the worker-seconds it cost.

The PHP reliable-queue consumer of examples/php_redis (BRPOPLPUSH, a job that sleeps JOB_MS)
runs under gsuper three ways, in the same run, on the same real Redis:

  - fixed 1: numprocs = 1 (the autoscaled program's minimum, and the baseline);
  - fixed 8: numprocs = 8 (its maximum);
  - autoscaled: numprocs = 1, numprocs_max = 8, scale_source = redis://.../jobs.

The load is bursty: --bursts (5) bursts of --burst-size (1000) jobs, --gap (4) seconds apart,
--job-ms (4) ms each, 5,000 jobs in all. "drain" is from the first burst being pushed to the
last job being acknowledged (`LLEN jobs:done` = 5,000, polled every 10 ms). "worker-seconds" is
the number of live PHP worker processes (children of the master, from /proc every 20 ms)
integrated over the drain. Each run also checks that every job was done exactly once.

A second part (`--no-readers` skips it) measures the two ways of reading the backlog that
issue 14 asked to compare: `LLEN` over gsuper's RESP client on a gevent socket, against
redis-py (blocking, as it would run in the unpatched master, and in gevent's thread pool, the
way to keep it from blocking the hub), and what importing redis-py costs the master.

Usage: python3 bench/autoscale.py [--bursts N] [--burst-size N] [--gap S] [--job-ms MS]
                                  [--reads N] [--no-readers]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIN,
    PHP,
    ROOT,
    Sweeper,
    children,
    exited,
    fmt,
    machine_info,
    print_table,
    ratio,
    read_pidfile,
    write_results,
)

EXAMPLE = ROOT / "examples" / "php_redis"


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def config_text(port: int, numprocs: int, numprocs_max: int, job_ms: int) -> str:
    scaling = ""
    if numprocs_max > numprocs:
        scaling = f"""
            numprocs_max = {numprocs_max}
            scale_source = redis://127.0.0.1:{port}/0/jobs
            scale_jobs_per_worker = 50
            scale_interval = 0.2
            scale_cooldown = 0.5
            scale_step   = 4
            """
    return textwrap.dedent(
        f"""
        [gsuper]
        loglevel = warning
        [program:jobs]
        runner       = php
        handler      = App\\Jobs\\Consumer::handle
        bootstrap    = {EXAMPLE}/vendor/autoload.php, {EXAMPLE}/bootstrap/app.php
        directory    = {EXAMPLE}
        numprocs     = {numprocs}
        usleep       = 0
        stop_timeout = 10
        environment  = REDIS_HOST=127.0.0.1, REDIS_PORT={port}, QUEUE=jobs, JOB_MS={job_ms}
        """
    ) + textwrap.dedent(scaling)


def workers_of(master: int) -> int:
    """Live workers: the master's children that have not exited (the php runner renames
    itself `gsuper: NAME#I`; setpriv execs php in place, so every child is a worker)."""
    return sum(1 for pid in children(master) if not exited(pid))


def one_run(label: str, client: Any, port: int, numprocs: int, numprocs_max: int, args: argparse.Namespace) -> dict[str, Any]:
    client.flushall()
    folder = Path(tempfile.mkdtemp(prefix="gsuper-bench-autoscale-"))
    cfg = folder / "gsuper.ini"
    cfg.write_text(config_text(port, numprocs, numprocs_max, args.job_ms))
    gs = [sys.executable, BIN]
    subprocess.run([*gs, "-s", "start", "-c", str(cfg)], check=True, capture_output=True, timeout=60)
    master = read_pidfile(folder / "run" / "gsuper.pid")
    assert master
    try:
        deadline = time.monotonic() + 30
        while workers_of(master) < numprocs and time.monotonic() < deadline:
            time.sleep(0.02)
        total = args.bursts * args.burst_size
        ids = [f"{label}-{i}" for i in range(total)]
        t0 = time.monotonic()
        next_burst, pushed = t0, 0
        worker_s, peak, last = 0.0, 0, t0
        while True:
            now = time.monotonic()
            if pushed < total and now >= next_burst:
                chunk = ids[pushed : pushed + args.burst_size]
                client.lpush("jobs", *chunk)
                pushed += len(chunk)
                next_burst += args.gap
            live = workers_of(master)
            worker_s += live * (now - last)
            peak = max(peak, live)
            last = now
            if pushed == total and client.llen("jobs:done") >= total:
                drain = time.monotonic() - t0
                break
            if now - t0 > args.timeout:
                raise RuntimeError(f"{label}: {client.llen('jobs:done')} of {total} jobs done after {args.timeout}s")
            time.sleep(0.01)
        done = client.lrange("jobs:done", 0, -1)
        once = len(done) == total and set(done) == set(ids)
    finally:
        subprocess.run([*gs, "-s", "stop", "-c", str(cfg)], capture_output=True, timeout=60)
        shutil.rmtree(folder, ignore_errors=True)
    row = {"label": label, "drain_s": drain, "worker_s": worker_s, "peak_workers": peak, "exactly_once": once}
    print(f"  {label}: drained in {drain:.2f} s, {worker_s:.1f} worker-seconds, peak {peak} workers", flush=True)
    return row


READERS = r"""
import json, os, sys, time
import resource
port, n = int(sys.argv[1]), int(sys.argv[2])
out = {}
def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
import gevent
from gsuper.backlog import RedisReader, RedisSource
base = rss()
t = time.perf_counter()
r = RedisReader(RedisSource("127.0.0.1", port, 0, "jobs"))
r.read(1.0)
t = time.perf_counter()
for _ in range(n):
    r.read(1.0)
out["resp_us"] = (time.perf_counter() - t) / n * 1e6
t = time.perf_counter()
import redis
out["import_redis_ms"] = (time.perf_counter() - t) * 1e3
out["import_redis_rss"] = rss() - base
c = redis.Redis(port=port)
c.llen("jobs")
t = time.perf_counter()
for _ in range(n):
    c.llen("jobs")
out["redispy_us"] = (time.perf_counter() - t) / n * 1e6
pool = gevent.get_hub().threadpool
pool.spawn(c.llen, "jobs").get()
t = time.perf_counter()
for _ in range(n):
    pool.spawn(c.llen, "jobs").get()
out["redispy_pool_us"] = (time.perf_counter() - t) / n * 1e6
print(json.dumps(out))
"""


def readers(port: int, n: int) -> dict[str, Any]:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    argv = [sys.executable, "-c", READERS, str(port), str(n)]
    proc = subprocess.run(argv, capture_output=True, text=True, env=env, timeout=120)
    if proc.returncode != 0:
        raise RuntimeError(proc.stderr)
    return json.loads(proc.stdout)  # type: ignore[no-any-return]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--bursts", type=int, default=5)
    parser.add_argument("--burst-size", type=int, default=1000)
    parser.add_argument("--gap", type=float, default=4.0)
    parser.add_argument("--job-ms", type=int, default=4)
    parser.add_argument("--reads", type=int, default=3000)
    parser.add_argument("--timeout", type=float, default=90.0)
    parser.add_argument("--no-readers", action="store_true")
    args = parser.parse_args()
    binary = shutil.which("redis-server")
    if PHP is None or binary is None:
        print("needs php (with the redis extension) and redis-server", file=sys.stderr)
        return 0
    import redis

    sweeper = Sweeper()
    port = free_port()
    folder = tempfile.mkdtemp(prefix="gsuper-bench-redis-")
    server = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", folder],
        stdout=subprocess.DEVNULL,
    )
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    try:
        client = redis.Redis(port=port, decode_responses=True)
        deadline = time.monotonic() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
        total = args.bursts * args.burst_size
        print(f"{total} jobs of {args.job_ms} ms in {args.bursts} bursts {args.gap:g} s apart", flush=True)
        runs = [
            one_run("fixed 1", client, port, 1, 1, args),
            one_run("fixed 8", client, port, 8, 8, args),
            one_run("autoscaled 1..8", client, port, 1, 8, args),
        ]
        results["runs"] = runs
        base, eight = runs[0], runs[1]
        rows = []
        for r in runs:
            rows.append(
                [
                    r["label"],
                    fmt(r["drain_s"], "s"),
                    ratio(r["drain_s"], base["drain_s"]),
                    ratio(r["drain_s"], eight["drain_s"]),
                    f"{r['worker_s']:.1f}",
                    ratio(r["worker_s"], eight["worker_s"]),
                    str(r["peak_workers"]),
                    "yes" if r["exactly_once"] else "NO",
                ]
            )
        print_table(
            ["run", "drain", "vs fixed 1", "vs fixed 8", "worker-s", "worker-s vs fixed 8", "peak", "each job once"], rows
        )
        if not args.no_readers:
            client.delete("jobs")
            client.rpush("jobs", *range(100))
            rd = readers(port, args.reads)
            results["readers"] = rd
            resp = rd["resp_us"]
            print_table(
                ["LLEN reader", "per reading", "vs RESP"],
                [
                    ["RESP on a gevent socket (gsuper.backlog)", f"{resp:.0f} us", "1.00x"],
                    ["redis-py, blocking (stalls the hub)", f"{rd['redispy_us']:.0f} us", ratio(rd["redispy_us"], resp)],
                    ["redis-py in gevent's thread pool", f"{rd['redispy_pool_us']:.0f} us", ratio(rd["redispy_pool_us"], resp)],
                ],
            )
            mib = rd["import_redis_rss"] / 2**20
            print(f"importing redis-py in the master: {rd['import_redis_ms']:.0f} ms, +{mib:.1f} MiB RSS")
        write_results("autoscale", results)
    finally:
        server.terminate()
        server.wait(10)
        shutil.rmtree(folder, ignore_errors=True)
        sweeper.sweep(grace=2.0)
    return 0


if __name__ == "__main__":
    sys.exit(main())
