#!/usr/bin/env python3
"""What watching costs: the master's CPU with 1,000 workers scraped every second, against the
same master not scraped, in the same run; and the response time of /metrics at 1,000 workers.

One master runs `numprocs` (1,000) `sleep` workers with `[gsuper] http` on. The script then
alternates windows of `--window` seconds (10): idle (no request at all), scraped (one GET
/metrics per second, as Prometheus would) and probed (one GET /healthz per second: the HTTP
server's own share), `--rounds` (2) of each, and reads the master's
utime+stime from /proc/PID/stat around each window. The difference of the two medians is the
cost of scraping, in % of one core (target: at most +1 %). Every scrape's response time and
size are recorded; after the windows, `--burst` (30) back-to-back scrapes and /status.json
requests give the response time percentiles with nothing else going on.

A scrape samples the workers' memory (one pass over /proc) at most every 5 s
(gsuper/web/server.py RSS_MAX_AGE_S); that pass is included in the scraped windows.

Usage: python3 bench/http_scrape.py [--workers N] [--window S] [--rounds R] [--burst N]
"""

from __future__ import annotations

import argparse
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
import urllib.request
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import (  # noqa: E402
    BIN,
    Sweeper,
    children,
    cpu_seconds,
    fmt,
    machine_info,
    median,
    pct,
    print_table,
    read_pidfile,
    wait_until,
    write_results,
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def fetch(url: str) -> tuple[float, int]:
    t0 = time.perf_counter()
    with urllib.request.urlopen(url, timeout=30) as res:
        body = res.read()
    return time.perf_counter() - t0, len(body)


def window(master: int, seconds: float, url: str | None) -> dict[str, Any]:
    """CPU % of one core of the master over `seconds`, scraping `url` once a second if given."""
    times: list[float] = []
    sizes: list[int] = []
    start_cpu, t0 = cpu_seconds(master), time.perf_counter()
    end = t0 + seconds
    tick = t0
    while time.perf_counter() < end:
        if url is not None:
            elapsed, size = fetch(url)
            times.append(elapsed)
            sizes.append(size)
        tick += 1.0
        time.sleep(max(0.0, min(tick, end) - time.perf_counter()))
    wall = time.perf_counter() - t0
    cpu = (cpu_seconds(master) or 0.0) - (start_cpu or 0.0)
    return {"cpu_pct": 100.0 * cpu / wall, "wall_s": wall, "scrapes": len(times), "times_s": times, "sizes": sizes}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, default=1000)
    ap.add_argument("--window", type=float, default=10.0)
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--burst", type=int, default=30)
    args = ap.parse_args()
    sweeper = Sweeper()
    tmp = Path(tempfile.mkdtemp(prefix="gsuper-bench-http-"))
    port = free_port()
    config = tmp / "gsuper.ini"
    config.write_text(textwrap.dedent(f"""
        [gsuper]
        http = 127.0.0.1:{port}
        [program:sleepers]
        command = sleep 100000
        numprocs = {args.workers}
        startsecs = 0.5
    """))
    gs = [sys.executable, BIN]
    results: dict[str, Any] = {"machine": machine_info(), "args": vars(args)}
    try:
        subprocess.run([*gs, "-s", "start", "-c", str(config)], check=True, capture_output=True, timeout=120)
        master = read_pidfile(tmp / "run" / "gsuper.pid")
        assert master is not None
        base = f"http://127.0.0.1:{port}"

        def all_running() -> bool:
            body = urllib.request.urlopen(base + "/metrics", timeout=30).read().decode()
            return f'gsuper_workers{{program="sleepers",state="RUNNING"}} {float(args.workers)}' in body

        if wait_until(all_running, 120, 0.5) is None:
            raise RuntimeError("the workers did not all reach RUNNING")
        print(f"master {master}: {len(children(master))} workers running; windows of {args.window:g} s", flush=True)
        time.sleep(2.0)  # let the start settle before the first window
        idle, scraped, probed = [], [], []
        for r in range(args.rounds):
            idle.append(window(master, args.window, None))
            scraped.append(window(master, args.window, base + "/metrics"))
            probed.append(window(master, args.window, base + "/healthz"))
            print(
                f"round {r + 1}: idle {idle[-1]['cpu_pct']:.2f} %, /metrics {scraped[-1]['cpu_pct']:.2f} %, "
                f"/healthz {probed[-1]['cpu_pct']:.2f} %",
                flush=True,
            )
        burst_metrics = [fetch(base + "/metrics") for _ in range(args.burst)]
        burst_status = [fetch(base + "/status.json") for _ in range(args.burst)]
    finally:
        subprocess.run([*gs, "-s", "stop", "-c", str(config)], capture_output=True, timeout=120)
        sweeper.sweep(grace=2.0)

    idle_pct = median([w["cpu_pct"] for w in idle]) or 0.0
    scraped_pct = median([w["cpu_pct"] for w in scraped]) or 0.0
    probed_pct = median([w["cpu_pct"] for w in probed]) or 0.0
    added = scraped_pct - idle_pct
    window_times = [t for w in scraped for t in w["times_s"]]
    mt = [t for t, _ in burst_metrics]
    st = [t for t, _ in burst_status]
    rows = [
        ["master CPU, not scraped (baseline)", f"{idle_pct:.2f} % of a core", "", ""],
        ["master CPU, /metrics every 1 s", f"{scraped_pct:.2f} % of a core", "", ""],
        ["added by scraping", f"{added:+.2f} % of a core", "<= +1 %", "yes" if added <= 1.0 else "NO"],
        ["(extra) /healthz every 1 s: the HTTP part alone", f"{probed_pct - idle_pct:+.2f} % of a core", "", ""],
        ["/metrics during the windows p50 / max", f"{fmt(median(window_times), 'ms')} / {fmt(max(window_times), 'ms')}", "", ""],
        ["/metrics back to back p50 / p99", f"{fmt(median(mt), 'ms')} / {fmt(pct(mt, 99), 'ms')}", "", ""],
        ["/metrics size", f"{burst_metrics[0][1]:,} bytes", "", ""],
        ["/status.json back to back p50 / p99", f"{fmt(median(st), 'ms')} / {fmt(pct(st, 99), 'ms')}", "", ""],
    ]
    print(f"\n{args.workers} workers, {args.rounds} rounds of {args.window:g} s idle + {args.window:g} s scraped")
    results["table"] = print_table(["row", "value", "target", "met"], rows)
    results.update(idle=idle, scraped=scraped, probed=probed, added_pct=added)
    results.update(burst_metrics=burst_metrics, burst_status=burst_status)
    write_results("http_scrape", results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
