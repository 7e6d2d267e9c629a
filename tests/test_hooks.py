"""[hook:NAME] event hooks: through the real command line for fatal, backoff, memory_limit and
max_request events (JSON on stdin, environment, folder, program filter), a hanging hook killed
after its timeout while respawns go on; in-process for the bounded queue under a flood."""

import json
import logging
import os
import signal
import time

import pytest

from conftest import alive, wait_for

pytestmark = pytest.mark.timeout(90)

RECORD = "cat >> events.jsonl; echo \"$GSUPER_EVENT $GSUPER_PROGRAM $GSUPER_WORKER $(pwd)\" >> env.txt"


def events(gs, name="events.jsonl"):
    path = gs.root / name
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_backoff_and_fatal_hooks(gs):
    gs.write(f"""
    [program:broken]
    command = false
    startsecs = 1
    startretries = 2
    [program:fine]
    command = sleep 1000
    startsecs = 0.2
    [hook:alerts]
    events = backoff, fatal
    command = {RECORD}
    programs = broken
    """)
    gs.start()
    gs.wait_workers("broken", "FATAL")
    got = wait_for(lambda: (e := events(gs)) and e[-1]["event"] == "fatal" and e, 10, "the fatal hook")
    assert [e["event"] for e in got] == ["backoff", "backoff", "backoff", "fatal"]
    for e in got:
        assert set(e) >= {"event", "program", "worker", "pid", "time", "reason", "code"}
        assert e["program"] == "broken" and e["worker"] == 0 and abs(e["time"] - time.time()) < 30
    env = (gs.root / "env.txt").read_text().splitlines()
    assert env[-1] == f"fatal broken 0 {gs.root}"  # the environment, and the config file's folder
    assert all("fine" not in line for line in env)  # programs = broken
    gs.run("-s", "stop", check=True)


def test_max_request_and_memory_limit_hooks(gs):
    gs.file("job.py", "import time\ntime.sleep(0.001)\n")
    # Each request keeps 8 MiB more alive (on the sys module, which outlives the script's run).
    gs.file("hog.py", "import sys\nsys.hog = getattr(sys, 'hog', []) + [bytearray(8 << 20)]\n")
    gs.write(f"""
    [program:recycler]
    runner = python
    script = job.py
    max_request = 20
    [program:hog]
    runner = python
    script = hog.py
    memory_limit = 40M
    usleep = 20000
    [hook:recycles]
    events = max_request, memory_limit
    command = {RECORD}
    """)
    gs.start()

    def both():
        kinds = {e["event"] for e in events(gs)}
        return {"max_request", "memory_limit"} <= kinds

    wait_for(both, 30, "max_request and memory_limit hooks", 0.1)
    by_kind = {}
    for e in events(gs):
        by_kind.setdefault(e["event"], e)
    assert by_kind["max_request"]["program"] == "recycler" and by_kind["max_request"]["reason"] == "max_request"
    assert by_kind["max_request"]["code"] == 0 and isinstance(by_kind["max_request"]["pid"], int)
    assert by_kind["memory_limit"]["program"] == "hog" and by_kind["memory_limit"]["reason"] == "memory_limit"
    gs.run("-s", "stop", check=True)


def test_a_hanging_hook_is_killed_and_never_delays_a_respawn(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    [hook:stuck]
    events = started, crashed
    command = echo "hook ran for $GSUPER_EVENT"; touch "hung.$$"; exec sleep 1000
    timeout = 1.5
    """)
    gs.start()
    gs.wait_workers("a")
    wait_for(lambda: list(gs.root.glob("hung.*")), 10, "the hook to run")
    # While the hook hangs, kills are respawned at once.
    for _ in range(3):
        pid = gs.workers("a")[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda pid=pid: gs.workers("a")[0]["pid"] not in (None, pid), 5, "a respawn", 0.01)
        assert time.monotonic() - t0 < 2
    wait_for(lambda: "hook stuck: still running after 1.5s on a started event: SIGKILL" in gs.log(), 10, "the kill")
    assert "hook stuck: hook ran for started" in gs.log()
    # The queued events run one at a time: the next run starts once the first was killed.
    wait_for(lambda: len(list(gs.root.glob("hung.*"))) >= 2, 10, "the next queued event")
    runs = sorted(gs.root.glob("hung.*"), key=lambda p: p.stat().st_mtime_ns)
    assert not alive(int(runs[0].suffix[1:]))
    gs.run("-s", "stop", check=True)


# -- in process: the bounded queue --------------------------------------------------------------


def test_a_flood_of_events_is_bounded_and_the_drops_are_logged(tmp_path, caplog):
    import gevent

    from gsuper import hooks
    from gsuper.config import HookConfig
    from gsuper.events import Event, EventStream

    stream = EventStream()
    cfg = HookConfig("slow", ("crashed",), "sleep 1000", None, 30.0, str(tmp_path))
    runner = hooks.HookRunner({"slow": cfg}, stream)
    hook = runner.hooks["slow"]
    try:
        with caplog.at_level(logging.WARNING, logger="gsuper"):
            stream.emit(Event("exit", "p", 0, pid=1, reason="crashed", code=1))
            wait_for_green(lambda: hook.child is not None)
            t0 = time.monotonic()
            for i in range(1500):
                stream.emit(Event("exit", "p", 0, pid=i, reason="killed", code=-9))
                stream.emit(Event("exit", "p", 0, pid=i, reason="stopped", code=0))  # not asked for
            emit_s = time.monotonic() - t0
        assert len(hook.queue) == hooks.MAX_QUEUE == 1000
        assert hook.dropped == 500
        assert hook.queue[0]["pid"] == 500 and hook.queue[-1]["pid"] == 1499  # the oldest were dropped
        assert any("dropped the 1 oldest (1 in all)" in r.getMessage() for r in caplog.records)
        assert emit_s < 1.0, emit_s  # emitting never waits on the hook
        assert hook.runs == 1
    finally:
        runner.close(0)
    assert hook.child is None
    gevent.sleep(0)


def wait_for_green(condition, timeout=10.0):
    import gevent

    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail("timed out")
        gevent.sleep(0.01)


def test_hook_event_names():
    from gsuper.events import Event
    from gsuper.hooks import hook_event, payload

    assert hook_event(Event("started", "p", 0, pid=5)) == "started"
    assert hook_event(Event("state", "p", 0, state="FATAL")) == "fatal"
    assert hook_event(Event("state", "p", 0, state="BACKOFF")) == "backoff"
    assert hook_event(Event("state", "p", 0, state="RUNNING")) == "running"
    assert hook_event(Event("state", "p", 0, state="STOPPING")) is None
    assert hook_event(Event("exit", "p", 0, reason="killed", code=-9)) == "crashed"
    assert hook_event(Event("exit", "p", 0, reason="memory_limit", code=0)) == "memory_limit"
    assert hook_event(Event("exit", "p", 0, reason="stopped", code=0)) == "stopped"
    assert hook_event(Event("request", "p", 0, data={"done": 3})) is None
    assert hook_event(Event("scaled", "p", data={"before": 1, "after": 2})) == "scaled"
    doc = payload("crashed", Event("exit", "p", 1, pid=7, reason="killed", code=-9, time=12.5))
    assert doc == {"event": "crashed", "program": "p", "worker": 1, "pid": 7, "time": 12.5, "reason": "killed", "code": -9}


# -- the shipped examples ------------------------------------------------------------------------


def test_the_example_hooks_post_to_a_webhook_and_write_to_syslog(gs, monkeypatch):
    import http.server
    import shutil
    import socket
    import tempfile
    import threading

    from conftest import ROOT

    if not shutil.which("curl") or not shutil.which("logger"):
        pytest.skip("curl and logger are needed (scripts/setup.sh installs them)")
    posts = []

    class Receiver(http.server.BaseHTTPRequestHandler):
        def do_POST(self):  # noqa: N802 - the stdlib's name
            body = self.rfile.read(int(self.headers["Content-Length"]))
            posts.append((self.headers["X-Gsuper-Event"], json.loads(body)))
            self.send_response(204)
            self.end_headers()

        def log_message(self, *_args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    folder = tempfile.mkdtemp(prefix="gs-", dir="/tmp")  # a socket path must stay short
    syslog = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    syslog.bind(f"{folder}/log")
    syslog.settimeout(15)
    try:
        for name in ("webhook.sh", "syslog.sh"):
            shutil.copy(ROOT / "examples" / "hooks" / name, gs.root / name)
        monkeypatch.setenv("GSUPER_WEBHOOK_URL", f"http://127.0.0.1:{server.server_port}/hook")
        monkeypatch.setenv("GSUPER_SYSLOG_SOCKET", f"{folder}/log")
        gs.write("""
        [program:flaky]
        command = false
        startretries = 1
        [hook:syslog]
        events = fatal
        command = ./syslog.sh
        [hook:alert]
        events = fatal
        command = ./webhook.sh
        """)
        gs.start()
        line = syslog.recv(65536).decode()
        assert "gsuper" in line and "fatal flaky#0 {" in line, line
        assert line.startswith("<11>")  # user.err
        wait_for(lambda: posts, 15, "the webhook POST")
        header, body = posts[0]
        assert header == "fatal" and body["event"] == "fatal" and body["program"] == "flaky" and body["worker"] == 0
        gs.run("-s", "stop", check=True)
    finally:
        server.shutdown()
        syslog.close()
        shutil.rmtree(folder, ignore_errors=True)


def test_a_reload_adds_a_hook_and_fires_reloaded(gs):
    gs.write("""
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("a")
    gs.write(f"""
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    [hook:audit]
    events = reloaded, scaled
    command = {RECORD}
    """)
    gs.run("-s", "reload", check=True)
    gs.run("-s", "scale", "a=2", check=True)
    got = wait_for(lambda: len(e := events(gs)) >= 2 and e, 10, "the reloaded and scaled hooks")
    # A hook added by a reload hears that reload's own event.
    assert [e["event"] for e in got] == ["reloaded", "scaled"]
    assert got[0]["program"] is None and "unchanged a" in got[0]["changes"]
    assert got[1]["program"] == "a" and got[1]["before"] == 1 and got[1]["after"] == 2
    gs.run("-s", "reload", check=True)  # the file still says numprocs 1: scaled back, then reloaded
    want = ["reloaded", "scaled", "scaled", "reloaded"]
    wait_for(lambda: [e["event"] for e in events(gs)] == want, 10, "scaled and reloaded")
    last = events(gs)
    assert last[2]["direction"] == "down" and any("scaled a" in c for c in last[3]["changes"])
    gs.run("-s", "stop", check=True)
