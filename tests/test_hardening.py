"""Hardening (issue 9): planted symlinks, unsafe folders, descriptor limits, log write errors,
strict control requests, configuration edge cases, stray signals, a moved rundir, and smaller
wrong words. Each test goes through the real command line and the real control socket."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import BIN, PHP, alive, wait_for

pytestmark = pytest.mark.timeout(120)


def gsuper(
    *args: str, cwd: Path, limits: dict[int, tuple[int, int]] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """bin/gsuper with resource limits set in the child first (as `ulimit` would)."""

    def preexec() -> None:
        for which, value in (limits or {}).items():
            resource.setrlimit(which, value)

    return subprocess.run(
        [sys.executable, BIN, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd, preexec_fn=preexec
    )


def ask(gs: Any, raw: bytes) -> dict[str, Any]:
    """One raw request on the control socket, its reply parsed."""
    with socket.socket(socket.AF_UNIX) as sock:
        sock.settimeout(10)
        sock.connect(str(gs.root / "run" / "gsuper.sock"))
        sock.sendall(raw + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    assert buf, "the master closed the connection without a reply"
    return json.loads(buf)  # type: ignore[no-any-return]


# -- 1. planted symlinks ------------------------------------------------------------------------


def open_folders(gs: Any) -> tuple[Path, Path]:
    run, log = gs.root / "run", gs.root / "log"
    for folder in (run, log):
        folder.mkdir()
        folder.chmod(0o1777)  # writable by everyone, sticky: allowed, but links may be planted
    return run, log


def victim(gs: Any, name: str) -> Path:
    path = gs.root / name
    path.write_text("precious\n")
    return path


def test_links_planted_as_pid_file_or_master_log_are_refused_not_followed(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    """)
    run, log = open_folders(gs)
    target = victim(gs, "victim-log")
    (log / "gsuper.log").symlink_to(target)
    proc = gs.run("-s", "start")
    assert proc.returncode == 1 and "gsuper.log is a symbolic link, which the master never follows; remove it" in proc.stderr
    assert target.read_text() == "precious\n"
    (log / "gsuper.log").unlink()

    target = victim(gs, "victim-pid")
    (run / "gsuper.pid").symlink_to(target)
    proc = gs.run("-s", "start")
    assert proc.returncode == 1 and "gsuper.pid is a symbolic link" in proc.stderr
    assert target.read_text() == "precious\n"
    assert not gs.running()


def test_links_planted_as_record_temp_or_program_log_are_never_written_through(gs):
    gs.file("talk.sh", "while :; do echo line from the worker; sleep 0.01; done\n")
    gs.write("""
    [gsuper]
    log_max_bytes = 4K
    log_backups = 0
    [program:a]
    command = sh talk.sh
    [program:b]
    command = sh talk.sh
    """)
    run, log = open_folders(gs)
    tmp_target, log_target = victim(gs, "victim-tmp"), victim(gs, "victim-a")
    (run / "workers.json.tmp").symlink_to(tmp_target)
    (log / "a.log").symlink_to(log_target)
    gs.start()
    gs.wait_workers("a")
    wait_for(lambda: (run / "workers.json").is_file(), what="the takeover record")
    wait_for(lambda: "a.log is a symbolic link" in gs.log() or "a.log: Too many levels" in gs.log(), what="the refusal logged")
    # Rotation (log_backups = 0 truncates) and reopen (SIGUSR1) of a log swapped for a link.
    b_log = log / "b.log"
    wait_for(lambda: b_log.exists() and b_log.stat().st_size > 100, what="b.log written")
    b_target = victim(gs, "victim-b")
    b_log.unlink()
    b_log.symlink_to(b_target)
    os.kill(gs.master_pid(), signal.SIGUSR1)
    wait_for(lambda: gs.log().count("cannot write") >= 2, what="b.log refused on reopen")
    for target in (tmp_target, log_target, b_target):
        assert target.read_text() == "precious\n", f"{target.name} was written through a link"
    assert "Traceback" not in gs.log()
    gs.run("-s", "stop", check=True)


def test_rundir_or_logdir_open_to_others_is_refused_with_the_fix(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    """)
    run = gs.root / "run"
    run.mkdir()
    run.chmod(0o777)  # no sticky bit: anyone may replace our files
    proc = gs.run("-s", "check")
    assert proc.returncode == 2
    assert f"{run} is writable by every user; remove that (chmod o-w {run}) or set the sticky bit" in proc.stderr
    run.chmod(0o755)
    log = gs.root / "log"
    log.mkdir()
    os.chown(log, 65534, 65534)  # another user's folder
    proc = gs.run("-s", "start")
    assert proc.returncode == 2 and f"{log} is owned by uid 65534" in proc.stderr
    assert not gs.running()
    os.chown(log, 0, 0)
    assert gs.run("-s", "check").returncode == 0


# -- 2. descriptors -----------------------------------------------------------------------------


def test_check_and_start_say_when_the_hard_descriptor_limit_is_too_low(gs):
    gs.write("""
    [program:many]
    command = sleep 1000
    numprocs = 600
    """)
    limits = {resource.RLIMIT_NOFILE: (1024, 1024)}
    for command in ("check", "start"):
        proc = gsuper("-s", command, "-c", str(gs.config), cwd=gs.root, limits=limits)
        assert proc.returncode == 2, proc.stderr
        assert "600 workers need about" in proc.stderr and "over the hard limit of 1024 (ulimit -Hn)" in proc.stderr
        assert "Traceback" not in proc.stderr
    assert not gs.running()


def test_start_raises_the_soft_descriptor_limit_to_the_hard_one(gs):
    gs.write("""
    [program:many]
    command = sleep 1000
    numprocs = 120
    """)
    proc = gsuper("-s", "start", "-c", str(gs.config), cwd=gs.root, limits={resource.RLIMIT_NOFILE: (128, 4096)})
    assert proc.returncode == 0, proc.stderr
    assert psutil.Process(gs.master_pid()).rlimit(psutil.RLIMIT_NOFILE) == (4096, 4096)
    rows = gs.wait_workers("many", "RUNNING", timeout=30)
    assert len(rows) == 120 and not any(w["last_error"] for w in rows)
    gs.run("-s", "stop", check=True)


def fds_of(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_out_of_descriptors_at_respawn_is_retried_never_fatal(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    numprocs = 3
    startsecs = 0
    """)
    gs.start()
    rows = gs.wait_workers("a")
    wait_for(lambda: all(w["uptime_s"] >= 1.0 for w in gs.workers("a")), what="workers up 1 s")
    master = psutil.Process(gs.master_pid())
    open_now = fds_of(master.pid)
    # Once the three workers are gone (6 pipe ends closed), one descriptor is left: enough for a
    # control connection, not for the two pipes of a spawn.
    hard = master.rlimit(psutil.RLIMIT_NOFILE)[1]
    master.rlimit(psutil.RLIMIT_NOFILE, (open_now - 5, hard))
    for w in rows:
        os.kill(w["pid"], signal.SIGKILL)
    wait_for(lambda: gs.log().count("too many open files in the master") >= 15, 20, "five retries of each slot")
    now = ask(gs, b'{"cmd": "status", "rss": false}')["status"]["workers"]  # one descriptor: enough
    assert {w["state"] for w in now} == {"BACKOFF"} and {w["last_error"] for w in now} == {"too many open files"}
    master.rlimit(psutil.RLIMIT_NOFILE, (hard, hard))
    back = gs.wait_workers("a", "RUNNING", timeout=10)
    assert "FATAL" not in gs.log()
    assert all(w["pid"] not in {r["pid"] for r in rows} for w in back)
    gs.run("-s", "stop", check=True)


def test_a_flood_of_control_connections_does_not_starve_respawns(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    numprocs = 4
    startsecs = 0
    """)
    gs.start()
    rows = gs.wait_workers("a")
    wait_for(lambda: all(w["uptime_s"] >= 1.0 for w in gs.workers("a")), what="workers up 1 s")
    master = psutil.Process(gs.master_pid())
    room = fds_of(master.pid) + 40  # the connection cap (32) fits, a flood of 200 does not
    hard = master.rlimit(psutil.RLIMIT_NOFILE)[1]
    master.rlimit(psutil.RLIMIT_NOFILE, (room, hard))
    flood = []
    try:
        for _ in range(200):
            sock = socket.socket(socket.AF_UNIX)
            sock.connect(str(gs.root / "run" / "gsuper.sock"))  # the listen backlog takes them
            flood.append(sock)
        old = {w["pid"] for w in rows}
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        def respawned() -> bool:
            try:
                kids = [c for c in master.children() if c.status() != psutil.STATUS_ZOMBIE]
            except psutil.NoSuchProcess:  # a child that died between the two reads: look again
                return False
            return len(kids) == 4 and not {c.pid for c in kids} & old

        wait_for(respawned, 20, "four fresh workers")
    finally:
        for sock in flood:
            sock.close()
    master.rlimit(psutil.RLIMIT_NOFILE, (hard, hard))
    back = gs.wait_workers("a", "RUNNING", timeout=15)
    assert len(back) == 4 and "FATAL" not in gs.log()
    gs.run("-s", "stop", check=True)


# -- 3. log write errors ------------------------------------------------------------------------


def test_a_log_over_the_file_size_limit_is_reported_once_and_dropped(gs):
    gs.file("talk.sh", "while :; do echo 0123456789012345678901234567890123456789; done\n")
    gs.write("""
    [program:talk]
    command = sh talk.sh
    """)
    proc = gsuper("-s", "start", "-c", str(gs.config), cwd=gs.root, limits={resource.RLIMIT_FSIZE: (256 << 10, 256 << 10)})
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: "talk.log: File too large" in gs.log(), what="EFBIG reported")
    first_pid = gs.wait_workers("talk")[0]["pid"]
    size = (gs.root / "log" / "talk.log").stat().st_size
    assert size <= 256 << 10
    # Another second of output after the limit: still one report, no traceback.
    wait_for(lambda: gs.workers("talk")[0]["uptime_s"] > 2.0, what="the worker running on")
    log = gs.log()
    assert log.count("File too large") == 1 and "Traceback" not in log
    assert gs.workers("talk")[0]["pid"] == first_pid
    gs.run("-s", "stop", check=True)


# -- 4. control requests ------------------------------------------------------------------------


def test_control_requests_of_the_wrong_type_get_an_error_and_change_nothing(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    numprocs = 2
    """)
    gs.start()
    gs.wait_workers("a")
    bad = [
        (b'{"cmd": "scale", "program": "a", "numprocs": true}', "numprocs must be a whole number"),
        (b'{"cmd": "scale", "program": "a", "numprocs": 1.0}', "numprocs must be a whole number"),
        (b'{"cmd": "stop", "timeout": NaN}', "bad request"),
        (b'{"cmd": "stop", "timeout": 1e400}', "timeout must be a number"),
        (b'{"cmd": "stop", "timeout": -1}', "timeout must be a number"),
        (b'{"cmd": "stop", "timeout": "2"}', "timeout must be a number"),
        (b'{"cmd": "status", "programs": [["a"]]}', "programs must be a list of names"),
        (b'{"cmd": "status", "programs": [1]}', "programs must be a list of names"),
        (b'{"cmd": "restart", "rolling": 1}', "rolling must be true or false"),
        (b'{"cmd": "status", "x": ' + b"[" * 100000 + b"]" * 100000 + b"}", "nested deeper"),
        (b"[" * 50000, "bad request"),
    ]
    for raw, words in bad:
        reply = ask(gs, raw)
        assert reply["ok"] is False and words in reply["error"], (raw[:60], reply)
    rows = gs.workers("a")
    assert len(rows) == 2 and {w["state"] for w in rows} == {"RUNNING"}
    assert "Traceback" not in gs.log() and "RecursionError" not in gs.log()
    assert ask(gs, b'{"cmd": "ping"}')["ok"] is True
    gs.run("-s", "stop", check=True)


# -- 5. configuration edge cases ----------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("[program:a]\ncommand = echo http://example.com/#top\n", "[program:a] command: the value looks cut by a '#' comment"),
        ("[program:a]\ncommand = sleep 1000 --queue=#jobs\n", "line 2: [program:a] command: the value looks cut"),
        ("[program:a]\ncommand = sleep 1\nmemory_limit = " + "9" * 400 + "\n", "memory_limit: \"" + "9" * 40 + "\" is too big"),
        ("[gsuper]\nlog_max_bytes = " + "9" * 400 + "\n[program:a]\ncommand = sleep 1\n", "log_max_bytes:"),
        ("[program:a]\ncommand = sleep 1\nstopsignal = STOP\n", 'stopsignal: "STOP" cannot stop a worker'),
        ("[program:gsuper]\ncommand = sleep 1\n", "the name gsuper is the master's own"),
    ],
)
def test_configuration_edge_cases_are_one_sentence(gs, text, words):
    gs.config.write_text(text)
    proc = gs.run("-s", "check")
    assert proc.returncode == 2 and words in proc.stderr, proc.stderr
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr


def test_supervisor_spellings_bom_and_inline_semicolon_comments(gs):
    gs.root.joinpath("my script.sh").write_text("echo ran > ran.txt\nexec sleep 1000\n")
    gs.root.joinpath("my script.sh").chmod(0o755)
    gs.config.write_text(
        "\ufeff[gsuper]\nloglevel = DEBUG\n"
        "[program:a]\ncommand = sleep 1000 ; the comment\nautorestart = True\n"
        '[program:b]\ncommand = "./my script.sh"\n'
    )
    assert gs.run("-s", "check", check=True).stdout.endswith("configuration OK (2 programs, 2 workers, 0 groups)\n")
    gs.start()
    a = gs.wait_workers("a")[0]
    assert psutil.Process(a["pid"]).cmdline()[-2:] == ["sleep", "1000"]
    wait_for(lambda: (gs.root / "ran.txt").exists(), what="the quoted script ran as one word")
    gs.run("-s", "stop", check=True)


def test_scale_with_a_unicode_digit_and_check_of_an_endless_file(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    """)
    proc = gs.run("-s", "scale", "a=²")
    assert proc.returncode == 2 and "scale takes NAME=N" in proc.stderr
    proc = gs.run("-s", "check", "-c", "/dev/zero", timeout=20)
    assert proc.returncode == 2 and "too big to be a configuration file" in proc.stderr


def test_check_catches_a_socket_path_over_the_unix_limit(gs):
    deep = gs.root / ("d" * 60) / ("e" * 60)
    gs.write(f"""
    [gsuper]
    rundir = {deep}
    [program:a]
    command = sleep 1000
    """)
    proc = gs.run("-s", "check")
    assert proc.returncode == 2 and "over the 107 a Unix socket path may have; use a shorter rundir" in proc.stderr


def test_the_same_config_through_a_link_is_the_same_master(gs, tmp_path):
    gs.write("""
    [program:a]
    command = sleep 1000
    """)
    elsewhere = Path(tempfile.mkdtemp(dir=tmp_path))
    link = elsewhere / "gsuper.ini"
    link.symlink_to(gs.config)
    gs.start()
    proc = gs.run("-s", "start", "-c", str(link))
    assert proc.returncode == 1 and "already running" in proc.stderr
    assert not (elsewhere / "run").exists()
    status = json.loads(gs.run("-s", "status", "--json", "-c", str(link), check=True).stdout)
    assert len(status["workers"]) == 1
    gs.run("-s", "stop", "-c", str(link), check=True)


# -- 6. a moved rundir, stray signals, other users ------------------------------------------------


def test_an_edited_rundir_still_finds_the_running_master(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    numprocs = 2
    """)
    gs.start()
    pid = gs.master_pid()
    gs.write("""
    [gsuper]
    rundir = elsewhere
    [program:a]
    command = sleep 1000
    numprocs = 2
    """)
    proc = gs.run("-s", "reload", check=True)
    assert "rundir changed in the file" in proc.stdout and "until the next restart" in proc.stdout
    proc = gs.run("-s", "start")
    assert proc.returncode == 1 and f"already running (pid {pid})" in proc.stderr
    assert "takes effect at the next restart" in proc.stderr
    status = json.loads(gs.run("-s", "status", "--json", check=True).stdout)
    assert status["master"]["pid"] == pid and len(status["workers"]) == 2
    gs.run("-s", "stop", check=True)
    assert not alive(pid)


def test_stray_signals_do_not_end_the_master(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    """)
    gs.start()
    before = gs.wait_workers("a")[0]["pid"]
    master = gs.master_pid()
    for sig in (signal.SIGUSR2, signal.SIGALRM, signal.SIGVTALRM, signal.SIGPROF, signal.SIGRTMIN + 3):
        os.kill(master, sig)
    wait_for(lambda: gs.log().count("which the master does not use: ignored") == 5, what="five signals logged")
    assert alive(master) and gs.workers("a")[0]["pid"] == before
    gs.run("-s", "stop", check=True)


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root and setpriv")
def test_another_user_asking_root_master_to_exit_gets_one_sentence(gs):
    folder = Path(tempfile.mkdtemp(prefix="gsuper-other-", dir="/tmp"))
    try:
        folder.chmod(0o755)
        config = folder / "gsuper.ini"
        config.write_text("[program:a]\ncommand = sleep 1000\n")
        gsuper("-s", "start", "-c", str(config), cwd=folder).check_returncode()
        nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
        argv = [*nobody, sys.executable, BIN, "-s", "exit", "-c", str(config)]
        proc = subprocess.run(argv, capture_output=True, text=True, timeout=30, cwd="/")
        assert proc.returncode == 1, proc.stderr
        assert "permission denied" in proc.stderr and "run this as root or as the user the master runs as" in proc.stderr
        assert "internal error" not in proc.stderr
        assert gsuper("-s", "status", "-c", str(config), cwd=folder).returncode == 0  # still running
    finally:
        gsuper("-s", "exit", "-c", str(config), cwd=folder)
        shutil.rmtree(folder, ignore_errors=True)


# -- 8. memory_limit below the resting size ---------------------------------------------------


@pytest.mark.skipif(PHP is None, reason="php is not installed")
def test_memory_limit_below_the_resting_size_warns_and_ends_in_fatal(gs):
    gs.file("job.php", "<?php usleep(1000);\n")
    gs.write("""
    [program:tiny]
    runner = php
    script = job.php
    memory_limit = 2M
    startretries = 2
    """)
    proc = gs.run("-s", "check", check=True)
    assert "memory_limit: 2M is below the 10M the php runner uses at rest" in proc.stderr
    gs.start()
    row = gs.wait_workers("tiny", "FATAL", timeout=20)[0]
    assert row["restarts"] == 2 and "over memory_limit (2M) before serving a request" in row["last_error"]
    gs.run("-s", "stop", check=True)


# -- 12. smaller: a killed stop, exitcodes, each group's own timeout ------------------------------


def test_stop_that_has_to_sigkill_says_how_many_and_exits_1(gs):
    gs.file("stubborn.sh", "trap '' TERM\nwhile :; do sleep 0.1; done\n")
    gs.write("""
    [program:stubborn]
    command = sh stubborn.sh
    numprocs = 2
    """)
    gs.start()
    gs.wait_workers("stubborn")
    proc = gs.run("-s", "stop", "--timeout", "1")
    assert proc.returncode == 1, gs.log()
    assert "2 workers did not finish within the timeout and were killed (SIGKILL)" in proc.stderr
    assert not gs.running()


def test_an_exit_code_listed_in_exitcodes_is_exited_not_crashed(gs):
    gs.write("""
    [program:three]
    command = sh -c "sleep 1.1; exit 3"
    exitcodes = 0, 3
    """)
    gs.start()
    row = wait_for(lambda: [w for w in gs.workers("three") if w["last_exit"]], what="an exit")[0]
    assert row["last_exit"] == {"reason": "exited", "code": 3}
    gs.run("-s", "stop", check=True)


def test_start_after_a_killed_master_waits_each_groups_own_stop_timeout(gs):
    gs.file("stubborn.sh", "trap '' TERM\nwhile :; do sleep 0.1; done\n")
    gs.write("""
    [program:quick]
    command = sh stubborn.sh
    stop_timeout = 1
    [program:slow]
    command = sleep 1000
    stop_timeout = 60
    """)
    gs.start()
    quick = gs.wait_workers("quick")[0]["pid"]
    gs.wait_workers("slow")
    record = gs.root / "run" / "workers.json"
    wait_for(lambda: record.is_file() and len(json.loads(record.read_text())["workers"]) == 2, what="the record")
    os.kill(gs.master_pid(), signal.SIGKILL)
    wait_for(lambda: not gs.running(), what="the master gone")
    assert alive(quick)  # it ignores the PDEATHSIG TERM
    began = time.monotonic()
    gs.start()  # slow's 60 s must not be waited: its group is gone; quick's 1 s is
    took = time.monotonic() - began
    assert not alive(quick)
    assert took < 30, f"start waited {took:.1f}s"
    gs.run("-s", "exit", check=True)


# -- 7. the status pipe held by a worker's children ---------------------------------------------


def test_respawn_does_not_wait_for_the_status_pipe_children_hold(gs):
    # The background sleep inherits the status pipe, so its EOF never comes while it lives; the
    # respawn must not wait for it (it used to wait the whole 0.2 s drain every time).
    gs.file("kid.sh", """
    echo "start $(date +%s%N)" >> times.txt
    sleep 1000 &
    sleep 1.1
    echo "end $(date +%s%N)" >> times.txt
    """)
    gs.write("""
    [program:kid]
    command = sh kid.sh
    """)
    gs.start()

    def lives() -> list[tuple[str, int]] | None:
        path = gs.root / "times.txt"
        rows = [(w, int(t)) for w, t in (ln.split() for ln in path.read_text().splitlines())] if path.exists() else []
        return rows if sum(1 for w, _ in rows if w == "start") >= 4 else None

    rows = wait_for(lives, 20, "four lives")
    gaps = [(b[1] - a[1]) / 1e9 for a, b in zip(rows, rows[1:], strict=False) if a[0] == "end" and b[0] == "start"]
    assert len(gaps) >= 3
    assert min(gaps) < 0.15, f"respawn gaps {gaps}"
    gs.run("-s", "stop", check=True)


# -- 6. daemons that double-fork away -----------------------------------------------------------


def test_daemons_that_fork_away_from_failed_starts_are_ended(gs, leak_check):
    # A classic daemonize: fork, setsid, exit; the daemon leaves the worker's group and session.
    gs.write("""
    [program:daemonish]
    command = sh -c "(setsid sleep 1000 &); exit 0"
    startretries = 2
    """)
    gs.start()
    gs.wait_workers("daemonish", "FATAL", timeout=20)

    def strays() -> list[int]:
        found = []
        for proc in psutil.process_iter(["cmdline"]):
            try:
                env = proc.environ()
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
            if env.get("GSUPER_TEST_TOKEN") == leak_check and env.get("GSUPER_PROGRAM") == "daemonish":
                if proc.status() != psutil.STATUS_ZOMBIE:
                    found.append(proc.pid)
        return found

    wait_for(lambda: not strays(), 10, "no daemon left of the three failed starts")
    assert "a daemon that forked away" in gs.log()
    gs.run("-s", "stop", check=True)
