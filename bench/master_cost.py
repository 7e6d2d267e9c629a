#!/usr/bin/env python3
"""The master's own cost at scale: RSS and idle CPU with 10, 100 and 1,000 `sleep` workers.

Each size runs under this checkout's gsuper and under gsuper at --baseline (default `main`, a
temporary git worktree), one after the other in the same run, each with `memory_limit = 512M`
so that the master samples every worker's tree every second. Measured per master, after all its
workers run and a settle: VmRSS from /proc/PID/status, CPU over --idle seconds from
/proc/PID/stat ticks, and the medians of 3 `status --json` and of 3 `--version` commands.

Usage: python3 bench/master_cost.py [--sizes 10,100,1000] [--idle S] [--baseline REV]
Results are printed as a table and written as JSON to bench/results/.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import Sweeper, fmt, machine_info, median, print_table, ratio, wait_until, write_results  # noqa: E402
from supervise import BULK_TIMEOUT_S, SETTLE_S, Gsuper, checkout, drop_checkout, make_dir, measure_idle_cpu, timed  # noqa: E402


def vm_rss(pid: int) -> int | None:
    """VmRSS of a process in bytes."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError):
        return None
    return None


def measure(sysm: Gsuper, idle_s: float) -> dict[str, Any]:
    res: dict[str, Any] = {}
    try:
        subprocess.run(sysm.start_cmd(), capture_output=True, timeout=BULK_TIMEOUT_S, cwd=sysm.dir, check=True)
        master = sysm.master_pid()
        if master is None:
            raise RuntimeError("no master pid after start")
        wait_until(lambda: len(sysm.php_children(master)) >= sysm.workers, BULK_TIMEOUT_S)
        time.sleep(SETTLE_S)
        res["idle_cpu_percent"] = measure_idle_cpu(master, idle_s)
        res["rss_bytes"] = vm_rss(master)
        res["status_s"] = median([timed(sysm.cli("-s", "status", "--json")) for _ in range(3)])
        res["version_s"] = median([timed(sysm.version_cmd()) for _ in range(3)])
    except Exception as exc:  # noqa: BLE001 - report what we have; the run goes on
        res["error"] = f"{type(exc).__name__}: {exc}"
    finally:
        sysm.cleanup()
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="10,100,1000", help="worker counts (default 10,100,1000)")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds of idle CPU measurement (default 5)")
    ap.add_argument("--baseline", default="main", help="git revision measured beside this checkout (default main)")
    args = ap.parse_args()
    sizes = [int(s) for s in args.sizes.split(",") if s]
    sweeper = Sweeper()
    data: dict[str, Any] = {"benchmark": "master_cost", "machine": machine_info(), "args": vars(args), "runs": {}}
    with tempfile.TemporaryDirectory(prefix="gsuper-bench-") as tmp:
        base_dir = Path(tmp)
        tree = checkout(args.baseline, base_dir / "baseline")
        try:
            for n in sizes:
                for name, bin_path in (("baseline", str(tree / "bin" / "gsuper")), ("this", None)):
                    d = make_dir(base_dir, f"{name}-{n}")
                    extra = "memory_limit = 512M\n"
                    sysm = (
                        Gsuper(d, n, bin_path, name, command="sleep 100000", extra=extra)
                        if bin_path
                        else Gsuper(d, n, name=name, command="sleep 100000", extra=extra)
                    )
                    print(f"{name}: {n} sleep workers", file=sys.stderr, flush=True)
                    data["runs"][f"{name}-{n}"] = measure(sysm, args.idle)
                    sweeper.sweep(grace=1.0)
        finally:
            sweeper.sweep(grace=2.0)
            drop_checkout(tree)
    rows = []
    for n in sizes:
        b, t = data["runs"][f"baseline-{n}"], data["runs"][f"this-{n}"]
        for key, label, unit in (
            ("rss_bytes", "master VmRSS", "MiB"),
            ("idle_cpu_percent", "master idle CPU (sampling every 1 s)", "%"),
            ("status_s", "status --json", "s"),
            ("version_s", "gsuper --version (the CLI's start)", "s"),
        ):
            rows.append([f"{label}, {n} workers", fmt(b.get(key), unit), fmt(t.get(key), unit), ratio(t.get(key), b.get(key))])
        for name, r in (("baseline", b), ("this", t)):
            if r.get("error"):
                print(f"{name} with {n} workers: ERROR {r['error']}")
    data["table"] = print_table(["metric", f"gsuper@{args.baseline}", "this checkout", "this/baseline"], rows)
    write_results("master_cost", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
