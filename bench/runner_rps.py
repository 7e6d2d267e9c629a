#!/usr/bin/env python3
"""Requests per second of an empty handler through gsuper's in-process runners.

For PHP (runners/php/worker.php) and Python (runners/python/worker.py), in one run:
  - bare loop: a plain `for` loop calling the same empty function, for the same duration
    (the ceiling: what the language itself does);
  - runner, handler mode: the runner started directly with GSUPER_* in its environment,
    GSUPER_USLEEP=0 and a status pipe this script drains; after the duration it gets SIGTERM and
    the request count is read from its final "exit" report (over the time from "ready" to TERM);
  - runner, handler mode, busy page: the same with GSUPER_BUSY_FD set (a memfd this script
    maps), as the master gives it when request_timeout is set: the cost of the request guard;
  - runner at --baseline-ref (default main), handler mode: the runner file as it is in that
    git commit, for a before/after in the same run (skipped where it is the same file);
  - runner, script mode (extra): the same with an empty GSUPER_SCRIPT run once per request;
  - start per request: `php request.php` (or `python3 request.py`), one process per request,
    back to back, for the same duration (what a cron/exec-per-job setup does).
Each loop measurement is repeated --rounds times, interleaved; the median is reported.
Aim (PHP, issue 3): runner >= 80% of the bare loop, and >= 20x the start-per-request rate.
Aim (Python, issue 16): runner >= 50% of the bare loop. Aim (issue 11): the busy page costs
at most 10% of the runner's rate.

Usage: python3 bench/runner_rps.py [--duration S] [--rounds R] [--skip-python] [--skip-php]
                                   [--baseline-ref REF]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import PHP, ROOT, Sweeper, fmt, machine_info, median, print_table, ratio, write_results  # noqa: E402

PHP_RUNNER = ROOT / "runners" / "php" / "worker.php"
PY_RUNNER = ROOT / "runners" / "python" / "worker.py"

PHP_HANDLER = """<?php
function bench_empty(): void
{
}
"""

PHP_BARE = """<?php
require __DIR__ . '/handler.php';
$duration = (float) $argv[1];
$n = 0;
$start = hrtime(true);
$end = $start + (int) ($duration * 1e9);
do {
    for ($i = 0; $i < 1000; ++$i) {
        bench_empty();
    }
    $n += 1000;
    $now = hrtime(true);
} while ($now < $end);
echo $n, ' ', ($now - $start) / 1e9, "\\n";
"""

PHP_REQUEST = """<?php
require __DIR__ . '/handler.php';
bench_empty();
"""

PY_HANDLER = """def bench_empty():
    pass
"""

PY_BARE = """import sys, time
from bench_handler import bench_empty

duration = float(sys.argv[1])
n = 0
start = time.perf_counter()
end = start + duration
while True:
    for _ in range(1000):
        bench_empty()
    n += 1000
    now = time.perf_counter()
    if now >= end:
        break
print(n, now - start)
"""

PY_REQUEST = """from bench_handler import bench_empty
bench_empty()
"""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bare_loop(argv: list[str], cwd: Path, duration: float) -> float:
    out = subprocess.run([*argv, str(duration)], cwd=cwd, capture_output=True, text=True, timeout=duration + 60, check=True)
    n, elapsed = out.stdout.split()
    return int(n) / float(elapsed)


def start_per_request(argv: list[str], cwd: Path, duration: float) -> float:
    n = 0
    start = time.perf_counter()
    end = start + duration
    while time.perf_counter() < end:
        subprocess.run(argv, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True, timeout=60)
        n += 1
    return n / (time.perf_counter() - start)


def through_runner(argv: list[str], cwd: Path, env_extra: dict[str, str], duration: float, busy: bool = False) -> dict[str, Any]:
    """Start a runner with a status pipe (and, with `busy`, a busy page as the master makes
    it), let it run `duration` s after "ready", TERM it, and read the count from its exit report."""
    r, w = os.pipe()
    fds = [w]
    if busy:
        page = os.memfd_create("bench-busy")
        os.ftruncate(page, 64)
        fds.append(page)
        env_extra = {**env_extra, "GSUPER_BUSY_FD": str(page)}
    env = dict(os.environ)
    env.update(
        GSUPER_PROGRAM="bench",
        GSUPER_WORKER="0",
        GSUPER_STATUS_FD=str(w),
        GSUPER_MODE="loop",
        GSUPER_MAX_REQUEST="0",
        GSUPER_MEMORY_LIMIT="0",
        GSUPER_USLEEP="0",
        GSUPER_ON_ERROR="continue",
        GSUPER_SCRIPT="",
        GSUPER_HANDLER="",
        GSUPER_BOOTSTRAP="",
    )
    env.update(env_extra)
    events: list[tuple[float, dict[str, Any]]] = []
    ready = threading.Event()

    def drain() -> None:
        buf = b""
        while True:
            try:
                chunk = os.read(r, 65536)
            except OSError:
                break
            if not chunk:
                break
            t = time.perf_counter()
            buf += chunk
            *lines, buf = buf.split(b"\n")
            for line in lines:
                try:
                    ev = json.loads(line)
                except ValueError:
                    continue
                events.append((t, ev))
                if ev.get("event") in ("ready", "exit"):
                    ready.set()

    errlog = tempfile.TemporaryFile()
    proc = subprocess.Popen(argv, cwd=cwd, env=env, pass_fds=fds, stdin=subprocess.DEVNULL, stdout=errlog, stderr=errlog)
    for fd in fds:
        os.close(fd)
    reader = threading.Thread(target=drain, daemon=True)
    reader.start()
    try:
        if not ready.wait(30):
            raise RuntimeError("the runner did not report ready within 30 s")
        t_ready = next((t for t, ev in events if ev.get("event") == "ready"), None)
        if t_ready is None:
            raise RuntimeError(f"the runner exited before ready: {events}")
        time.sleep(duration)
        t_term = time.perf_counter()
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(timeout=30)
        reader.join(10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        os.close(r)
    exits = [ev for _, ev in events if ev.get("event") == "exit"]
    if not exits:
        errlog.seek(0)
        raise RuntimeError(f"no exit report (exit code {proc.returncode}): {errlog.read()[-2000:].decode(errors='replace')}")
    requests = int(exits[-1]["requests"])
    # Cross-check from the periodic request reports (rate between the first and the last).
    reports = [(t, ev["requests"]) for t, ev in events if ev.get("event") == "request" and t <= t_term]
    report_rate = None
    if len(reports) >= 2 and reports[-1][0] > reports[0][0]:
        report_rate = (reports[-1][1] - reports[0][1]) / (reports[-1][0] - reports[0][0])
    return {
        "rps": requests / (t_term - t_ready),
        "requests": requests,
        "seconds": t_term - t_ready,
        "rps_from_reports": report_rate,
        "exit": exits[-1],
        "exit_code": code,
    }


def baseline_runner(lang: str, ref: str, d: Path, runner_argv: list[str]) -> list[str] | None:
    """The runner file as it is at git `ref`, written into `d`; None when it is the same file."""
    rel = "runners/php/worker.php" if lang == "php" else "runners/python/worker.py"
    try:
        old = subprocess.run(["git", "-C", str(ROOT), "show", f"{ref}:{rel}"], capture_output=True, check=True).stdout
    except (subprocess.CalledProcessError, OSError):
        log(f"{lang}: no {rel} at {ref}: no baseline row")
        return None
    if old == (ROOT / rel).read_bytes():
        return None
    path = d / f"baseline-{Path(rel).name}"
    path.write_bytes(old)
    return [*runner_argv[:-1], str(path)]


def bench_language(lang: str, args: argparse.Namespace, d: Path) -> dict[str, Any]:
    if lang == "php":
        assert PHP is not None
        (d / "handler.php").write_text(PHP_HANDLER)
        (d / "bare.php").write_text(PHP_BARE)
        (d / "request.php").write_text(PHP_REQUEST)
        (d / "empty.php").write_text("<?php\n")
        bare_argv = [PHP, str(d / "bare.php")]
        runner_argv = [PHP, str(PHP_RUNNER)]
        handler_env = {"GSUPER_HANDLER": "bench_empty", "GSUPER_BOOTSTRAP": str(d / "handler.php")}
        script_env = {"GSUPER_SCRIPT": str(d / "empty.php")}
        request_argv = [PHP, str(d / "request.php")]
        if not PHP_RUNNER.exists():
            raise FileNotFoundError(f"{PHP_RUNNER} does not exist (yet)")
    else:
        (d / "bench_handler.py").write_text(PY_HANDLER)
        (d / "bare.py").write_text(PY_BARE)
        (d / "request.py").write_text(PY_REQUEST)
        (d / "empty.py").write_text("")
        bare_argv = [sys.executable, str(d / "bare.py")]
        runner_argv = [sys.executable, str(PY_RUNNER)]
        handler_env = {"GSUPER_HANDLER": "bench_handler:bench_empty"}
        script_env = {"GSUPER_SCRIPT": str(d / "empty.py")}
        request_argv = [sys.executable, str(d / "request.py")]
    res: dict[str, Any] = {
        "bare": [],
        "runner": [],
        "runner_busy": [],
        "runner_base": [],
        "runner_script": [],
        "runner_detail": [],
    }
    base_argv = baseline_runner(lang, args.baseline_ref, d, runner_argv)
    for r in range(args.rounds):
        log(f"{lang}: round {r + 1}/{args.rounds}: bare loop, runner (handler) without and with busy page"
            f"{', runner at ' + args.baseline_ref if base_argv else ''}, {args.duration:g} s each")  # fmt: skip
        res["bare"].append(bare_loop(bare_argv, d, args.duration))
        if r % 2:  # every other round the busy page goes first: no bias from the order
            res["runner_busy"].append(through_runner(runner_argv, d, handler_env, args.duration, busy=True)["rps"])
        detail = through_runner(runner_argv, d, handler_env, args.duration)
        res["runner"].append(detail["rps"])
        res["runner_detail"].append(detail)
        if not r % 2:
            res["runner_busy"].append(through_runner(runner_argv, d, handler_env, args.duration, busy=True)["rps"])
        if base_argv:
            res["runner_base"].append(through_runner(base_argv, d, handler_env, args.duration)["rps"])
    log(f"{lang}: runner in script mode (empty script per request), {args.duration:g} s")
    res["runner_script"].append(through_runner(runner_argv, d, script_env, args.duration)["rps"])
    log(f"{lang}: start one process per request, {args.spawn_duration:g} s")
    res["per_request"] = start_per_request(request_argv, d, args.spawn_duration)
    return res


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--duration", type=float, default=4.0, help="seconds per loop measurement (default 4)")
    ap.add_argument("--spawn-duration", type=float, default=4.0, help="seconds of start-per-request (default 4)")
    ap.add_argument("--rounds", type=int, default=3, help="bare/runner pairs, interleaved (default 3)")
    ap.add_argument("--skip-php", action="store_true")
    ap.add_argument("--skip-python", action="store_true")
    ap.add_argument("--baseline-ref", default="main", help="git ref of the runners to compare with (default main)")
    args = ap.parse_args()
    sweeper = Sweeper()
    data: dict[str, Any] = {"benchmark": "runner_rps", "machine": machine_info(), "args": vars(args)}
    langs = []
    if not args.skip_php:
        if PHP is None:
            print("php-cli is not installed: PHP skipped", file=sys.stderr)
        else:
            langs.append("php")
    if not args.skip_python:
        langs.append("python")
    errors = {}
    with tempfile.TemporaryDirectory(prefix="gsuper-rps-") as tmp:
        try:
            for lang in langs:
                d = Path(tmp) / lang
                d.mkdir()
                try:
                    data[lang] = bench_language(lang, args, d)
                except Exception as exc:  # noqa: BLE001 - report, carry on with the other language
                    errors[lang] = f"{type(exc).__name__}: {exc}"
                    print(f"{lang}: ERROR {errors[lang]}", file=sys.stderr, flush=True)
        finally:
            sweeper.sweep(grace=1.0)
    data["errors"] = errors

    rows = []
    for lang in langs:
        res = data.get(lang)
        if not res:
            rows.append([f"{lang}: not measured ({errors.get(lang)})", "-", "-", "-", "-", "-"])
            continue
        bare, runner, script, spawn = median(res["bare"]), median(res["runner"]), median(res["runner_script"]), res["per_request"]
        busy, base = median(res["runner_busy"]), median(res["runner_base"])
        # The machine's load moves every rate from round to round: compare each round's pair
        # (measured back to back) and take the median of those ratios.
        busy_pair = median([b / r for r, b in zip(res["runner"], res["runner_busy"], strict=False) if r])
        base_pair = median([r / b for r, b in zip(res["runner"], res["runner_base"], strict=False) if b])
        res["busy_vs_without_per_round"], res["now_vs_baseline_per_round"] = busy_pair, base_pair
        runner_path = "runners/php/worker.php" if lang == "php" else "runners/python/worker.py"
        rows.append([f"{lang}: bare for loop, empty function", fmt(bare, "rps"), "1.00x", ratio(bare, spawn), "-", "-"])
        if lang == "php":
            aim, ok = (
                ">= 0.80x bare, >= 20x per-request",
                runner is not None and bare is not None and runner >= 0.8 * bare and runner >= 20 * spawn,
            )
        else:
            aim, ok = ">= 0.50x bare", runner is not None and bare is not None and runner >= 0.5 * bare
        rows.append(
            [
                f"{lang}: {runner_path}, handler, usleep=0",
                fmt(runner, "rps"),
                ratio(runner, bare),
                ratio(runner, spawn),
                aim,
                "yes" if ok else "NO",
            ]
        )
        ok = busy_pair is not None and busy_pair >= 0.9
        rows.append(
            [
                f"{lang}: the same with the busy page (request_timeout set)",
                fmt(busy, "rps"),
                ratio(busy, bare),
                ratio(busy, spawn),
                f">= 0.90x without (per round, median: {busy_pair or 0:.2f}x)",
                "yes" if ok else "NO",
            ]
        )
        if base is not None:
            rows.append(
                [
                    f"{lang}: runner at {args.baseline_ref}, handler, usleep=0",
                    fmt(base, "rps"),
                    ratio(base, bare),
                    ratio(base, spawn),
                    f"(before; now {base_pair or 0:.2f}x it, per round)",
                    "-",
                ]
            )
        rows.append(
            [
                f"{lang}: {runner_path}, empty script per request",
                fmt(script, "rps"),
                ratio(script, bare),
                ratio(script, spawn),
                "-",
                "-",
            ]
        )
        rows.append(
            [
                f"{lang}: start `{lang if lang == 'php' else 'python3'} request` per request",
                fmt(spawn, "rps"),
                ratio(spawn, bare),
                "1.00x",
                "-",
                "-",
            ]
        )
    print()
    print(f"requests/s of an empty handler, {os.cpu_count()} cores, {args.duration:g} s per run, median of {args.rounds} rounds")
    data["table"] = print_table(["measurement", "requests/s", "vs bare loop", "vs start-per-request", "aim", "met"], rows)
    for lang in langs:
        if data.get(lang):
            runs = ", ".join(f"{x:,.0f}" for x in data[lang]["runner"])
            busies = ", ".join(f"{x:,.0f}" for x in data[lang]["runner_busy"])
            bares = ", ".join(f"{x:,.0f}" for x in data[lang]["bare"])
            print(f"{lang}: runner rounds {runs}; with busy page {busies}; bare rounds {bares}")
    write_results("runner_rps", data)
    return 0


if __name__ == "__main__":
    sys.exit(main())
