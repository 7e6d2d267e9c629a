"""The supervisor core through the real command line: start, restart policy, stop, exit, status."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import psutil
import pytest

from conftest import BIN, PHP, alive, wait_for

pytestmark = pytest.mark.timeout(90)

def size(path):
    try:
        return path.stat().st_size
    except FileNotFoundError:  # between a rotation's rename and the new file
        return 0


SLEEPER = """
[program:sleeper]
command = sleep 1000
numprocs = 3
"""


def test_start_status_stop(gs):
    gs.write(SLEEPER)
    out = gs.start().stdout
    assert "sleeper: 3 workers started" in out
    rows = gs.wait_workers("sleeper", "RUNNING")
    pids = [w["pid"] for w in rows]
    assert len(set(pids)) == 3 and all(alive(p) for p in pids)
    master = gs.master_pid()
    assert psutil.Process(master).cmdline()[0].startswith("gsuper: master")
    doc = gs.status()
    assert doc["master"]["pid"] == master and doc["master"]["config"] == str(gs.config)
    assert set(doc["workers"][0]) >= {
        "program",
        "index",
        "pid",
        "state",
        "uptime_s",
        "restarts",
        "requests",
        "rss_bytes",
        "last_exit",
    }
    assert [w["index"] for w in rows] == [0, 1, 2] and all(w["rss_bytes"] > 0 for w in rows)
    table = gs.run("-s", "status", check=True).stdout
    assert "sleeper" in table and "RUNNING" in table
    second = gs.run("-s", "start")
    assert second.returncode == 1 and f"already running (pid {master})" in second.stderr
    stop = gs.run("-s", "stop", check=True)
    assert "stopped" in stop.stdout
    assert not gs.running() and not any(alive(p) for p in pids)
    assert not (gs.root / "run" / "gsuper.pid").exists() and not (gs.root / "run" / "gsuper.sock").exists()
    again = gs.run("-s", "stop")
    assert again.returncode == 1 and "not running" in again.stderr


def test_worker_environment_and_directory(gs):
    (gs.root / "work").mkdir()
    gs.file("env.sh", 'echo "$GSUPER_PROGRAM $GSUPER_WORKER $APP_ENV $(pwd)"; exec sleep 1000\n')
    gs.write(f"""
    [program:envy]
    command = sh {gs.root}/env.sh
    numprocs = 2
    directory = work
    environment = APP_ENV=prod
    """)
    gs.start()
    wait_for(lambda: gs.log("envy").count("envy") == 2, what="both workers' lines")
    text = gs.log("envy")
    assert f"[0] envy 0 prod {gs.root}/work" in text and f"[1] envy 1 prod {gs.root}/work" in text
    assert len(os.listdir(gs.root / "run")) >= 2


def test_killed_worker_is_respawned_at_once(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1\nstartsecs = 0"))
    gs.start()
    old = gs.wait_workers("sleeper")[0]
    wait_for(lambda: gs.workers("sleeper")[0]["uptime_s"] >= 1.0, what="uptime past 1s")
    os.kill(old["pid"], signal.SIGKILL)
    new = wait_for(lambda: [w for w in gs.workers("sleeper") if w["pid"] not in (None, old["pid"])], what="a new pid")[0]
    assert new["restarts"] == 1 and new["last_exit"] == {"reason": "killed", "code": -9}
    assert new["uptime_s"] < 1.0  # no backoff delay for a worker that had been up


def test_crash_loop_backs_off_to_fatal_without_slowing_others(gs):
    gs.write("""
    [program:crasher]
    command = sh -c "exit 3"
    startretries = 3
    [program:sleeper]
    command = sleep 1000
    """)
    gs.start()
    steady = gs.wait_workers("sleeper")[0]["pid"]
    fatal = gs.wait_workers("crasher", "FATAL")[0]
    assert fatal["restarts"] == 3 and fatal["last_exit"] == {"reason": "crashed", "code": 3}
    log = gs.log()
    assert "retry in 0.1s" in log and "retry in 0.2s" in log and "retry in 0.4s" in log
    assert "FATAL after 4 failed starts" in log
    assert gs.workers("sleeper")[0]["pid"] == steady
    # A FATAL program comes back with an explicit start of it.
    gs.file("fix.txt", "")
    gs.run("-s", "start", "-p", "crasher", check=True)
    wait_for(lambda: gs.workers("crasher")[0]["restarts"] >= 4, what="a fresh try")


def test_autorestart_false_and_unexpected(gs):
    gs.write("""
    [program:once]
    command = sh -c "sleep 1.2; exit 0"
    autorestart = false
    [program:picky]
    command = sh -c "sleep 1.2; exit $((GSUPER_WORKER * 5))"
    numprocs = 2
    autorestart = unexpected
    exitcodes = 0
    """)
    gs.start()
    gs.wait_workers("once", "EXITED")
    wait_for(lambda: gs.workers("picky")[0]["state"] == "EXITED" and gs.workers("picky")[1]["restarts"] >= 1, what="policy")
    once = gs.workers("once")[0]
    assert once["restarts"] == 0 and once["last_exit"] == {"reason": "exited", "code": 0}
    picky = gs.workers("picky")
    assert picky[0]["restarts"] == 0 and picky[1]["last_exit"]["code"] == 5


@pytest.mark.timing
@pytest.mark.skipif(PHP is None, reason="php-cli is not installed")
def test_stop_waits_for_the_request_in_progress(gs):
    # A PHP worker whose 2-second request may not be cut: TERM is blocked while it runs.
    gs.file(
        "slow.php",
        """<?php
    pcntl_async_signals(true);
    $stop = false;
    pcntl_signal(SIGTERM, function () use (&$stop) { $stop = true; });
    $n = 0;
    while (!$stop) {
        pcntl_sigprocmask(SIG_BLOCK, [SIGTERM]);
        $id = getenv('GSUPER_WORKER') . '-' . $n++;
        file_put_contents(__DIR__ . '/begun.txt', "$id\\n", FILE_APPEND | LOCK_EX);
        sleep(2);
        file_put_contents(__DIR__ . '/done.txt', "$id\\n", FILE_APPEND | LOCK_EX);
        pcntl_sigprocmask(SIG_UNBLOCK, [SIGTERM]);
    }
    """,
    )
    gs.write(f"""
    [program:slow]
    command = {PHP} slow.php
    numprocs = 3
    stop_timeout = 10
    """)
    gs.start()
    wait_for(
        lambda: (gs.root / "begun.txt").exists() and len((gs.root / "begun.txt").read_text().split()) >= 3, what="requests begun"
    )
    started = time.monotonic()
    gs.run("-s", "stop", check=True)
    begun = sorted((gs.root / "begun.txt").read_text().split())
    done = sorted((gs.root / "done.txt").read_text().split())
    assert begun == done, "a request was cut off by the stop"
    assert time.monotonic() - started < 8
    assert gs.log().count("exited: stopped, code 0") == 3


def test_worker_ignoring_term_is_killed_with_its_children(gs):
    gs.file(
        "stubborn.py",
        """
    import os, signal, subprocess, time
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    child = subprocess.Popen(["sleep", "1000"])
    open("child.pid", "w").write(str(child.pid))
    while True:
        time.sleep(1)
    """,
    )
    gs.write(f"""
    [program:stubborn]
    command = {sys.executable} stubborn.py
    stop_timeout = 1
    """)
    gs.start()
    pid = gs.wait_workers("stubborn")[0]["pid"]
    child = int(wait_for(lambda: (gs.root / "child.pid").exists() and (gs.root / "child.pid").read_text(), what="child pid"))
    started = time.monotonic()
    proc = gs.run("-s", "stop")
    took = time.monotonic() - started
    assert proc.returncode == 1 and "1 worker did not finish within the timeout and was killed" in proc.stderr
    assert 0.9 < took < 6
    assert not alive(pid) and not alive(child)
    assert "did not stop within 1.0s: SIGKILL" in gs.log()


@pytest.mark.timing
def test_exit_kills_everything_at_once(gs):
    gs.file("stubborn.sh", "trap '' TERM\nsleep 1000 &\nwhile true; do sleep 1; done\n")
    gs.write(f"""
    [program:stubborn]
    command = sh {gs.root}/stubborn.sh
    numprocs = 2
    stop_timeout = 60
    """)
    gs.start()
    rows = gs.wait_workers("stubborn")
    tree = [p.pid for w in rows for p in [psutil.Process(w["pid"]), *psutil.Process(w["pid"]).children(recursive=True)]]
    master = gs.master_pid()
    started = time.monotonic()
    gs.run("-s", "exit", check=True)
    assert time.monotonic() - started < 5
    wait_for(lambda: not any(alive(p) for p in [master, *tree]), 5, what="everything gone")
    assert not (gs.root / "run" / "gsuper.pid").exists() and not (gs.root / "run" / "gsuper.sock").exists()


def test_killed_master_takes_its_workers_along_and_is_taken_over(gs):
    gs.write(SLEEPER)
    gs.start()
    pids = [w["pid"] for w in gs.wait_workers("sleeper")]
    master = gs.master_pid()
    os.kill(master, signal.SIGKILL)
    wait_for(lambda: not any(alive(p) for p in pids), 10, what="workers to follow their master")
    assert (gs.root / "run" / "gsuper.pid").exists()  # stale
    gs.start()
    assert gs.master_pid() != master
    fresh = gs.wait_workers("sleeper")
    assert len(fresh) == 3 and not set(pids) & {w["pid"] for w in fresh}


def test_program_and_group_selection(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    [program:b]
    command = sleep 1000
    numprocs = 2
    [group:bees]
    programs = b
    """)
    gs.start()
    a_pid = gs.wait_workers("a")[0]["pid"]
    gs.wait_workers("b")
    out = gs.run("-s", "stop", "-g", "bees", check=True)
    assert "stopped b" in out.stdout
    assert {w["state"] for w in gs.workers("b")} == {"STOPPED"}
    assert gs.workers("a")[0]["pid"] == a_pid and gs.running()
    assert [w["program"] for w in gs.status("-g", "bees")["workers"]] == ["b", "b"]
    gs.run("-s", "start", "-p", "b", check=True)
    gs.wait_workers("b")
    assert gs.workers("a")[0]["pid"] == a_pid
    bad = gs.run("-s", "stop", "-p", "nope")
    assert bad.returncode == 2 and "no program named 'nope'" in bad.stderr


def test_restart_is_stop_then_start(gs):
    gs.write(SLEEPER)
    gs.start()
    old = {w["pid"] for w in gs.wait_workers("sleeper")}
    master = gs.master_pid()
    gs.run("-s", "restart", check=True)
    assert gs.master_pid() != master
    assert not old & {w["pid"] for w in gs.wait_workers("sleeper")}


def test_signals_to_the_master(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    gs.start()
    pid = gs.wait_workers("sleeper")[0]["pid"]
    master = gs.master_pid()
    os.rename(gs.root / "log" / "gsuper.log", gs.root / "log" / "moved.log")
    os.kill(master, signal.SIGUSR1)
    wait_for(lambda: "log files reopened" in gs.log(), what="a new master log")
    os.kill(master, signal.SIGTERM)
    wait_for(lambda: not gs.running(), what="the master to stop on TERM")
    assert not alive(pid)


@pytest.mark.timing
def test_noisy_worker_never_blocks_the_master(gs):
    gs.file(
        "noisy.py",
        """
    import sys
    line = "x" * 200 + "\\n"
    while True:
        sys.stdout.write(line * 100)
    """,
    )
    gs.write(f"""
    [gsuper]
    log_max_bytes = 1M
    log_backups = 2
    [program:noisy]
    command = {sys.executable} noisy.py
    [program:sleeper]
    command = sleep 1000
    startsecs = 0
    """)
    gs.start()
    pid = gs.wait_workers("sleeper")[0]["pid"]
    master = psutil.Process(gs.master_pid())
    wait_for(lambda: (gs.root / "log" / "noisy.log.1").exists(), 20, what="a first rotation")
    rss_before = master.memory_info().rss
    wait_for(lambda: (gs.root / "log" / "noisy.log.2").exists(), 20, what="a second rotation")
    wait_for(lambda: size(gs.root / "log" / "noisy.log") > 512 * 1024, 20, what="more output")
    assert master.memory_info().rss - rss_before < 8 * 1024 * 1024, "the master grows with a worker's output"
    os.kill(pid, signal.SIGKILL)
    started = time.monotonic()
    wait_for(lambda: gs.workers("sleeper")[0]["pid"] not in (None, pid), what="respawn beside a noisy worker")
    assert time.monotonic() - started < 3
    gs.run("-s", "stop", "-p", "noisy", check=True)  # the files hold still for the checks
    logs = [gs.root / "log" / n for n in ("noisy.log", "noisy.log.1", "noisy.log.2")]
    assert sum(p.stat().st_size for p in logs if p.exists()) <= 3 * (1024 * 1024 + 65536 + 4096)
    assert not (gs.root / "log" / "noisy.log.3").exists()
    assert gs.root.joinpath("log", "noisy.log.1").read_text().startswith("20")  # lines carry their time


def test_garbage_on_the_control_socket(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    gs.start()
    pid = gs.wait_workers("sleeper")[0]["pid"]
    path = str(gs.root / "run" / "gsuper.sock")
    assert oct(os.stat(path).st_mode & 0o777) == "0o600"
    for payload in (b"garbage\n", b"\x00\xff\n", b"[1,2]\n", b'{"cmd": "nope"}\n', b'{"cmd": 5}\n', b"x" * (2 << 20)):
        with socket.socket(socket.AF_UNIX) as s:
            s.connect(path)
            try:
                s.sendall(payload)
                reply = json.loads(s.makefile().readline())
            except (BrokenPipeError, ConnectionResetError):
                continue
            assert reply["ok"] is False and reply["error"]
    with socket.socket(socket.AF_UNIX) as s:  # half-written, then gone
        s.connect(path)
        s.sendall(b'{"cmd": "sta')
    assert gs.workers("sleeper")[0]["pid"] == pid


def test_cli_misuse(gs, tmp_path):
    for argv, fragment in (
        (["-s", "bogus"], "unknown command 'bogus'"),
        (["-s", "start", "--nope"], "wrong options for start"),
        (["frobnicate"], "a command is required"),
        (["-s", "status", "-c", str(tmp_path / "absent.ini")], "no such configuration file"),
        (["help", "nope"], "no help for 'nope'"),
        (["-s", "stop", "--timeout", "soon", "-c", str(tmp_path / "absent.ini")], "no such configuration file"),
    ):
        proc = subprocess.run([sys.executable, BIN, *argv], capture_output=True, text=True, cwd=tmp_path)
        assert proc.returncode == 2, (argv, proc.stderr)
        assert fragment in proc.stderr and "Traceback" not in proc.stderr
        assert proc.stderr.count("\n") == 1
    assert "gsuper -s stop" in subprocess.run([sys.executable, BIN, "help", "stop"], capture_output=True, text=True).stdout
    assert subprocess.run([sys.executable, BIN, "--version"], capture_output=True, text=True).stdout.startswith("gsuper ")


def test_default_config_is_gsuper_ini_in_the_current_folder(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    proc = subprocess.run([sys.executable, BIN, "-s", "check"], capture_output=True, text=True, cwd=gs.root)
    assert proc.returncode == 0 and str(gs.config) in proc.stdout


def test_foreground_master(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    with gs.popen("-s", "start", "--foreground") as proc:
        assert "sleeper: 1 worker started" in proc.stdout.readline()
        pid = gs.wait_workers("sleeper")[0]["pid"]
        proc.send_signal(signal.SIGINT)
        assert proc.wait(15) == 0
        assert not alive(pid)
        assert "received SIGINT" in proc.stderr.read()


def test_a_broken_file_does_not_lock_out_its_running_master(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    gs.start()
    pid = gs.wait_workers("sleeper")[0]["pid"]
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = lots"))  # an edit with a typo, saved
    status = gs.run("-s", "status", check=True)
    assert "sleeper" in status.stdout and "acting on the running master anyway" in status.stderr
    assert "[program:sleeper] numprocs" in status.stderr
    refused = gs.run("-s", "reload")
    assert refused.returncode == 2 and gs.workers("sleeper")[0]["pid"] == pid
    gs.run("-s", "stop", check=True)
    assert not gs.running() and not alive(pid)
    again = gs.run("-s", "status")  # no master now: the config error is the answer
    assert again.returncode == 2 and "numprocs" in again.stderr


def test_workers_inherit_only_their_own_descriptors(gs):
    gs.file("fds.py", """
    import os, time
    fds = sorted(int(fd) for fd in os.listdir("/proc/self/fd"))  # listdir's own fd is among them
    print("fds", *fds, "status", os.environ["GSUPER_STATUS_FD"], flush=True)
    time.sleep(1000)
    """)
    gs.write(f"""
    [program:fds]
    command = {sys.executable} fds.py
    numprocs = 3
    """)
    gs.start()
    wait_for(lambda: gs.log("fds").count(" status ") == 3, what="three listings")
    for line in gs.log("fds").splitlines():
        fds, status_fd = line.split(" fds ")[1].split(" status ")
        extra = set(fds.split()) - {"0", "1", "2", status_fd}
        assert len(extra) <= 1, f"a worker inherited descriptors it should not have: {line}"
    pid = gs.workers("fds")[0]["pid"]
    assert psutil.Process(pid).cmdline()[1].endswith("fds.py")  # setpriv exec'd the command itself


def test_a_command_that_cannot_execute_is_reported(gs):
    # The file is checked at start; here it loses its exec bit afterwards, as in a bad deploy.
    script = gs.file("job.sh", "#!/bin/sh\nexec sleep 1000\n", mode=0o755)
    gs.write("""
    [program:job]
    command = ./job.sh
    startretries = 0
    """)
    gs.start()
    pid = gs.wait_workers("job")[0]["pid"]
    script.chmod(0o644)
    os.kill(pid, signal.SIGKILL)
    row = gs.wait_workers("job", "FATAL")[0]
    assert row["last_exit"]["code"] == 126 and "could not execute ./job.sh (exit 126)" in row["last_error"]
    assert "Permission denied" in gs.log("job")


def test_bad_timeout_is_bad_usage(gs):
    gs.write(SLEEPER.replace("numprocs = 3", "numprocs = 1"))
    proc = gs.run("-s", "stop", "--timeout", "soon")
    assert proc.returncode == 2 and "--timeout:" in proc.stderr and "Traceback" not in proc.stderr
