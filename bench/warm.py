#!/usr/bin/env python3
"""Warm PHP workers (`warm = true`) against cold ones, in the same run.

1. Respawn: kill -9 to the replacement's first request. A program of 4 workers whose bootstrap
   takes 300 ms (usleep) and builds a 500,000-element array (a stand-in for a framework's
   compiled container and config); its handler stamps hrtime(true) (CLOCK_MONOTONIC) into
   marks/PID at the first request of each life. The script kills one worker at a time with
   SIGKILL (rotating, so that every victim has been up over 1 s and the restart policy
   respawns it at once) and reads the replacement's stamp: kill to first request, p50/p99.
   With --laravel, the same with the Laravel bridge (examples/laravel/) on a real redis-server:
   the first request is the first job the replacement runs.
2. Memory: 20 workers of the same program; the sum of their PSS (/proc/PID/smaps_rollup, the
   `pss_bytes` of status), plus the template's, warm against cold.

With --compare REV (e.g. main) the warm respawns are also measured with gsuper at that git
revision (a detached worktree), in alternating blocks with this checkout's, in the same run.

Target (issue 15): warm p99 under 5 ms.

Usage: python3 bench/warm.py [--rounds N] [--laravel] [--compare REV]
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from _common import BIN, PHP, ROOT, Sweeper, fmt, pct, print_table, ratio, write_results  # noqa: E402

from gsuper import pss  # noqa: E402

BOOT = """\
<?php
usleep(300000);
$GLOBALS['framework'] = range(1, 500000);
final class Job
{
    private static bool $first = true;

    public static function run(): void
    {
        if (self::$first) {
            self::$first = false;
            file_put_contents(__DIR__ . '/marks/' . getmypid(), (string) hrtime(true));
        }
        usleep(2000);
    }
}
"""


# redis-server rewrites its title over its environment, so the sweeper cannot see its token:
# the servers are ended here, by their Popen.
REDIS: list[subprocess.Popen[bytes]] = []


BINS: dict[Path, str] = {}  # a root run by another revision's bin/gsuper (--compare)


def gsuper(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, BINS.get(root, BIN), *args, "-c", str(root / "gsuper.ini")]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        raise RuntimeError(f"gsuper {' '.join(args)}: {proc.stderr}{proc.stdout}")
    return proc


def status(root: Path) -> list[dict[str, Any]]:
    return json.loads(gsuper(root, "-s", "status", "--json").stdout)["workers"]  # type: ignore[no-any-return]


def wait(cond: Any, timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = cond()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.002)


def setup(root: Path, warm: bool, numprocs: int, program: str) -> None:
    (root / "marks").mkdir(parents=True, exist_ok=True)
    (root / "gsuper.ini").write_text(
        textwrap.dedent(f"""
        [gsuper]
        rundir = run
        logdir = log
        [program:bench]
        {program}
        warm = {"true" if warm else "false"}
        numprocs = {numprocs}
        usleep = 1000
        stop_timeout = 5
        """)
    )


def respawns(root: Path, rounds: int) -> list[float]:
    """kill -9 to first request of the replacement, in seconds, `rounds` times."""
    gsuper(root, "-s", "start")
    try:
        rows = wait(
            lambda: (
                [r for r in status(root) if r["state"] == "RUNNING"]
                if all(r["state"] == "RUNNING" for r in status(root))
                else None
            ),
            60,
            "workers running",
        )
        marks = root / "marks"
        wait(lambda: len(list(marks.iterdir())) >= len(rows), 60, "first requests")
        time.sleep(1.1)  # every worker up for over 1 s: a kill -9 is respawned at once
        pids = {r["index"]: r["pid"] for r in status(root)}
        results = []
        for n in range(rounds):
            index = n % len(pids)
            victim = pids[index]
            seen = {p.name for p in marks.iterdir()}
            t0 = time.monotonic_ns()
            os.kill(victim, signal.SIGKILL)
            fresh = wait(lambda seen=seen: {p.name for p in marks.iterdir()} - seen, 30, "the replacement's first request")
            new = fresh.pop()
            stamp = wait(lambda new=new: (marks / new).read_text().strip(), 5, "the stamp")
            results.append((int(stamp) - t0) / 1e9)
            pids[index] = int(new)
            time.sleep(max(0.0, 1.1 / len(pids)))  # the next victim has been up over 1 s
        return results
    finally:
        gsuper(root, "-s", "stop", check=False)


def total_pss(root: Path) -> tuple[int, int]:
    """(sum of the workers' PSS, the template's PSS) with 20 workers up and serving."""
    gsuper(root, "-s", "start")
    try:
        wait(lambda: all(r["state"] == "RUNNING" and r["requests"] > 0 for r in status(root)), 60, "20 workers serving")
        rows = status(root)
        workers = sum(r["pss_bytes"] or 0 for r in rows)
        template = rows[0].get("template_pid")
        return workers, (pss.tree_pss(template) or 0) if template else 0
    finally:
        gsuper(root, "-s", "stop", check=False)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=25)
    parser.add_argument("--laravel", action="store_true", help="also the Laravel bridge on a real redis-server")
    parser.add_argument("--compare", metavar="REV", help="also warm respawns with gsuper at this git revision")
    args = parser.parse_args()
    if PHP is None:
        print("php is not installed: nothing to measure")
        return 0
    sweeper = Sweeper()
    base = Path(tempfile.mkdtemp(prefix="gsuper-bench-warm-"))
    data: dict[str, Any] = {"rounds": args.rounds}
    try:
        scenarios = [("bootstrap 300 ms", "boot")]
        if args.laravel:
            scenarios.append(("laravel bridge", "laravel"))
        rows = []
        other = checkout(args.compare, base / "compare") if args.compare else None
        for title, kind in scenarios:
            times: dict[str, list[float]] = {}
            runs = [("cold", False, None), ("warm", True, None)]
            if other is not None:  # alternating halves, so that a change of load hits both alike
                half = [("warm", True, None), ("rev", True, other)]
                runs = [("cold", False, None), *half, *half]
            for n, (key, warm, tree) in enumerate(runs):
                root = base / f"{kind}-{key}-{n}"
                root.mkdir()
                if tree is not None:
                    BINS[root] = str(tree / "bin" / "gsuper")
                program = prepare(root, kind, tree or ROOT)
                setup(root, warm, 4, program)
                count = args.rounds if other is None or key == "cold" else (args.rounds + 1) // 2
                times.setdefault(key, []).extend(respawns(root, count))
            data[kind] = times
            cold, warm_ = times["cold"], times["warm"]
            for p in (50, 99):
                c, w = pct(cold, p), pct(warm_, p)
                row = [title, f"p{p}", fmt(c, "ms"), fmt(w, "ms"), ratio(c, w)]
                if other is not None:
                    row[4:4] = [fmt(pct(times["rev"], p), "ms")]
                rows.append(row)
            met = (pct(warm_, 99) or 1.0) < 0.005
            rows[-1].append("yes" if met else "no")
            rows[-2].append("")
        print(f"kill -9 to the replacement's first request ({args.rounds} kills each, 4 workers)")
        headers = ["program", "", "cold", "warm", "cold/warm", "warm p99 < 5 ms"]
        if other is not None:
            headers[4:4] = [f"warm @{args.compare}"]
        print_table(headers, rows)
        mem = {}
        for warm in (False, True):
            root = base / f"pss-{'warm' if warm else 'cold'}"
            root.mkdir()
            setup(root, warm, 20, prepare(root, "boot"))
            mem["warm" if warm else "cold"] = total_pss(root)
        data["pss"] = mem
        mib = 1024 * 1024
        cold_total = mem["cold"][0] + mem["cold"][1]
        warm_total = mem["warm"][0] + mem["warm"][1]
        print()
        print("total PSS of 20 workers (bootstrap: a 500,000-element array)")
        print_table(
            ["", "workers", "template", "total", "per worker"],
            [
                ["cold", f"{mem['cold'][0] / mib:.1f} MiB", "-", f"{cold_total / mib:.1f} MiB",
                 f"{cold_total / 20 / mib:.2f} MiB"],
                ["warm", f"{mem['warm'][0] / mib:.1f} MiB", f"{mem['warm'][1] / mib:.1f} MiB", f"{warm_total / mib:.1f} MiB",
                 f"{warm_total / 20 / mib:.2f} MiB"],
                ["cold/warm", "", "", ratio(cold_total, warm_total), ""],
            ],
        )  # fmt: skip
        print(f"results: {write_results('warm', data)}")
    finally:
        for server in REDIS:
            server.terminate()
            server.wait(10)
        sweeper.sweep(grace=2.0)
        if (base / "compare").exists():
            subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(base / "compare")], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
    return 0


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of this repository at `rev` (as bench/supervise.py makes one)."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True, capture_output=True)
    compileall.compile_dir(str(into / "gsuper"), quiet=1)
    return into


def prepare(root: Path, kind: str, tree: Path = ROOT) -> str:
    """Write the program's files into root; return its [program:] keys (`tree`: whose
    examples/laravel/ to run)."""
    if kind == "boot":
        (root / "boot.php").write_text(BOOT)
        return "runner = php\nhandler = Job::run\nbootstrap = boot.php"
    return laravel_program(root, tree)


def laravel_program(root: Path, tree: Path = ROOT) -> str:
    """The Laravel bridge of examples/laravel/, on a redis-server started for this run."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    REDIS.append(subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=root,
    ))  # fmt: skip
    import redis  # type: ignore[import-not-found]

    client = redis.Redis(port=port)
    wait(lambda: _ping(client), 10, "redis-server")
    example = tree / "examples" / "laravel"
    (root / "marks").mkdir(exist_ok=True)
    # Jobs keep the queue busy: each one stamps its worker's first job (examples/laravel/app/Jobs/Stamp.php).
    env = f"REDIS_PORT={port}, STAMP_DIR={root / 'marks'}, QUEUE_CONNECTION=redis"
    push = [PHP or "php", str(example / "push.php"), "60000"]
    subprocess.run(push, check=True, env={**os.environ, "REDIS_PORT": str(port)})
    return (
        f"runner = php\nhandler = Gsuper\\Laravel\\Bridge::run\ndirectory = {example}\n"
        f"bootstrap = {example / 'bootstrap.php'}\nafter_fork = {example / 'after_fork.php'}\nenvironment = {env}"
    )


def _ping(client: Any) -> bool:
    try:
        return bool(client.ping())
    except Exception:  # noqa: BLE001 - not up yet
        return False


if __name__ == "__main__":
    raise SystemExit(main())
