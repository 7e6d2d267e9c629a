"""Helpers shared by the benchmark scripts under bench/ (not part of gsuper itself).

Every process a benchmark starts carries a per-run token in its environment (GSUPER_BENCH_TOKEN);
`Sweeper.sweep()` ends whatever still carries it, by pid, so a benchmark leaves nothing behind
even when it fails half-way.
"""

from __future__ import annotations

import compileall
import datetime
import glob
import json
import os
import platform
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
RESULTS = BENCH / "results"
BIN = str(ROOT / "bin" / "gsuper")
# An installed gsuper imports from .pyc files; so must the checkout's, even where
# PYTHONDONTWRITEBYTECODE is set, or compiling at import inflates the master's RSS by ~3 MB.
compileall.compile_dir(str(ROOT / "gsuper"), quiet=1)
PHP = shutil.which("php")  # None: the benchmarks say so and stop
PHP_BIN: str = PHP or "php"
TOKEN_VAR = "GSUPER_BENCH_TOKEN"
CLK_TCK = os.sysconf("SC_CLK_TCK")


# -- statistics and printing ---------------------------------------------------------------------


def pct(values: list[float], p: float) -> float | None:
    """The p-th percentile (0..100), linear between closest ranks (numpy's default)."""
    if not values:
        return None
    data = sorted(values)
    k = (len(data) - 1) * p / 100.0
    lo = int(k)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (k - lo)


def median(values: list[float]) -> float | None:
    return pct(values, 50)


def ratio(a: float | None, b: float | None) -> str:
    if a is None or b is None or b == 0:
        return "-"
    r = a / b
    if r == 0:
        return "0x"
    if r >= 100:
        return f"{r:,.0f}x"
    if r >= 10:
        return f"{r:.1f}x"
    if r >= 0.01:
        return f"{r:.2f}x"
    return f"{r:.1e}x"


def fmt(value: float | None, unit: str) -> str:
    if value is None:
        return "-"
    if unit == "ms":
        return f"{value * 1000:.1f} ms"
    if unit == "s":
        return f"{value:.3f} s"
    if unit == "MiB":
        return f"{value / 2**20:.1f} MiB"
    if unit == "%":
        return f"{value:.2f} %"
    if unit == "rps":
        return f"{value:,.0f}/s"
    return f"{value:g} {unit}"


def print_table(headers: list[str], rows: list[list[str]]) -> str:
    """Print a plain-text table (and return it)."""
    widths = [max(len(str(r[i])) for r in [headers, *rows]) for i in range(len(headers))]
    line = "+-" + "-+-".join("-" * w for w in widths) + "-+"
    out = [line, "| " + " | ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)) + " |", line]
    for row in rows:
        out.append("| " + " | ".join(str(c).ljust(w) for c, w in zip(row, widths, strict=True)) + " |")
    out.append(line)
    text = "\n".join(out)
    print(text, flush=True)
    return text


def machine_info() -> dict[str, Any]:
    info: dict[str, Any] = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(),
        "loadavg_at_start": os.getloadavg(),
        "python": sys.version.split()[0],
        "platform": platform.platform(),
    }
    if PHP:
        try:
            info["php"] = subprocess.run([PHP, "-r", "echo PHP_VERSION;"], capture_output=True, text=True, timeout=10).stdout
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        info["git_commit"] = subprocess.run(
            ["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        pass
    return info


def write_results(name: str, data: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}.json"
    path.write_text(json.dumps(data, indent=2, default=str) + "\n")
    print(f"results written to {path}", flush=True)
    return path


# -- /proc readers (cheap enough to poll every millisecond) --------------------------------------


def children(pid: int) -> set[int]:
    """Direct children of a process, from /proc/PID/task/*/children."""
    kids: set[int] = set()
    for path in glob.glob(f"/proc/{pid}/task/*/children"):
        try:
            with open(path) as f:
                kids.update(int(x) for x in f.read().split())
        except (OSError, ValueError):
            continue
    return kids


def cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def state(pid: int) -> str | None:
    """The one-letter state of a process ('Z' zombie), or None when it does not exist."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    return data[data.rindex(b")") + 2 : data.rindex(b")") + 3].decode()


def exited(pid: int) -> bool:
    """True once the process has exited (gone, or a zombie waiting to be reaped)."""
    return state(pid) in (None, "Z")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process (all its threads), in seconds."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK  # utime, stime


def rss_bytes(pid: int) -> int | None:
    try:
        return psutil.Process(pid).memory_info().rss
    except psutil.Error:
        return None


def read_pidfile(path: Path | str) -> int | None:
    try:
        return int(Path(path).read_text().strip())
    except (OSError, ValueError):
        return None


# -- cleanup ---------------------------------------------------------------------------------------


def _raise_interrupt(signum: int, _frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


class Sweeper:
    """Tags every process this run starts (through the environment) and ends the leftovers."""

    def __init__(self) -> None:
        self.token = uuid.uuid4().hex
        os.environ[TOKEN_VAR] = self.token
        # SIGTERM/SIGHUP to the benchmark unwind it like Ctrl-C, through every `finally`.
        for sig in (signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, _raise_interrupt)

    def leftovers(self) -> list[psutil.Process]:
        found = []
        me = os.getpid()
        for proc in psutil.process_iter(["pid"]):
            if proc.pid == me:
                continue
            try:
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                if proc.environ().get(TOKEN_VAR) == self.token:
                    found.append(proc)
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return found

    def sweep(self, grace: float = 0.0, quiet: bool = False) -> int:
        """SIGKILL every live process carrying this run's token; return how many there were."""
        deadline = time.monotonic() + grace
        left = self.leftovers()
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = self.leftovers()
        for proc in left:
            try:
                os.kill(proc.pid, signal.SIGKILL)
            except OSError:
                pass
        if left and not quiet:
            print(f"cleanup: killed {len(left)} leftover process(es) of this run", file=sys.stderr, flush=True)
        # reap what is ours (direct children)
        for proc in left:
            try:
                os.waitpid(proc.pid, os.WNOHANG)
            except ChildProcessError:
                pass
        return len(left)


def wait_until(cond: Any, timeout: float, interval: float = 0.001) -> float | None:
    """Poll cond() until true; return the perf_counter() time it was seen true, None at timeout."""
    deadline = time.perf_counter() + timeout
    while True:
        if cond():
            return time.perf_counter()
        if time.perf_counter() > deadline:
            return None
        time.sleep(interval)
