"""The python and shell runners, tested directly (no master): real processes, real signals.

Each worker is started as the master will start it: its own session, the GSUPER_* variables in
an environment that comes from os.environ (conftest tags it), and the write end of a status pipe
passed as GSUPER_STATUS_FD. A thread reads the pipe's JSON lines; output goes to files that the
tests poll until a deadline.
"""

from __future__ import annotations

import os
import runpy
import shutil
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
import pytest

from conftest import wait_for
from runner_harness import RunnerProcess

ROOT = Path(__file__).resolve().parent.parent
PY_RUNNER = ROOT / "runners" / "python" / "worker.py"
SH_RUNNER = ROOT / "runners" / "shell" / "worker.sh"
HELPERS = Path(__file__).resolve().parent / "py_helpers"
EXAMPLES = ROOT / "examples"


poll = wait_for


@pytest.fixture
def py(spawn: Callable[..., RunnerProcess]) -> Callable[..., RunnerProcess]:
    """Start the python runner: py(GSUPER_HANDLER="handlers:count", ...)."""

    def start(
        cwd: Path = HELPERS,
        status: tuple[int, int] | None = None,
        read_status: bool = True,
        extra_fds: tuple[int, ...] = (),
        **env: Any,
    ) -> RunnerProcess:
        return spawn([sys.executable, str(PY_RUNNER)], env, cwd, status=status, read_status=read_status, extra_fds=extra_fds)

    return start


@pytest.fixture
def sh(spawn: Callable[..., RunnerProcess]) -> Callable[..., RunnerProcess]:
    def start(cwd: Path = HELPERS, **env: Any) -> RunnerProcess:
        return spawn(["sh", str(SH_RUNNER)], env, cwd)

    return start


# --- recycling ------------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_max_request_runs_exactly_that_many_then_exits_0(py):
    w = py(GSUPER_HANDLER="handlers:count", GSUPER_MAX_REQUEST=5, GSUPER_USLEEP=0)
    assert w.wait_exit() == 0
    lines = [line for line in w.out().splitlines() if line.startswith("count")]
    assert [line.split()[1] for line in lines] == ["1", "2", "3", "4", "5"]
    assert w.events[0] == {"event": "ready", "pid": w.pid}
    assert w.of("request")[-1]["requests"] == 5
    assert w.exit_event() == {"event": "exit", "reason": "max_request", "requests": 5}
    assert w.events[-1]["event"] == "exit"


@pytest.mark.timeout(60)
def test_memory_limit_ends_a_leaking_worker(py):
    limit = 64 << 20
    w = py(GSUPER_HANDLER="handlers:leak", GSUPER_MEMORY_LIMIT=limit, GSUPER_USLEEP=0)
    assert w.wait_exit() == 0
    exit_event = w.exit_event()
    assert exit_event["reason"] == "memory_limit"
    # Python starts well under 64 MB; 4 MB a request passes it within a few dozen requests.
    assert 3 <= exit_event["requests"] <= 20
    last = w.of("request")[-1]
    assert last["requests"] == exit_event["requests"]
    assert last["memory"] > limit


# --- stopping -------------------------------------------------------------------------------


@pytest.mark.timeout(60)
@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGQUIT], ids=["TERM", "INT", "QUIT"])
def test_stop_signal_lets_the_request_finish(py, sig):
    w = py(GSUPER_HANDLER="handlers:slow", SLOW_SECONDS=2)
    w.wait_output("before")
    w.signal(sig)
    assert w.wait_exit(timeout=15) == 0
    ended = time.time()
    out = w.out()
    before = float(out.split("before ")[1].split()[0])
    after = float(out.split("after ")[1].split()[0])
    assert after - before >= 1.95  # the sleep was not cut short
    assert ended - before >= 1.95
    assert w.exit_event() == {"event": "exit", "reason": "stopped", "requests": 1}
    assert out.count("before") == 1  # no request started after the stop


@pytest.mark.timing
@pytest.mark.timeout(60)
def test_idle_stop_is_quick_even_with_a_long_usleep(py):
    w = py(GSUPER_HANDLER="handlers:count", GSUPER_USLEEP=5_000_000)
    w.wait_event("request")
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert time.monotonic() - sent < 1.0
    assert w.exit_event() == {"event": "exit", "reason": "stopped", "requests": 1}


@pytest.mark.timing
@pytest.mark.timeout(60)
def test_stop_during_bootstrap_ends_cleanly(py):
    w = py(GSUPER_HANDLER="handlers:count", GSUPER_BOOTSTRAP="boot_slow.py")
    w.wait_output("boot start")
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert time.monotonic() - sent < 2.0
    assert w.of("ready") == []
    assert w.exit_event() == {"event": "exit", "reason": "stopped", "requests": 0}
    assert "count" not in w.out()
    assert "Traceback" not in w.err()


# --- bootstrap and business code -----------------------------------------------------------


@pytest.mark.timeout(60)
def test_bootstrap_is_loaded_once_and_script_globals_do_not_leak(py):
    w = py(
        GSUPER_SCRIPT=HELPERS / "script_leak.py",
        GSUPER_BOOTSTRAP="boot_file.py\nboot_module\n",
        GSUPER_MAX_REQUEST=4,
        GSUPER_USLEEP=0,
    )
    assert w.wait_exit() == 0, w.err()
    lines = w.out().splitlines()
    assert lines == [
        f"boot file loaded pid {w.pid}",
        f"boot module loaded pid {w.pid}",
        *["fresh hi __gsuper__"] * 4,
    ]
    assert w.exit_event()["reason"] == "max_request"


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("handler", "expected"),
    [
        ("handlers:count", ["count 1", "count 2", "count 3"]),
        ("handlers:Counter.handle", ["method inits=1 calls=1", "method inits=1 calls=2", "method inits=1 calls=3"]),
        ("handlers:Counter.static", ["static inits=0"] * 3),
        ("handlers:Counter.klass", ["classmethod Counter inits=0"] * 3),
        ("handlers:Counter", ["call inits=1 calls=1", "call inits=1 calls=2", "call inits=1 calls=3"]),
    ],
)
def test_handler_forms(py, handler, expected):
    w = py(GSUPER_HANDLER=handler, GSUPER_MAX_REQUEST=3, GSUPER_USLEEP=0)
    assert w.wait_exit() == 0, w.err()
    lines = w.out().splitlines()
    # "count N pid P" and "... id=X": compare the leading words; one instance means one id
    assert [" ".join(line.split()[: len(exp.split())]) for line, exp in zip(lines, expected, strict=True)] == expected
    ids = {line.split("id=")[1] for line in lines if "id=" in line}
    assert len(ids) <= 1


@pytest.mark.timeout(60)
def test_exception_with_on_error_continue_goes_on(py):
    w = py(GSUPER_HANDLER="handlers:flaky", GSUPER_MAX_REQUEST=4, GSUPER_USLEEP=0)
    assert w.wait_exit() == 0
    assert w.out().splitlines() == ["ok 1", "ok 3"]
    errors = w.of("error")
    assert [(e["requests"], e["message"]) for e in errors] == [(2, "ValueError: boom at 2"), (4, "ValueError: boom at 4")]
    err = w.err()
    assert "request 2 failed" in err and "request 4 failed" in err
    assert "Traceback (most recent call last)" in err
    assert 'handlers.py", line' in err and "in flaky" in err
    assert "worker.py" not in err  # the runner's own frames are left out
    assert w.exit_event() == {"event": "exit", "reason": "max_request", "requests": 4}


@pytest.mark.timeout(60)
def test_exception_with_on_error_exit_ends_with_70(py):
    w = py(GSUPER_HANDLER="handlers:flaky", GSUPER_ON_ERROR="exit", GSUPER_USLEEP=0)
    assert w.wait_exit() == 70
    assert w.out().splitlines() == ["ok 1"]
    assert "ValueError: boom at 2" in w.err()
    assert w.exit_event() == {"event": "exit", "reason": "error", "requests": 2}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(("mode", "code", "reason"), [("loop", 0, "max_request"), ("daemon", 70, "error")])
def test_script_exception_trace_shows_only_the_users_frames(py, mode, code, reason):
    w = py(GSUPER_MODE=mode, GSUPER_SCRIPT=HELPERS / "script_fail.py", GSUPER_MAX_REQUEST=1 if mode == "loop" else 0)
    assert w.wait_exit() == code
    err = w.err()
    assert err.splitlines()[1:] == [
        "Traceback (most recent call last):",
        f'  File "{HELPERS / "script_fail.py"}", line 3, in <module>',
        '    raise KeyError("missing thing")',
        "KeyError: 'missing thing'",
    ]
    assert w.of("error")[0]["message"] == "KeyError: 'missing thing'"
    assert w.exit_event() == {"event": "exit", "reason": reason, "requests": 1}


@pytest.mark.timeout(60)
def test_a_recycle_does_not_wait_for_threads_the_code_left(py):
    w = py(GSUPER_HANDLER="handlers:start_thread", GSUPER_MAX_REQUEST=1)
    assert w.wait_exit(timeout=10) == 0
    assert "exiting without waiting for 1 non-daemon thread(s): forever" in w.err()
    assert w.exit_event()["reason"] == "max_request"


@pytest.mark.timeout(60)
def test_system_exit_in_a_request_is_honoured(py):
    w = py(GSUPER_HANDLER="handlers:exit_now")
    assert w.wait_exit() == 5
    assert w.exit_event() == {"event": "exit", "reason": "done", "requests": 1}


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "message", "trace"),
    [
        ({"GSUPER_BOOTSTRAP": "boot_fail.py"}, "boot_fail.py failed: RuntimeError: bad config", True),
        ({"GSUPER_BOOTSTRAP": "missing_hook.py"}, "bootstrap file not found: ", False),
        ({"GSUPER_BOOTSTRAP": "no_such_module"}, "bootstrap module 'no_such_module' not found", False),
        ({"GSUPER_HANDLER": "no_such_module:run"}, "handler module 'no_such_module' not found", False),
        ({"GSUPER_HANDLER": "handlers:nope"}, "handler 'handlers:nope': handlers has no attribute 'nope'", False),
        ({"GSUPER_HANDLER": "handlers:Counter.nope"}, "handlers:Counter has no attribute 'nope'", False),
        ({"GSUPER_HANDLER": "handlers"}, "is not in the form module:callable", False),
        ({"GSUPER_HANDLER": "handlers:calls"}, "is not callable (int)", False),
        ({"GSUPER_SCRIPT": "/nonexistent/script.py"}, "script not found: /nonexistent/script.py", False),
        ({"GSUPER_SCRIPT": "SYNTAX"}, "does not compile: SyntaxError", False),
        ({}, "give exactly one of GSUPER_SCRIPT and GSUPER_HANDLER", False),
        ({"GSUPER_MAX_REQUEST": "many"}, "GSUPER_MAX_REQUEST='many' is not an integer", False),
    ],
    ids=[
        "hook-raises",
        "hook-missing",
        "hook-module-missing",
        "handler-module-missing",
        "handler-attr-missing",
        "handler-method-missing",
        "handler-no-colon",
        "handler-not-callable",
        "script-missing",
        "script-syntax-error",
        "nothing-to-run",
        "bad-setting",
    ],
)
def test_bootstrap_failure_exits_78_with_one_clear_message(py, tmp_path, env, message, trace):
    if env.get("GSUPER_SCRIPT") == "SYNTAX":
        env["GSUPER_SCRIPT"] = tmp_path / "broken.py"
        env["GSUPER_SCRIPT"].write_text("def broken(:\n    pass\n")
    if "GSUPER_SCRIPT" not in env and "GSUPER_HANDLER" not in env and env:
        env["GSUPER_HANDLER"] = "handlers:count"
    w = py(**env)
    assert w.wait_exit() == 78
    err = w.err()
    first = err.splitlines()[0]
    assert first.startswith("gsuper: test#0: cannot start: ")
    assert message in first
    if trace:
        assert "Traceback" in err and "boot_fail.py" in err
    else:
        assert err.count("\n") == 1, err
    assert w.of("ready") == []
    exit_event = w.exit_event()
    assert exit_event["reason"] == "bootstrap" and exit_event["requests"] == 0
    assert message in exit_event["message"]
    assert w.out() == ""


# --- daemon mode ----------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_daemon_mode_runs_the_script_once_and_exits_with_its_status(py):
    w = py(GSUPER_MODE="daemon", GSUPER_SCRIPT=HELPERS / "daemon_script.py", DAEMON_EXIT=3)
    assert w.wait_exit() == 3
    assert w.out().splitlines() == ["daemon run __main__ argv0 daemon_script.py"]
    assert [e["event"] for e in w.events] == ["ready", "request", "exit"]
    assert w.exit_event() == {"event": "exit", "reason": "done", "requests": 1}


@pytest.mark.timing
@pytest.mark.timeout(60)
def test_daemon_mode_stops_at_once_on_term(py):
    w = py(GSUPER_MODE="daemon", GSUPER_SCRIPT=HELPERS / "daemon_long.py")
    w.wait_output("daemon start")
    sent = time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert time.monotonic() - sent < 2.0
    assert "daemon cleanup" in w.out()  # its finally ran
    assert w.exit_event() == {"event": "exit", "reason": "stopped", "requests": 0}


# --- the status pipe ------------------------------------------------------------------------


@pytest.mark.timing
@pytest.mark.timeout(60)
def test_usleep_guards_the_cpu(py):
    w = py(GSUPER_HANDLER="handlers:noop", GSUPER_USLEEP=1000)
    w.wait_event("request")
    proc = psutil.Process(w.pid)
    cpu0, wall0 = sum(proc.cpu_times()[:2]), time.monotonic()
    poll(lambda: time.monotonic() - wall0 >= 1.0, 5, "one second of requests")
    cpu1, wall1 = sum(proc.cpu_times()[:2]), time.monotonic()
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert (cpu1 - cpu0) / (wall1 - wall0) < 0.5
    requests = w.exit_event()["requests"]
    assert requests > 100  # it kept serving, about one request a millisecond at most
    assert w.of("request")[-1]["requests"] == requests
    # the rate limit: far fewer reports than requests, yet the true total
    assert len(w.of("request")) < requests / 5


@pytest.mark.timeout(60)
def test_a_full_status_pipe_never_blocks_requests(py):
    r, w_fd = os.pipe()
    os.set_blocking(w_fd, False)
    try:
        while True:
            os.write(w_fd, b"x" * 4096)
    except BlockingIOError:
        pass
    w = py(GSUPER_HANDLER="handlers:count", GSUPER_MAX_REQUEST=500, GSUPER_USLEEP=0, status=(r, w_fd), read_status=False)
    assert w.wait_exit(timeout=20) == 0
    assert len(w.out().splitlines()) == 500


@pytest.mark.timeout(60)
def test_no_status_fd_is_fine(py):
    w = py(GSUPER_HANDLER="handlers:count", GSUPER_MAX_REQUEST=2, GSUPER_USLEEP=0, GSUPER_STATUS_FD="")
    assert w.wait_exit() == 0
    assert w.events == []
    assert w.err() == ""


@pytest.mark.timeout(60)
def test_status_fd_does_not_leak_to_children_of_the_business_code(py):
    r, w_fd = os.pipe()
    w = py(GSUPER_HANDLER="handlers:spawn_child", GSUPER_MAX_REQUEST=1, CHECK_FD=w_fd, status=(r, w_fd))
    assert w.wait_exit() == 0, w.err()
    assert w.out().splitlines() == ["child fd open False env None"]
    assert w.exit_event()["reason"] == "max_request"


# --- the shell runner -----------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shell_runner_sources_bootstrap_and_execs_the_script(sh):
    hooks = f"{HELPERS / 'boot_env.sh'}\nboot_env2.sh"
    w = sh(GSUPER_SCRIPT=HELPERS / "show_env.sh", GSUPER_BOOTSTRAP=hooks)
    w.wait_output("child sees")
    lines = w.out().splitlines()
    # the same pid: the runner exec'd the script; the hook's variable is exported
    assert lines[:2] == [
        f"greeting=from bootstrap combined=from bootstrap+2 pid={w.pid}",
        "child sees greeting=from bootstrap",
    ]
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    assert "stopping" in w.out()


@pytest.mark.timeout(60)
@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"GSUPER_SCRIPT": "missing.sh"}, "script not found: missing.sh"),
        ({"GSUPER_SCRIPT": ""}, "no script given (GSUPER_SCRIPT is empty)"),
        (
            {"GSUPER_SCRIPT": "show_env.sh", "GSUPER_BOOTSTRAP": "boot_env.sh\nmissing_hook.sh"},
            "bootstrap file not found: missing_hook.sh",
        ),
    ],
)
def test_shell_runner_missing_file_exits_78(sh, env, message):
    w = sh(**env)
    assert w.wait_exit() == 78
    assert w.err() == f"gsuper: test#0: cannot start: {message}\n"
    assert w.out() == ""


# --- the examples ---------------------------------------------------------------------------


@pytest.mark.timeout(60)
def test_shell_example_heartbeats_and_stops_after_the_iteration(sh):
    w = sh(
        cwd=EXAMPLES / "shell",
        GSUPER_WORKER=2,
        GSUPER_SCRIPT=EXAMPLES / "shell" / "heartbeat.sh",
        GSUPER_BOOTSTRAP=EXAMPLES / "shell" / "bootstrap.sh",
        HEARTBEAT_SECONDS=0.2,
    )
    w.wait_output("hello from worker 2: heartbeat 2")
    assert w.out().splitlines()[0] == f"worker 2: started (pid {w.pid})"
    w.signal(signal.SIGTERM)
    assert w.wait_exit(timeout=5) == 0
    assert "worker 2: stopping after" in w.out().splitlines()[-1]
    assert w.err() == ""


@pytest.mark.timeout(90)
def test_python_consumer_example_consumes_each_job_exactly_once(py, tmp_path):
    app = tmp_path / "python_consumer"
    shutil.copytree(
        EXAMPLES / "python_consumer",
        app,
        ignore=shutil.ignore_patterns("done.txt", "run", "log", "__pycache__", "*.job", "work-*"),
    )

    produce = runpy.run_path(str(app / "produce.py"))["produce"]  # returns the job ids
    jobs = set(produce(150))
    # a job a dead worker 0 had claimed: its successor does it first
    claimed = min((app / "spool").glob("*.job"))
    (app / "spool" / "work-0").mkdir()
    claimed.rename(app / "spool" / "work-0" / claimed.name)
    env = {"GSUPER_HANDLER": "consumer:handle", "GSUPER_BOOTSTRAP": "bootstrap.py", "IDLE_SLEEP": 0.05}
    workers = [py(cwd=app, GSUPER_WORKER=i, **env) for i in range(3)]
    for w in workers:
        w.wait_event("ready")
    jobs |= set(produce(150))  # while they run
    assert len(jobs) == 300

    done_file = app / "done.txt"

    def finished() -> bool:
        lines = done_file.read_text().splitlines() if done_file.exists() else []
        return len(lines) >= 300 and not list((app / "spool").rglob("*.job"))

    poll(finished, 60, "300 jobs done")
    for w in workers:
        w.signal(signal.SIGTERM)
    for w in workers:
        assert w.wait_exit() == 0, w.err()
        assert w.exit_event()["reason"] == "stopped"
        assert w.out().count("bootstrap loaded") == 1
    done = [line.split()[0] for line in done_file.read_text().splitlines()]
    assert sorted(done) == sorted(jobs)  # every job, each exactly once
    assert sum(w.exit_event()["requests"] for w in workers) >= 300


# --- batches of tiny requests (issue 16), the busy page and max_lifetime (issue 11) -------------


def tally(w: RunnerProcess) -> int:
    return int(w.wait_output("tally").split("tally ")[1].split()[0])


def test_batches_of_tiny_requests_keep_max_request_exact(py):
    w = py(GSUPER_HANDLER="tally:tick", GSUPER_MAX_REQUEST=100_003, GSUPER_USLEEP=0)
    assert w.wait_exit(30) == 0
    assert w.exit_event() == {"event": "exit", "reason": "max_request", "requests": 100_003}
    assert tally(w) == 100_003  # the handler ran exactly that often


def test_a_stop_during_tiny_requests_is_taken_between_two_and_every_request_counted(py):
    w = py(GSUPER_HANDLER="tally:tick", GSUPER_USLEEP=0)
    w.wait_event("request", where=lambda e: e["requests"] > 10_000)
    w.signal(signal.SIGTERM)
    assert w.wait_exit() == 0
    event = w.exit_event()
    assert event["reason"] == "stopped" and event["requests"] == tally(w)


def busy_page() -> tuple[int, Any]:
    import mmap

    fd = os.memfd_create("test-busy")
    os.ftruncate(fd, 64)
    return fd, mmap.mmap(fd, 64)


def test_the_busy_page_is_stamped_while_a_request_runs_and_cleared_after(py):
    import struct

    fd, page = busy_page()
    try:
        spawned = time.monotonic_ns()
        w = py(GSUPER_HANDLER="handlers:slow", SLOW_SECONDS=0.6, GSUPER_USLEEP=300_000, GSUPER_BUSY_FD=fd, extra_fds=(fd,))
        w.wait_output("before")
        since, request = struct.unpack_from("=qq", page, 0)
        assert spawned < since <= time.monotonic_ns() and request == 1
        w.wait_output("after")
        poll(lambda: struct.unpack_from("=q", page, 0)[0] == 0, 5, "the idle mark after the request")
        poll(lambda: struct.unpack_from("=qq", page, 0)[1] == 2, 5, "request 2 stamped")
        w.signal(signal.SIGTERM)
        assert w.wait_exit() == 0
    finally:
        page.close()
        os.close(fd)


def test_the_deadline_ends_the_life_between_requests_with_max_lifetime(py):
    deadline = time.monotonic_ns() + 800_000_000
    w = py(GSUPER_HANDLER="handlers:slow", SLOW_SECONDS=0.5, GSUPER_USLEEP=1000, GSUPER_DEADLINE_NS=deadline)
    assert w.wait_exit(15) == 0
    event = w.exit_event()
    assert event["reason"] == "max_lifetime" and event["requests"] >= 1
    assert w.out().count("before") == w.out().count("after")  # the request in progress finished
    assert time.monotonic_ns() >= deadline
