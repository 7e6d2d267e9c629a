#!/usr/bin/env python3
"""What `logdir = -` costs the master, against log files (the baseline), in the same run.

One worker (Python) waits for a "go" file, then prints `--lines` lines of 100 bytes as fast as it
can and touches a "done" file. The master runs in the foreground, its stdout sent to a file.
This script measures the master's CPU time (utime+stime from /proc/PID/stat) and the wall time
from "go" until every line is in place: in `log/w.log` for the baseline, on stdout for the
other modes. The modes are:
  - files         logdir = log (the baseline: timestamp + worker index prefix, size rotation off)
  - stdout text   logdir = -, lines prefixed `w#0 `
  - stdout json   logdir = -, log_format = json, one JSON object per line
  - unread pipe   logdir = -, stdout a pipe nobody reads: how long `gsuper -s status` takes
                  while the worker floods, against the same command with the pipe idle
                  (the master must never block on its stdout)

Usage: python3 bench/stdout_logs.py [--lines N] [--rounds N]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, Sweeper, cpu_seconds, fmt, machine_info, median, print_table, ratio, wait_until, write_results

WORKER = """
import os, sys, time
while not os.path.exists("go"):
    time.sleep(0.005)
line = b"x" * 99 + b"\\n"
out = sys.stdout.buffer
for _ in range({lines} // 100):
    out.write(line * 100)
out.flush()
open("done", "w").close()
time.sleep(1000)
"""


def config(root: Path, mode: str) -> Path:
    logdir = "log" if mode == "files" else "-"
    fmt_key = "log_format = json\n" if mode == "stdout json" else ""
    text = f"""
    [gsuper]
    logdir = {logdir}
    log_max_bytes = 0
    {fmt_key}
    [program:w]
    command = {sys.executable} worker.py
    stop_timeout = 2
    """
    path = root / "gsuper.ini"
    path.write_text(textwrap.dedent(text))
    return path


def count_lines(path: Path, marker: bytes) -> int:
    try:
        return path.read_bytes().count(marker)
    except OSError:
        return 0


def one_round(mode: str, lines: int) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="gsuper-bench-stdout-") as tmp:
        root = Path(tmp)
        (root / "worker.py").write_text(WORKER.format(lines=lines))
        cfg = config(root, mode)
        out_path = root / "stdout"
        argv = [sys.executable, BIN, "-s", "start", "--foreground", "-c", str(cfg)]
        with open(out_path, "wb") as out:
            master = subprocess.Popen(argv, stdout=out, stderr=subprocess.DEVNULL, cwd=root)
        try:
            target = root / "log" / "w.log" if mode == "files" else out_path
            # Each worker line holds 99 x's; nothing else does.
            marker = b"x" * 99
            if wait_until(lambda: (root / "run" / "gsuper.sock").exists(), 20) is None:
                raise RuntimeError("the master did not start")
            time.sleep(0.3)  # let start-up CPU settle before the first reading
            cpu0 = cpu_seconds(master.pid) or 0.0
            t0 = time.perf_counter()
            (root / "go").touch()
            seen = wait_until(lambda: count_lines(target, marker) >= lines, 120, 0.01)
            cpu1 = cpu_seconds(master.pid) or 0.0
            if seen is None:
                raise RuntimeError(f"{mode}: only {count_lines(target, marker)} of {lines} lines arrived")
            return {"cpu_s": cpu1 - cpu0, "wall_s": seen - t0}
        finally:
            master.terminate()
            master.wait(30)


def status_time(cfg: Path) -> float:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, BIN, "-s", "status", "-c", str(cfg)], capture_output=True, check=True, timeout=30)
    return time.perf_counter() - t0


def unread_pipe(lines: int, rounds: int) -> dict[str, Any]:
    """`status` latency with the master's stdout a full pipe vs idle."""
    with tempfile.TemporaryDirectory(prefix="gsuper-bench-stdout-") as tmp:
        root = Path(tmp)
        (root / "worker.py").write_text(WORKER.format(lines=lines))
        cfg = config(root, "stdout text")
        argv = [sys.executable, BIN, "-s", "start", "--foreground", "-c", str(cfg)]
        master = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=root)
        try:
            if wait_until(lambda: (root / "run" / "gsuper.sock").exists(), 20) is None:
                raise RuntimeError("the master did not start")
            idle = [status_time(cfg) for _ in range(rounds)]
            (root / "go").touch()
            wait_until(lambda: (root / "done").exists(), 120, 0.01)
            flooded = [status_time(cfg) for _ in range(rounds)]  # the pipe is full, the worker done
            return {"idle_s": idle, "full_pipe_s": flooded}
        finally:
            master.terminate()
            try:
                master.wait(30)
            finally:
                assert master.stdout is not None
                master.stdout.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    sweeper = Sweeper()
    data: dict[str, Any] = {"benchmark": "stdout_logs", "machine": machine_info(), "args": vars(args), "modes": {}}
    try:
        for mode in ("files", "stdout text", "stdout json"):
            data["modes"][mode] = [one_round(mode, args.lines) for _ in range(args.rounds)]
        pipe = unread_pipe(args.lines, 5)
        data["unread_pipe"] = pipe
    finally:
        sweeper.sweep(grace=2.0)
    mb = args.lines * 100 / 1e6
    base_cpu = median([r["cpu_s"] for r in data["modes"]["files"]])
    base_wall = median([r["wall_s"] for r in data["modes"]["files"]])
    rows = []
    for mode, runs in data["modes"].items():
        cpu = median([r["cpu_s"] for r in runs])
        wall = median([r["wall_s"] for r in runs])
        per_mb = cpu / mb if cpu is not None else None
        per = fmt(per_mb, "ms") + "/MB"
        rows.append([mode, fmt(cpu, "s"), per, ratio(cpu, base_cpu), fmt(wall, "s"), ratio(wall, base_wall)])
    print(f"{args.lines} lines of 100 bytes ({mb:.0f} MB) from one worker; median of {args.rounds} rounds")
    print_table(["mode", "master CPU", "CPU per MB", "vs files", "wall", "vs files"], rows)
    idle, full = median(pipe["idle_s"]), median(pipe["full_pipe_s"])
    print_table(
        ["gsuper -s status", "median", "vs idle"],
        [["stdout pipe idle", fmt(idle, "ms"), "1.00x"], ["stdout pipe full, unread", fmt(full, "ms"), ratio(full, idle)]],
    )
    write_results("stdout_logs", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
