"""Issue 13 through the real command line: on_fatal, logdir = -, PID 1 in a PID namespace,
systemd notifications on a real socket, and check's grace warning."""

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import BIN, alive, kill_group_and_reap, wait_for

pytestmark = pytest.mark.timeout(90)


def foreground(gs, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=None, prefix=()):
    """The master in the foreground (its own process group, so a test can end all of it)."""
    argv = [*prefix, sys.executable, BIN, "-s", "start", "--foreground", "-c", str(gs.config)]
    return subprocess.Popen(argv, stdout=stdout, stderr=stderr, cwd=gs.root, env=env, start_new_session=True)


# -- on_fatal --------------------------------------------------------------------------------------

ON_FATAL = """
[gsuper]
on_fatal = exit

[program:broken]
command = sh -c 'exit 1'
startretries = 1

[program:sleeper]
command = sh -c 'trap "echo drained; exit 0" TERM; while true; do sleep 0.05; done'
numprocs = 2
"""


def test_on_fatal_exit_in_the_foreground_drains_the_rest_and_exits_3(gs):
    gs.write(ON_FATAL)
    proc = foreground(gs)
    try:
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == 3, err
        err = err.decode()
        assert "broken#0 is FATAL and on_fatal = exit" in err and "with status 3" in err
        assert not gs.running() and not os.path.exists(gs.pidfile())
        assert gs.log("sleeper").count("drained") == 2  # each got TERM and finished
    finally:
        kill_group_and_reap(proc)


def test_on_fatal_exit_daemonized_leaves_no_pid_file_and_says_why(gs):
    gs.write(ON_FATAL)
    gs.start()
    wait_for(lambda: not gs.running(), 30, what="the master to exit")
    assert not os.path.exists(gs.pidfile())
    log = gs.log()
    assert "on_fatal = exit" in log and "exited with status 3" in log
    assert gs.log("sleeper").count("drained") == 2


def test_on_fatal_keep_is_the_default(gs):
    gs.write(ON_FATAL.replace("on_fatal = exit", ""))
    gs.start()
    gs.wait_workers("broken", "FATAL")
    assert gs.running() and len(gs.wait_workers("sleeper")) == 2
    gs.run("-s", "stop", check=True)


# -- logdir = - ------------------------------------------------------------------------------------

NOISY = r"""
[gsuper]
logdir = -
log_format = {fmt}

[program:noisy]
command = {python} noisy.py
numprocs = 2
"""
NOISY_PY = r"""
import os, sys, time
out = sys.stdout.buffer
out.write(b"hello from %d\n" % int(os.environ["GSUPER_WORKER"]))
out.write(b"caf\xc3\xa9 \xff\xfe not utf-8\n")
out.write(b"L" * 100000 + b"\n")
out.flush()
sys.stderr.write("to stderr\n"); sys.stderr.flush()
open("done.%s" % os.environ["GSUPER_WORKER"], "w").close()
time.sleep(1000)
"""


def run_noisy(gs, fmt, tmp_path):
    gs.file("noisy.py", NOISY_PY)
    gs.write(NOISY.format(fmt=fmt, python=sys.executable))
    out_path = tmp_path / "stdout"
    with open(out_path, "wb") as out, open(tmp_path / "stderr", "wb") as err:
        proc = foreground(gs, stdout=out, stderr=err)
    try:
        wait_for(lambda: all((gs.root / f"done.{i}").exists() for i in (0, 1)), 20, what="both workers to print")
        wait_for(lambda: out_path.read_bytes().count(b"to stderr") == 2, 10, what="the lines on stdout")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(20) == 0
    finally:
        kill_group_and_reap(proc)
    assert not (gs.root / "log").exists()  # no log files at all
    return out_path.read_bytes()


def test_logdir_dash_text_lines_on_stdout(gs, tmp_path):
    out = run_noisy(gs, "text", tmp_path).decode("utf-8")  # all of it is UTF-8 now
    lines = out.splitlines()
    for i in (0, 1):
        mine = [ln[len(f"noisy#{i} "):] for ln in lines if ln.startswith(f"noisy#{i} ")]
        assert f"hello from {i}" in mine and "to stderr" in mine
        assert "café \\xff\\xfe not utf-8" in mine  # escaped, not lost
        long = [ln for ln in mine if ln.startswith("L")]
        assert len(long) > 1 and "".join(long) == "L" * 100000  # split, never cut
    assert any("master" in ln and "started" in ln for ln in lines)  # the master log is there too


def test_logdir_dash_json_lines_on_stdout(gs, tmp_path):
    docs = [json.loads(line) for line in run_noisy(gs, "json", tmp_path).splitlines()]
    workers = [d for d in docs if "stream" in d]
    master = [d for d in docs if "stream" not in d]
    assert master and all(set(d) == {"time", "level", "program", "worker", "pid", "message"} for d in master)
    for i in (0, 1):
        mine = [d for d in workers if d["worker"] == i]
        assert {d["program"] for d in mine} == {"noisy"} and len({d["pid"] for d in mine}) == 1
        assert {"stream": "stderr", "line": "to stderr"}.items() <= next(d for d in mine if d["stream"] == "stderr").items()
        lines = [d["line"] for d in mine if d["stream"] == "stdout"]
        assert lines[:2] == [f"hello from {i}", "café \\xff\\xfe not utf-8"]
        assert "".join(lines[2:]) == "L" * 100000 and len(lines) > 3
    spawned = [d for d in master if d["program"] == "noisy" and "exited" in d["message"]]
    assert len(spawned) == 2 and all(isinstance(d["pid"], int) for d in spawned)


def test_logdir_dash_tail_says_where_the_logs_go(gs):
    gs.write("[gsuper]\nlogdir = -\n[program:a]\ncommand = sleep 1\n")
    tail = gs.run("-s", "tail")
    assert tail.returncode == 1 and "stdout" in tail.stderr and "kubectl logs" in tail.stderr
    assert gs.run("-s", "check").returncode == 0


def test_a_slow_stdout_reader_does_not_stall_the_master(gs, tmp_path):
    """stdout is a pipe nobody reads: the master still answers and supervises."""
    gs.file("flood.py", "import sys\nwhile True:\n    sys.stdout.write('z' * 1000 + '\\n')\n")
    gs.write(
        f"[gsuper]\nlogdir = -\n[program:flood]\ncommand = {sys.executable} flood.py\n[program:other]\ncommand = sleep 1000\n"
    )
    proc = foreground(gs, stderr=subprocess.DEVNULL)  # stdout: a pipe this test never reads
    try:
        wait_for(gs.running, 10, what="the master")
        pid = gs.wait_workers("other")[0]["pid"]
        os.kill(pid, signal.SIGKILL)  # supervision goes on: the worker is replaced
        wait_for(lambda: gs.workers("other")[0]["pid"] not in (None, pid), 10, what="a new worker")
        gs.run("-s", "stop", check=True, timeout=30)
        assert proc.wait(20) == 0
    finally:
        kill_group_and_reap(proc)


# -- PID 1 of a container --------------------------------------------------------------------------

ORPHANS = """
[program:orphans]
command = sh orphans.sh
numprocs = 2
stop_timeout = 5
"""
ORPHANS_SH = """
n=0
trap 'exit 0' TERM
while true; do
  (sleep 0.2 &)    # the subshell exits at once: its sleep is orphaned and comes to PID 1
  n=$((n+1)); echo $n > count.$GSUPER_WORKER
  sleep 0.02
done
"""


def in_namespace(gs):
    if os.geteuid() != 0:
        pytest.skip("a new PID namespace needs root (CI runs as root)")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    gs.file("orphans.sh", ORPHANS_SH)
    gs.write(ORPHANS)
    proc = foreground(gs, prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    kids = wait_for(lambda: psutil.Process(proc.pid).children(), 10, what="unshare's child")
    master = kids[0].pid
    with open(f"/proc/{master}/status") as fh:
        nspid = next(line.split()[1:] for line in fh if line.startswith("NSpid:"))
    assert nspid[-1] == "1", nspid  # the master is PID 1 of the new namespace
    return proc, master


def children(pid):
    """(pid, name, status) of a process's children, skipping those gone meanwhile."""
    out = []
    for child in psutil.Process(pid).children():
        try:
            out.append((child.pid, child.name(), child.status()))
        except psutil.NoSuchProcess:
            pass
    return out


def count(gs, i):
    try:
        return int((gs.root / f"count.{i}").read_text() or 0)
    except (OSError, ValueError):
        return 0


def test_pid1_reaps_orphans_and_drains_on_term(gs):
    proc, master = in_namespace(gs)
    try:
        wait_for(lambda: count(gs, 0) > 20 and count(gs, 1) > 20, 20, what="orphans made")
        orphans_seen, zombies_max = set(), 0
        start = count(gs, 0) + count(gs, 1)
        while count(gs, 0) + count(gs, 1) < start + 100:  # another 100 orphans come and go
            kids = children(master)
            zombies_max = max(zombies_max, sum(status == psutil.STATUS_ZOMBIE for _, _, status in kids))
            orphans_seen.update(pid for pid, name, status in kids if name == "sleep")
            time.sleep(0.05)
        assert len(orphans_seen) > 10  # they did come to the master (PID 1)
        assert zombies_max <= 2  # and were reaped as they died: none accumulates
        workers = [pid for pid, name, _ in children(master) if name != "sleep"]
        os.kill(master, signal.SIGTERM)
        assert proc.wait(20) == 0
        assert not any(alive(p) for p in workers)
    finally:
        kill_group_and_reap(proc)


def test_pid1_int_drains_and_a_second_signal_forces(gs):
    proc, master = in_namespace(gs)
    try:
        wait_for(lambda: count(gs, 0) and count(gs, 1), 20, what="workers running")
        os.kill(master, signal.SIGINT)
        assert proc.wait(20) == 0
    finally:
        kill_group_and_reap(proc)
    gs.file("stubborn.sh", "trap '' TERM INT\ntouch trapped\nwhile true; do sleep 0.05; done\n")
    gs.write("[program:stubborn]\ncommand = sh stubborn.sh\nstop_timeout = 60\n")
    err = gs.root / "stderr"
    with open(err, "wb") as fh:
        proc = foreground(gs, stderr=fh, prefix=("unshare", "--pid", "--fork", "--mount-proc"))
    try:
        master = wait_for(lambda: psutil.Process(proc.pid).children(), 10, what="the master")[0].pid
        wait_for(lambda: (gs.root / "trapped").exists(), 10, what="the worker to ignore TERM")
        os.kill(master, signal.SIGTERM)
        wait_for(lambda: "stopping every program" in err.read_text(), 10, what="the drain to begin")
        began = time.monotonic()
        os.kill(master, signal.SIGTERM)  # the worker ignores TERM: a second signal forces the exit
        proc.wait(20)
        assert time.monotonic() - began < 20 and "forced exit" in err.read_text()  # not the 60 s stop_timeout
    finally:
        kill_group_and_reap(proc)


# -- systemd Type=notify ---------------------------------------------------------------------------


def test_sd_notify_through_a_real_master(gs, tmp_path):
    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(0.5)
    gs.write("[program:sleeper]\ncommand = sleep 1000\nnumprocs = 2\n")
    env = dict(os.environ, NOTIFY_SOCKET=address, WATCHDOG_USEC="200000", WATCHDOG_PID="")
    proc = foreground(gs, env=env)
    got = []

    def until(pred, what, timeout=20):
        """The first datagram from now on for which pred(message) holds (all are kept in got)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                data = sock.recv(4096)
            except socket.timeout:
                continue
            msg = dict(line.split("=", 1) for line in data.decode().splitlines())
            got.append(msg)
            if pred(msg):
                return msg
        proc.send_signal(signal.SIGKILL)
        err = proc.stderr.read().decode() if proc.stderr else ""
        pytest.fail(f"no {what} from the master within {timeout}s; got {got[-5:]}; stderr: {err[-3000:]}")

    try:
        ready = until(lambda m: "READY" in m, "READY=1")
        assert re.fullmatch(r"2 workers: .*", ready["STATUS"])
        until(lambda m: m == {"WATCHDOG": "1"}, "watchdog ping")
        for row in gs.wait_workers("sleeper"):  # the workers do not get the master's socket
            environ = psutil.Process(row["pid"]).environ()
            assert "NOTIFY_SOCKET" not in environ and "WATCHDOG_USEC" not in environ
        gs.write("[program:sleeper]\ncommand = sleep 1000\nnumprocs = 3\n")
        os.kill(proc.pid, signal.SIGHUP)
        reloading = until(lambda m: "RELOADING" in m, "RELOADING=1")
        assert int(reloading["MONOTONIC_USEC"]) > 0
        since = len(got)
        until(lambda m: "READY" in m, "READY=1 after the reload")
        if not any(m.get("STATUS") == "3 workers: 3 RUNNING" for m in got[since:]):
            until(lambda m: m.get("STATUS") == "3 workers: 3 RUNNING", "STATUS= with the new count")
        pings = sum(m == {"WATCHDOG": "1"} for m in got)
        while pings < 3:
            until(lambda m: m == {"WATCHDOG": "1"}, "watchdog pings")
            pings += 1
        proc.send_signal(signal.SIGTERM)
        until(lambda m: m.get("STOPPING") == "1", "STOPPING=1")
        assert proc.wait(20) == 0
    finally:
        sock.close()
        kill_group_and_reap(proc)


# -- check under Kubernetes ------------------------------------------------------------------------


def test_check_warns_when_stop_timeout_exceeds_the_grace_period(gs, monkeypatch):
    gs.write("[program:long]\ncommand = sleep 1\nstop_timeout = 3600\n")
    assert "warning" not in gs.run("-s", "check").stderr
    monkeypatch.setenv("GSUPER_GRACE_SECONDS", "30")
    check = gs.run("-s", "check")
    assert check.returncode == 0 and "configuration OK" in check.stdout
    assert "[program:long] stop_timeout: 3600s is above GSUPER_GRACE_SECONDS=30" in check.stderr


def test_log_format_json_in_the_master_log_file(gs):
    gs.write("[gsuper]\nlog_format = json\n[program:once]\ncommand = sh -c 'echo out; exec sleep 1000'\n")
    gs.start()
    pid = gs.wait_workers("once")[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: "killed" in gs.log(), 10, what="the exit in the master log")
    docs = [json.loads(line) for line in gs.log().splitlines()]
    assert all(set(d) == {"time", "level", "program", "worker", "pid", "message"} for d in docs)
    exit_doc = next(d for d in docs if "killed" in d["message"])
    assert (exit_doc["program"], exit_doc["worker"], exit_doc["pid"]) == ("once", 0, pid)
    assert " [0] out" in gs.log("once")  # program logs in files keep their text format
    gs.run("-s", "stop", check=True)
