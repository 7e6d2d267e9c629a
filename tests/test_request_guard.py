"""request_timeout and max_lifetime under the real master (issue 11).

Every way a request can hang (sleep, a blocking system call, a C call, TERM blocked, TERM
ignored, a busy loop) in PHP and Python, plus an exec program that reports its requests on the
status pipe: the master SIGKILLs the hung worker's group, a fresh worker starts at once, the
exit is `request_timeout` and never a failed start. A worker whose requests are slow but within
the timeout is never disturbed, and `status` shows how long its request has run (`busy_s`).
"""

from __future__ import annotations

import re
import sys

import pytest

from conftest import PHP, ROOT, alive, wait_for

pytestmark = pytest.mark.timeout(120)

HAVE_PHP = PHP is not None and (ROOT / "runners/php/worker.php").exists()

# Each handler hangs on the first request of the program (a marker file says it happened) and
# then serves quick requests: the replacement must be serving.
PHP_HANDLERS = r"""<?php
function hang(): void
{
    $marker = getenv('MARKER');
    if (file_exists($marker)) {
        usleep(2000);
        return;
    }
    touch($marker);
    switch (getenv('HOW')) {
        case 'sleep': // the runner keeps TERM blocked during a request: this is "TERM blocked" too
            sleep(3600);
            break;
        case 'syscall': // a blocking read that nothing will ever answer
            $pair = stream_socket_pair(STREAM_PF_UNIX, STREAM_SOCK_STREAM, STREAM_IPPROTO_IP);
            stream_set_blocking($pair[0], true);
            stream_set_timeout($pair[0], 3600);
            fread($pair[0], 1);
            break;
        case 'term_ignored':
            pcntl_signal(SIGTERM, SIG_IGN);
            pcntl_sigprocmask(SIG_UNBLOCK, [SIGTERM]);
            sleep(3600);
            break;
        case 'spin':
            $x = 0;
            while (true) {
                $x++;
            }
    }
}

function slow(): void
{
    usleep(400_000);
}
"""

PY_HANDLERS = r"""
import ctypes, os, signal, time

def hang():
    marker = os.environ["MARKER"]
    if os.path.exists(marker):
        time.sleep(0.002)
        return
    open(marker, "w").close()
    how = os.environ["HOW"]
    if how == "sleep":
        time.sleep(3600)
    elif how == "syscall":
        r, w = os.pipe()
        os.read(r, 1)  # nothing is ever written
    elif how == "c_call":
        ctypes.CDLL(None).pause()  # inside C, no Python bytecode runs
    elif how == "term_blocked":
        signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])
        time.sleep(3600)
    elif how == "term_ignored":
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        time.sleep(3600)
    elif how == "spin":
        while True:
            pass

def slow():
    time.sleep(0.4)
"""

# An exec program that opts in: "begin" before each request, "request" after it.
EXEC_REPORTING = r"""
import json, os, time
fd = int(os.environ["GSUPER_STATUS_FD"])
def report(**event):
    os.write(fd, (json.dumps(event) + "\n").encode())
report(event="ready", pid=os.getpid())
n = 0
while True:
    n += 1
    report(event="begin", request=n)
    if not os.path.exists(os.environ["MARKER"]):
        open(os.environ["MARKER"], "w").close()
        time.sleep(3600)
    time.sleep(0.002)
    report(event="request", requests=n)
    time.sleep(0.01)
"""

PHP_WAYS = ["sleep", "syscall", "term_ignored", "spin"]
PY_WAYS = ["sleep", "syscall", "c_call", "term_blocked", "term_ignored", "spin"]


def hung_program(name: str, runner: str, how: str, timeout: str = "0.5", extra: str = "") -> str:
    handler = "hang" if runner == "php" else "guard_handlers:hang"
    boot = "bootstrap = handlers.php\n" if runner == "php" else ""
    return f"""
[program:{name}]
runner = {runner}
handler = {handler}
{boot}{extra}request_timeout = {timeout}
usleep = 1000
stop_timeout = 5
environment = HOW={how}, MARKER=marker-{name}
"""


def test_every_way_of_hanging_is_ended_and_replaced_at_once(gs):
    gs.file("handlers.php", PHP_HANDLERS)
    gs.file("guard_handlers.py", PY_HANDLERS)
    gs.file("exec_reporting.py", EXEC_REPORTING)
    sections = []
    if HAVE_PHP:
        sections += [hung_program(f"php_{how}", "php", how) for how in PHP_WAYS]
        # Without FFI the PHP runner writes its busy page with fseek + fwrite instead of a mapping.
        gs.file("php-no-ffi", f'#!/bin/sh\nexec {PHP} -d ffi.enable=0 "$@"\n', mode=0o755)
        sections.append(hung_program("php_no_ffi", "php", "sleep", extra="interpreter = ./php-no-ffi\n"))
    sections += [hung_program(f"py_{how}", "python", how) for how in PY_WAYS]
    sections.append(f"""
[program:exec_reporting]
command = {sys.executable} exec_reporting.py
request_timeout = 0.5
stop_timeout = 5
environment = MARKER=marker-exec_reporting
""")
    gs.write("".join(sections))
    names = [re.search(r"\[program:(\w+)\]", s).group(1) for s in sections]  # type: ignore[union-attr]
    gs.start()

    def replaced() -> dict | None:
        rows = {w["program"]: w for w in gs.workers()}
        done = all(
            (rows[n]["last_exit"] or {}).get("reason") == "request_timeout"
            and rows[n]["state"] == "RUNNING"
            and rows[n]["requests"] > 0
            for n in names
        )
        return rows if done else None

    rows = wait_for(replaced, 30, "every hung worker replaced and serving", 0.1)
    log = gs.log()
    for name in names:
        row = rows[name]
        assert row["restarts"] == 1, f"{name}: {row}"
        assert row["last_exit"] == {"reason": "request_timeout", "code": -9}, f"{name}: {row}"
        found = re.search(rf"{name}#0 \(pid (\d+)\): request 1 ran (\d+\.\d+)s, over request_timeout 0.5s: SIGKILL", log)
        assert found, f"{name}: no timeout line in the master log:\n{log}"
        old_pid = int(found.group(1))
        assert 0.5 <= float(found.group(2)) < 3.0
        assert old_pid != row["pid"] and not alive(old_pid), f"{name}: the hung process is still there"
    assert "failed start" not in log and "BACKOFF" not in log and "FATAL" not in log
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize("runner", [pytest.param("php", marks=pytest.mark.skipif(not HAVE_PHP, reason="no php")), "python"])
def test_slow_requests_within_the_timeout_are_never_disturbed_and_show_busy_s(gs, runner):
    gs.file("handlers.php", PHP_HANDLERS)
    gs.file("guard_handlers.py", PY_HANDLERS)
    handler, boot = ("slow", "bootstrap = handlers.php") if runner == "php" else ("guard_handlers:slow", "")
    gs.write(f"""
    [program:slow]
    runner = {runner}
    handler = {handler}
    {boot}
    request_timeout = 1
    usleep = 100000
    numprocs = 2
    """)
    gs.start()
    seen: set[float] = set()
    idle = []

    def busy_seen() -> bool:
        for w in gs.workers("slow"):
            if w["busy_s"] is not None:
                assert 0 <= w["busy_s"] < 1.0, w
                seen.add(w["busy_s"])
            elif w["state"] == "RUNNING":
                idle.append(w)  # between two requests (usleep = 0.1 s)
        return len(seen) >= 3 and bool(idle)

    wait_for(busy_seen, 20, "busy_s shown for requests in progress, null between them", 0.05)
    wait_for(lambda: all(w["requests"] >= 8 for w in gs.workers("slow")), 30, "8 requests per worker", 0.1)
    rows = gs.workers("slow")
    assert all(w["restarts"] == 0 and w["last_exit"] is None for w in rows), rows
    assert "request_timeout" not in gs.log()
    gs.run("-s", "stop", check=True)


# -- max_lifetime -----------------------------------------------------------------------------------

LIFE_PHP = r"""<?php
function life(): void
{
    file_put_contents('life.txt', getmypid() . " start\n", FILE_APPEND | LOCK_EX);
    usleep(300_000);
    file_put_contents('life.txt', getmypid() . " end\n", FILE_APPEND | LOCK_EX);
}
"""
LIFE_PY = r"""
import os, time
def life():
    with open("life.txt", "a") as fh:
        fh.write(f"{os.getpid()} start\n")
    time.sleep(0.3)
    with open("life.txt", "a") as fh:
        fh.write(f"{os.getpid()} end\n")
"""


@pytest.mark.parametrize("runner", [pytest.param("php", marks=pytest.mark.skipif(not HAVE_PHP, reason="no php")), "python"])
def test_max_lifetime_in_loop_mode_finishes_the_request_and_recycles(gs, runner):
    if runner == "php":
        gs.file("life.php", LIFE_PHP)
        keys = "handler = life\nbootstrap = life.php"
    else:
        gs.file("life_handlers.py", LIFE_PY)
        keys = "handler = life_handlers:life"
    gs.write(f"""
    [program:aging]
    runner = {runner}
    {keys}
    max_lifetime = 1
    max_lifetime_jitter = 0.5
    usleep = 1000
    """)
    gs.start()
    row = wait_for(
        lambda: next((w for w in gs.workers("aging") if w["restarts"] >= 2), None), 30, "two lives ended by max_lifetime", 0.1
    )
    assert row["last_exit"] == {"reason": "max_lifetime", "code": 0}
    gs.run("-s", "stop", check=True)
    events = [line.split() for line in (gs.root / "life.txt").read_text().splitlines()]
    pids = list(dict.fromkeys(pid for pid, _ in events))
    assert len(pids) >= 2  # the two lives that ended (the third may not have begun a request yet)
    for pid in pids:  # every request a life began, it finished: none was cut
        assert [e for p, e in events if p == pid].count("start") == [e for p, e in events if p == pid].count("end")
    log = gs.log()
    assert log.count("exited: max_lifetime, code 0") >= 2
    assert "failed start" not in log and "SIGKILL" not in log


DAEMON = r"""
import os, signal, sys, time
def on_term(*_):
    with open("terms.txt", "a") as fh:
        fh.write(f"{os.getpid()}\n")
    sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
while True:
    time.sleep(1)
"""


def test_max_lifetime_in_daemon_mode_stops_gracefully_and_replaces(gs):
    gs.file("daemon.py", DAEMON)
    gs.write(f"""
    [program:aging]
    command = {sys.executable} daemon.py
    max_lifetime = 1.2
    stop_timeout = 5
    """)
    gs.start()
    row = wait_for(
        lambda: next((w for w in gs.workers("aging") if w["restarts"] >= 2 and w["state"] == "RUNNING"), None),
        30,
        "two lives ended by max_lifetime",
        0.1,
    )
    assert row["last_exit"] == {"reason": "max_lifetime", "code": 0}
    terms = (gs.root / "terms.txt").read_text().split()
    assert len(terms) >= 2, "the daemon was not stopped with its stopsignal"
    log = gs.log()
    assert log.count("recycling (max_lifetime)") >= 2 and "failed start" not in log and "SIGKILL" not in log
    gs.run("-s", "stop", check=True)
