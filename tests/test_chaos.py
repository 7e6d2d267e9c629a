"""Faults: kill storms, a killed master, stubborn workers and their children, bad configs,
a hostile control socket, an unusable log file."""

import os
import shutil
import signal
import subprocess
import sys
import tempfile

import psutil
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import BIN, alive, wait_for
from gsuper import config

pytestmark = pytest.mark.timeout(120)


def zombies_of(pid):
    try:
        return [c.pid for c in psutil.Process(pid).children() if c.status() == psutil.STATUS_ZOMBIE]
    except psutil.NoSuchProcess:
        return []


def test_kill_storms(gs):
    # Each round waits for the workers to be up 1 s, so every kill is respawned at once (a kill
    # sooner is a failed start with backoff: test_core covers that path).
    gs.write("""
    [program:storm]
    command = sleep 1000
    numprocs = 10
    startsecs = 0
    """)
    gs.start()
    rows = gs.wait_workers("storm")
    for _round in range(20):
        pids = {w["pid"] for w in rows}
        for pid in pids:
            os.kill(pid, signal.SIGKILL)

        def back(pids=pids):
            now = gs.workers("storm")
            up = all(w["pid"] and w["pid"] not in pids and w["state"] == "RUNNING" and w["uptime_s"] >= 1.0 for w in now)
            return now if up else None

        rows = wait_for(back, 30, "all ten slots back", 0.01)
    assert [w["restarts"] for w in rows] == [20] * 10
    assert {w["last_exit"]["reason"] for w in rows} == {"killed"}
    assert not zombies_of(gs.master_pid())
    assert "FATAL" not in gs.log()


def test_worker_grandchildren_are_not_left_behind(gs):
    gs.file("forker.sh", "sleep 1000 &\nsleep 1000 &\necho $! > kid.pid\nwait\n")
    gs.write("""
    [program:forker]
    command = sh forker.sh
    """)
    gs.start()
    pid = gs.wait_workers("forker")[0]["pid"]
    kids = wait_for(
        lambda: psutil.Process(pid).children() if len(psutil.Process(pid).children()) == 2 else None, what="two children"
    )
    os.kill(pid, signal.SIGKILL)  # the worker dies; its children must not outlive it
    wait_for(lambda: not any(alive(k.pid) for k in kids), what="orphans ended")
    gs.run("-s", "stop", check=True)


def test_new_master_ends_what_a_killed_master_left(gs):
    # Workers that ignore TERM survive their master's death; the next start must end them.
    gs.file("stubborn.sh", "trap '' TERM\nsleep 1000 &\nwhile true; do sleep 0.2; done\n")
    gs.write("""
    [program:stubborn]
    command = sh stubborn.sh
    numprocs = 2
    stop_timeout = 1
    """)
    gs.start()
    rows = gs.wait_workers("stubborn")
    kids = [c for w in rows for c in psutil.Process(w["pid"]).children() if "1000" in c.cmdline()]
    old = [w["pid"] for w in rows] + [c.pid for c in kids]
    assert len(old) == 4
    os.kill(gs.master_pid(), signal.SIGKILL)
    wait_for(lambda: not gs.running(), what="the master gone")
    assert all(alive(p) for p in old)  # they ignored the TERM of PDEATHSIG
    gs.start()
    assert not any(alive(p) for p in old)
    assert "a previous master died; ending" in gs.log()
    fresh = gs.wait_workers("stubborn")
    assert len(fresh) == 2 and not {w["pid"] for w in fresh} & set(old)


def test_control_socket_refuses_other_users(gs, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("needs root to act as another user")
    rundir = tempfile.mkdtemp(prefix="gsuper-run-")  # a folder another user can reach
    os.chmod(rundir, 0o755)
    try:
        gs.write(f"[gsuper]\nrundir = {rundir}\n[program:a]\ncommand = sleep 1000\n")
        gs.start()
        pid = gs.wait_workers("a")[0]["pid"]
        path = os.path.join(rundir, "gsuper.sock")
        code = f"import socket; s = socket.socket(socket.AF_UNIX); s.connect({path!r}); print(s.recv(999))"
        python = "/usr/bin/python3" if os.path.exists("/usr/bin/python3") else sys.executable
        proc = subprocess.run([python, "-c", code], user=65534, capture_output=True, text=True, cwd="/")
        assert proc.returncode != 0 and "PermissionError" in proc.stderr  # mode 0600
        os.chmod(path, 0o666)  # even with the file opened up, peer credentials refuse
        proc = subprocess.run([python, "-c", code], user=65534, capture_output=True, text=True, cwd="/")
        assert "permission denied" in proc.stdout, proc.stderr
        assert gs.workers("a")[0]["pid"] == pid and gs.running()
        gs.run("-s", "stop", check=True)
    finally:
        gs.cleanup()
        shutil.rmtree(rundir, ignore_errors=True)


def test_unwritable_program_log_does_not_stop_supervision(gs):
    gs.write("""
    [program:chatty]
    command = sh -c "while true; do echo hi; sleep 0.05; done"
    [program:quiet]
    command = sleep 1000
    startsecs = 0
    """)
    (gs.root / "log").mkdir()
    (gs.root / "log" / "chatty.log").mkdir()  # the log path is a folder: every write fails
    gs.start()
    pid = gs.wait_workers("quiet")[0]["pid"]
    gs.wait_workers("chatty")
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: gs.workers("quiet")[0]["pid"] not in (None, pid), what="supervision going on")
    assert "cannot write" in gs.log() and "chatty.log" in gs.log()


# -- broken configurations: always one sentence, exit 2, nothing started -------------------------

KEYS = [
    "runner",
    "script",
    "command",
    "numprocs",
    "max_request",
    "memory_limit",
    "usleep",
    "autorestart",
    "exitcodes",
    "startsecs",
    "startretries",
    "stopsignal",
    "stop_timeout",
    "directory",
    "environment",
    "bogus_key",
    "priority",
    "mode",
]
VALUES = st.one_of(
    st.sampled_from(
        [
            "",
            "0",
            "-1",
            "1",
            "abc",
            "50M",
            "5x",
            "1e9",
            "TERM",
            "NOPE",
            "true",
            "maybe",
            "a=b",
            "a b",
            "'q",
            '"',
            "/no/such/file",
            "a,b,c",
            "10ms",
            "99999999999999999999",
            "php",
            "exec",
            "loop",
        ]
    ),
    st.text(alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\n\r"), max_size=12),
)
SECTIONS = st.sampled_from(["program:a", "program:b", "group:g", "gsuper", "programs:x", "program:", "program:a b", "x"])


@st.composite
def broken_configs(draw):
    lines = []
    for _ in range(draw(st.integers(1, 3))):
        lines.append(f"[{draw(SECTIONS)}]")
        for _ in range(draw(st.integers(0, 4))):
            lines.append(f"{draw(st.sampled_from(KEYS))} = {draw(VALUES)}")
    if draw(st.booleans()):
        lines.insert(draw(st.integers(0, len(lines))), draw(st.sampled_from(["garbage line", "[", "= 3", "[[nested]]", "\x00"])))
    return "\n".join(lines) + "\n"


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=broken_configs())
def test_any_config_is_loaded_or_refused_in_one_sentence(tmp_path, text):
    path = tmp_path / "fuzz.ini"
    path.write_text(text, errors="surrogateescape")
    try:
        config.load(str(path))
    except config.ConfigError as exc:
        message = str(exc)
        assert message.startswith(str(path)) and "\n" not in message and "Traceback" not in message


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(raw=st.binary(max_size=200))
def test_random_bytes_never_crash_the_loader(tmp_path, raw):
    path = tmp_path / "bytes.ini"
    path.write_bytes(raw)
    try:
        config.load(str(path))
    except config.ConfigError as exc:
        assert "\n" not in str(exc)


@pytest.mark.parametrize(
    "text",
    [
        "[program:a]\ncommand = sleep 1000\nnumprocs = -3\n",
        "[program:a]\ncommand = sleep 1000\n[group:g]\nprograms = g\n",
        "[program:a]\nrunner = php\nscript = gone.php\n",
        "[program:a]\ncommand = sleep 1000\nstop_timeout = soon\n",
    ],
)
def test_start_with_a_broken_config_starts_nothing(gs, text):
    gs.write(text)
    proc = gs.run("-s", "start")
    assert proc.returncode == 2 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert str(gs.config) in proc.stderr
    assert not gs.running() and not (gs.root / "run").exists()


def test_config_of_another_running_master(gs, tmp_path):
    gs.write("[program:a]\ncommand = sleep 1000\n")
    gs.start()
    other = subprocess.run(
        [sys.executable, BIN, "-s", "start", "-c", str(gs.config)], capture_output=True, text=True, cwd=tmp_path
    )
    assert other.returncode == 1 and "already running" in other.stderr


def test_second_term_to_the_master_escalates_to_a_forced_exit(gs):
    gs.file("stubborn.sh", "trap '' TERM\nwhile true; do sleep 0.2; done\n")
    gs.write("""
    [program:stubborn]
    command = sh stubborn.sh
    numprocs = 2
    stop_timeout = 60
    """)
    gs.start()
    pids = [w["pid"] for w in gs.wait_workers("stubborn")]
    master = gs.master_pid()
    os.kill(master, signal.SIGTERM)  # graceful: the workers ignore it and would get 60 s
    wait_for(lambda: {w["state"] for w in gs.workers()} == {"STOPPING"}, what="stopping")
    os.kill(master, signal.SIGTERM)  # the second one: SIGKILL to every group now
    wait_for(lambda: not gs.running() and not any(alive(p) for p in pids), 10, what="a forced exit")
    assert "forced exit" in gs.log()


@pytest.mark.parametrize("key", ["rundir", "logdir"])
def test_unusable_run_or_log_folder_is_one_sentence(gs, key):
    (gs.root / "afile").write_text("")
    gs.write(f"[gsuper]\n{key} = afile/sub\n[program:a]\ncommand = sleep 1000\n")
    proc = gs.run("-s", "start")
    assert proc.returncode == 1 and proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert f"cannot use {gs.root}/afile/sub" in proc.stderr and "Not a directory" in proc.stderr
    assert not gs.running()


def test_start_says_which_workers_could_not_be_spawned(gs):
    big = "x" * 200_000  # over the kernel's limit for one environment string: the exec fails
    gs.write(f"[program:ok]\ncommand = sleep 1000\n[program:huge]\ncommand = sleep 1000\nenvironment = BIG={big}\n")
    proc = gs.run("-s", "start")
    assert proc.returncode == 1 and "ok: 1 worker started" in proc.stdout
    assert "1 workers could not be spawned" in proc.stderr and "huge#0: cannot start sleep: Argument list too long" in proc.stderr
    assert gs.running() and gs.wait_workers("ok")  # the rest is supervised all the same
