#!/usr/bin/env python3
"""How fast the command line answers: `status` against Python's own start (issue 16, item 3).

In one run, for this checkout and for gsuper at --baseline-ref (default main; a detached git
worktree in a temporary folder), each with its own master:
  - `python -c pass` (the floor: the same interpreter, starting and doing nothing);
  - `bin/gsuper --version`;
  - `bin/gsuper -s status` against a master with 10 `sleep` workers;
  - `bin/gsuper -s status --json` against a master with --big (1000) `sleep` workers and
    `memory_limit = 512M` (so that it samples every worker tree each second), with `--version`
    measured again beside it.
Each command runs --runs (15) times, interleaved with the others (so load that comes and goes
falls on all of them alike); the median is reported. Children run without
PYTHONDONTWRITEBYTECODE, from compiled .pyc files, as an installed gsuper does.
Targets: status (10 workers) <= 2 x `python -c pass`; status --json (1000) <= 1.3 x --version.

Usage: python3 bench/cli_start.py [--runs N] [--big N] [--baseline-ref REF]
"""

from __future__ import annotations

import argparse
import compileall
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import BIN, ROOT, Sweeper, fmt, machine_info, median, print_table, ratio, wait_until, write_results  # noqa: E402

CONFIG = """\
[gsuper]
rundir = run
logdir = log

[program:sleeper]
command = sleep 100000
numprocs = {n}
{extra}"""


def log(msg: str) -> None:
    print(f"[cli_start] {msg}", file=sys.stderr, flush=True)


def timed(argv: list[str]) -> float:
    """Wall time of one run. Not subprocess.run(timeout=): with a timeout, wait() polls with
    sleeps of up to 50 ms, and every time comes out a multiple of about 50 ms."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    watchdog = threading.Timer(60, proc.kill)
    watchdog.start()
    try:
        proc.wait()  # a blocking waitpid: returns when the child exits
    finally:
        watchdog.cancel()
    return time.perf_counter() - t0


class Master:
    """A gsuper configuration in its own folder, driven through one checkout's bin/gsuper."""

    def __init__(self, d: Path, bin_path: str, workers: int, extra: str = "") -> None:
        self.dir, self.bin, self.workers = d, bin_path, workers
        d.mkdir(parents=True)
        self.config = d / "gsuper.ini"
        self.config.write_text(CONFIG.format(n=workers, extra=extra))

    def cli(self, *args: str) -> list[str]:
        return [sys.executable, self.bin, *args, "-c", str(self.config)]

    def start(self) -> None:
        subprocess.run(self.cli("-s", "start"), capture_output=True, timeout=120, check=True)
        import json

        def running() -> bool:
            out = subprocess.run(self.cli("-s", "status", "--json"), capture_output=True, text=True, timeout=60)
            rows = json.loads(out.stdout)["workers"] if out.returncode == 0 else []
            return sum(w["state"] == "RUNNING" for w in rows) >= self.workers

        if wait_until(running, 60, 0.2) is None:
            raise RuntimeError(f"{self.dir}: not every worker is RUNNING after 60 s")

    def stop(self) -> None:
        subprocess.run(self.cli("-s", "exit"), capture_output=True, timeout=60)


def checkout(rev: str, into: Path) -> Path:
    """A detached worktree of this repository at `rev`, compiled as this checkout is."""
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(into), rev], check=True, capture_output=True)
    compileall.compile_dir(str(into / "gsuper"), quiet=1)
    return into


def interleaved(commands: dict[str, list[str]], runs: int) -> dict[str, float | None]:
    """The median wall time of each command, run round-robin `runs` times."""
    times: dict[str, list[float]] = {name: [] for name in commands}
    for argv in commands.values():  # once each unmeasured: the page cache, the .pyc files
        timed(argv)
    for _ in range(runs):
        for name, argv in commands.items():
            times[name].append(timed(argv))
    return {name: median(values) for name, values in times.items()}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--runs", type=int, default=15, help="runs of each command (default 15)")
    ap.add_argument("--big", type=int, default=1000, help="workers of the status --json row (default 1000; 0: skip)")
    ap.add_argument("--baseline-ref", default="main", help="git revision to compare with (default main; '' skips)")
    args = ap.parse_args()
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # the children import from .pyc, as installed
    sweeper = Sweeper()
    data: dict[str, Any] = {"benchmark": "cli_start", "machine": machine_info(), "args": vars(args)}
    py = [sys.executable, "-c", "pass"]
    with tempfile.TemporaryDirectory(prefix="gsuper-cli-bench-") as tmp:
        base = Path(tmp)
        bins = {"gsuper": BIN}
        tree = None
        try:
            if args.baseline_ref:
                tree = checkout(args.baseline_ref, base / "baseline")
                bins[f"gsuper@{args.baseline_ref}"] = str(tree / "bin" / "gsuper")
            log(f"10 workers each: {', '.join(bins)}; {args.runs} interleaved runs of each command")
            small = {name: Master(base / f"small-{i}", b, 10) for i, (name, b) in enumerate(bins.items())}
            for m in small.values():
                m.start()
            commands = {"python -c pass": py}
            for name, b in bins.items():
                commands[f"{name} --version"] = [sys.executable, b, "--version"]
                commands[f"{name} status"] = small[name].cli("-s", "status")
            res: dict[str, Any] = {"small": interleaved(commands, args.runs)}
            for m in small.values():
                m.stop()
            res["big"] = {}
            for i, (name, b) in enumerate(bins.items()):
                if not args.big:
                    break
                log(f"{name}: {args.big} workers")
                big = Master(base / f"big-{i}", b, args.big, "memory_limit = 512M\n")
                try:
                    big.start()
                    cmds = {
                        "python -c pass": py,
                        "--version": [sys.executable, b, "--version"],
                        "status --json": big.cli("-s", "status", "--json"),
                    }
                    res["big"][name] = interleaved(cmds, args.runs)
                finally:
                    big.stop()
            data["results"] = res
        finally:
            sweeper.sweep(grace=2.0)
            if tree is not None:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], capture_output=True)

    small_res, big_res = data["results"]["small"], data["results"]["big"]
    names = list(bins)
    py_s = small_res["python -c pass"]
    rows: list[list[str]] = []

    def row(metric: str, base_s: float | None, values: list[float | None], target: float | None, target_text: str) -> None:
        met = "-" if target is None or values[0] is None or base_s is None else ("yes" if values[0] <= target * base_s else "NO")
        against = [ratio(values[0], v) for v in values[1:]]
        shown = [fmt(v, "ms") for v in values]
        rows.append([metric, fmt(base_s, "ms"), *shown, *against, ratio(values[0], base_s), target_text, met])

    row("python -c pass", None, [py_s for _ in names], None, "-")
    row("--version (baseline: python -c pass)", py_s, [small_res[f"{n} --version"] for n in names], None, "-")
    row("status, 10 workers (baseline: python -c pass)", py_s, [small_res[f"{n} status"] for n in names], 2.0, "<= 2x python")
    if big_res:
        own = [big_res.get(n, {}) for n in names]
        row(f"--version beside {args.big} workers", own[0].get("python -c pass"), [b.get("--version") for b in own], None, "-")
        base_s = own[0].get("--version")
        values = [b.get("status --json") for b in own]
        row(f"status --json, {args.big} workers (baseline: --version)", base_s, values, 1.3, "<= 1.3x --version")
        own_ratios = [ratio(b.get("status --json"), b.get("--version")) for b in own]
        rows.append(["  status --json / its own --version", "-", *own_ratios, *("-" for _ in names[1:]), "-", "-", "-"])
    headers = ["metric", "baseline", *names, *(f"gsuper/{n}" for n in names[1:]), "gsuper/baseline", "target", "met"]
    load = data["machine"]["loadavg_at_start"][0]
    print(f"{os.cpu_count()} cores, load at start {load:.2f}; median of {args.runs} interleaved runs of each command")
    data["table"] = print_table(headers, rows)
    write_results("cli_start", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
