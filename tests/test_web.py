"""The master's HTTP endpoint through the real command line: /metrics parsed by
prometheus_client's own parser and moving as workers serve, recycle and die; /readyz; the
token; abuse (garbage, a huge header, silent clients, 200 concurrent scrapes) leaving
supervision unharmed; an installed copy serving the dashboard's files."""

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request

import pytest
from prometheus_client.parser import text_string_to_metric_families

from conftest import ROOT, free_port, wait_for

pytestmark = pytest.mark.timeout(120)

JOB = """
import time
time.sleep(0.002)
"""
STATES = {"STOPPED", "STARTING", "RUNNING", "BACKOFF", "STOPPING", "EXITED", "FATAL"}


def get(port, path, token=None, timeout=10):
    """(status, headers, body) of one GET."""
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as res:
            return res.status, dict(res.headers), res.read()
    except urllib.error.HTTPError as exc:
        return exc.code, dict(exc.headers), exc.read()


def metrics(port, token=None):
    """{(name, frozenset(labels)): value} of one scrape, parsed by prometheus_client."""
    status, headers, body = get(port, "/metrics", token)
    assert status == 200 and headers["Content-Type"].startswith("text/plain"), (status, headers)
    out = {}
    for family in text_string_to_metric_families(body.decode()):
        for sample in family.samples:
            out[(sample.name, frozenset(sample.labels.items()))] = sample.value
    return out


def value(samples, name, **labels):
    return samples.get((name, frozenset(labels.items())))


def test_metrics_move_as_workers_serve_recycle_and_die(gs):
    port = free_port()
    gs.file("job.py", JOB)
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:consumer]
    runner = python
    script = job.py
    numprocs = 2
    max_request = 50
    usleep = 1000
    [program:daemon]
    command = sleep 1000
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("daemon")
    first = metrics(port)
    for state in STATES:
        assert value(first, "gsuper_workers", program="consumer", state=state) is not None, state
    assert value(first, "gsuper_workers_desired", program="consumer") == 2
    assert value(first, "gsuper_build_info", version="0.2.0") == 1

    def served_and_recycled():
        m = metrics(port)
        recycled = value(m, "gsuper_worker_exits_total", program="consumer", reason="max_request") or 0
        return m if recycled >= 2 and (value(m, "gsuper_requests_total", program="consumer") or 0) >= 100 else None

    m = wait_for(served_and_recycled, 30, "requests and max_request recycles in /metrics", 0.2)
    assert value(m, "gsuper_worker_starts_total", program="consumer") >= 4
    count = value(m, "gsuper_request_duration_seconds_count", program="consumer")
    inf = value(m, "gsuper_request_duration_seconds_bucket", program="consumer", le="+Inf")
    total = value(m, "gsuper_request_duration_seconds_sum", program="consumer")
    assert count == inf and count >= 100, (count, inf)
    assert 0.002 * count * 0.5 < total < 1.0 * count, (total, count)  # each request sleeps 2 ms
    assert value(m, "gsuper_worker_resident_memory_bytes", program="daemon", worker="0") > 100_000
    # Labels are bounded: never a pid.
    assert all("pid" not in dict(labels) for _, labels in m)

    # A kill -9 is counted as an exit with reason killed, and the slot respawned.
    before = value(m, "gsuper_worker_starts_total", program="daemon")
    pid = gs.workers("daemon")[0]["pid"]
    os.kill(pid, signal.SIGKILL)

    def killed_counted():
        m = metrics(port)
        return value(m, "gsuper_worker_exits_total", program="daemon", reason="killed") == 1 and m

    m = wait_for(killed_counted, 10, "the kill in /metrics", 0.1)
    wait_for(lambda: value(metrics(port), "gsuper_worker_starts_total", program="daemon") == before + 1, 10, "the respawn")

    # /status.json is the status --json document.
    status, headers, body = get(port, "/status.json")
    doc = json.loads(body)
    assert status == 200 and headers["Content-Type"] == "application/json"
    assert set(doc) == set(gs.status()) and set(doc["master"]) == set(gs.status()["master"])
    assert {w["program"] for w in doc["workers"]} == {"consumer", "daemon"}
    assert get(port, "/healthz")[0] == 200
    assert get(port, "/nowhere")[0] == 404
    gs.run("-s", "stop", check=True)


def test_readyz_flips_to_503_when_a_program_is_fatal_and_back(gs):
    port = free_port()
    gs.file("ok", "")
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:needs_file]
    command = sh -c 'test -f ok && exec sleep 1000'
    startsecs = 0.3
    startretries = 1
    [program:other]
    command = sleep 1000
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("needs_file")
    gs.wait_workers("other")
    status, _, body = get(port, "/readyz")
    assert status == 200 and json.loads(body) == {"ready": True, "not_up": []}

    os.unlink(gs.root / "ok")
    os.kill(gs.workers("needs_file")[0]["pid"], signal.SIGKILL)
    gs.wait_workers("needs_file", "FATAL")
    status, _, body = get(port, "/readyz")
    doc = json.loads(body)
    assert status == 503 and not doc["ready"]
    assert [(w["program"], w["index"], w["state"]) for w in doc["not_up"]] == [("needs_file", 0, "FATAL")]
    assert get(port, "/healthz")[0] == 200  # the loop runs: alive, just not ready

    gs.file("ok", "")
    gs.run("-s", "start", "-p", "needs_file", check=True)
    gs.wait_workers("needs_file")
    wait_for(lambda: get(port, "/readyz")[0] == 200, 10, "readyz back to 200")
    gs.run("-s", "stop", check=True)


def test_token_is_required_except_on_the_probes(gs):
    port = free_port()
    token = "s3cret-token"
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    http_token = {token}
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("a")
    for path in ("/metrics", "/status.json", "/events.json", "/", "/static/app.js"):
        status, headers, _ = get(port, path)
        assert status == 401 and headers["WWW-Authenticate"].startswith("Bearer"), path
        assert get(port, path, "wrong")[0] == 401, path
        assert get(port, path, token + "x")[0] == 401, path
        assert get(port, path, token)[0] == 200, path
    for path in ("/healthz", "/readyz"):
        assert get(port, path)[0] == 200, path
    assert value(metrics(port, token), "gsuper_workers", program="a", state="RUNNING") == 1
    gs.run("-s", "stop", check=True)


@pytest.mark.parametrize(
    ("lines", "fragment"),
    [
        ("http = 0.0.0.0:9100", "[gsuper] http: 0.0.0.0 is reachable beyond this machine; set http_token"),
        ("http = :9100", "[gsuper] http: 0.0.0.0 is reachable beyond this machine"),
        ("http = localhost", '[gsuper] http: "localhost" is not HOST:PORT'),
        ("http = 127.0.0.1:70000", "[gsuper] http: the port 70000 is not from 1 to 65535"),
        ("http_token = abc", "[gsuper] http_token: set http = HOST:PORT too"),
    ],
)
def test_http_config_errors(gs, lines, fragment):
    gs.write(f"""
    [gsuper]
    {lines}
    [program:a]
    command = sleep 1000
    """)
    proc = gs.run("-s", "check")
    assert proc.returncode == 2, proc
    assert fragment in proc.stderr and str(gs.config) in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_beyond_loopback_with_a_token_is_allowed(gs):
    gs.write("""
    [gsuper]
    http = 0.0.0.0:9100
    http_token = abc
    [program:a]
    command = sleep 1000
    """)
    assert gs.run("-s", "check").returncode == 0


def test_a_port_in_use_fails_the_start_in_one_sentence(gs):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        gs.write(f"""
        [gsuper]
        http = 127.0.0.1:{port}
        [program:a]
        command = sleep 1000
        """)
        proc = gs.run("-s", "start")
    assert proc.returncode == 1, proc
    assert f"cannot serve HTTP on 127.0.0.1:{port}" in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not gs.running()


def raw(port, data, timeout=10.0):
    """Send raw bytes, return everything the server answers until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
        except (BrokenPipeError, ConnectionResetError):
            pass
        out = b""
        try:
            while chunk := s.recv(65536):
                out += chunk
        except ConnectionResetError:
            pass
        return out


def test_abuse_leaves_supervision_unharmed(gs):
    port = free_port()
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:a]
    command = sleep 1000
    numprocs = 3
    startsecs = 0.2
    """)
    gs.start()
    gs.wait_workers("a")
    # Silent clients: they hold connections open and say nothing.
    silent = [socket.create_connection(("127.0.0.1", port)) for _ in range(40)]
    try:
        # Garbage, a request line past the limit, a huge header: each answered and closed.
        assert raw(port, b"\x00\xff garbage \r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(port, b"GET /" + b"a" * 10000 + b" HTTP/1.1\r\n\r\n").startswith(b"HTTP/1.1 414")
        assert raw(port, b"GET /metrics HTTP/1.1\r\nX-Big: " + b"b" * 200_000 + b"\r\n\r\n").startswith(b"HTTP/1.1 400")
        assert raw(port, b"POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n").startswith(b"HTTP/1.1 405")
        # 200 scrapes at once, all answered.
        results = []

        def scrape():
            results.append(get(port, "/metrics", timeout=30)[0])

        threads = [threading.Thread(target=scrape) for _ in range(200)]
        for t in threads:
            t.start()
        # Meanwhile a kill -9 is respawned promptly.
        victim = gs.workers("a")[1]["pid"]
        os.kill(victim, signal.SIGKILL)
        t0 = time.monotonic()
        wait_for(lambda: (w := gs.workers("a")[1])["pid"] not in (None, victim) and w["state"] in ("STARTING", "RUNNING"), 5,
                 "the respawn while scraped")  # fmt: skip
        respawn_s = time.monotonic() - t0
        for t in threads:
            t.join(60)
        assert results == [200] * 200
        assert respawn_s < 3, respawn_s
        # The silent clients are dropped after the idle timeout.
        for s in silent:
            s.settimeout(15)
            assert s.recv(100) == b""
    finally:
        for s in silent:
            s.close()
    # A slow client that trickles a request is cut at the connection deadline.
    with socket.create_connection(("127.0.0.1", port), timeout=20) as s:
        t0 = time.monotonic()
        try:
            for _ in range(60):
                s.sendall(b"X")
                time.sleep(0.5)
        except (BrokenPipeError, ConnectionResetError):
            pass
        assert time.monotonic() - t0 < 25
    assert get(port, "/healthz")[0] == 200
    assert [w["state"] for w in gs.workers("a")] == ["RUNNING"] * 3
    gs.run("-s", "stop", check=True)


def test_an_installed_copy_serves_the_dashboard_files(gs, tmp_path):
    pytest.importorskip("wheel", reason="the test extras bring wheel, to build without a network")
    target = tmp_path / "site"
    build = subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", str(target), str(ROOT)],
        capture_output=True, text=True, cwd=tmp_path,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    port = free_port()
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:a]
    command = sleep 1000
    """)
    # A mark only the installed copy has: what is served comes from there, not the checkout.
    static = target / "gsuper" / "web" / "static"
    with open(static / "index.html", "a") as fh:
        fh.write("<!-- installed copy -->\n")
    env = {**os.environ, "PYTHONPATH": str(target)}
    run = subprocess.run([sys.executable, "-m", "gsuper", "-s", "start", "-c", str(gs.config)], env=env, cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    assert run.returncode == 0, run.stderr
    try:
        for path, name in (("/", "index.html"), ("/static/app.js", "app.js"), ("/static/style.css", "style.css")):
            status, _, body = get(port, path)
            assert status == 200 and body == (static / name).read_bytes() and body, path
        assert b"<!-- installed copy -->" in get(port, "/")[2]
    finally:
        gs.run("-s", "stop", check=True)


def test_a_reload_says_http_changes_wait_for_the_next_start(gs):
    port = free_port()
    text = """
    [gsuper]
    http = 127.0.0.1:{port}
    [program:a]
    command = sleep 1000
    startsecs = 0.2
    """
    gs.write(text.format(port=port))
    gs.start()
    other = free_port()
    gs.write(text.format(port=other))
    out = gs.run("-s", "reload", check=True).stdout
    assert "http and http_token changes take effect at the next start" in out
    assert get(port, "/healthz")[0] == 200  # still served where it was
    gs.write(text.format(port=port))
    assert "http and http_token" not in gs.run("-s", "reload", check=True).stdout
    gs.run("-s", "stop", check=True)


def test_backlog_and_scale_events_in_metrics(gs, redis_server):
    port = free_port()
    gs.write(f"""
    [gsuper]
    http = 127.0.0.1:{port}
    [program:consumer]
    command = sleep 1000
    startsecs = 0.2
    numprocs = 1
    numprocs_max = 3
    scale_source = redis://127.0.0.1:{redis_server.port}/0/jobs
    scale_interval = 0.2
    scale_cooldown = 0.2
    scale_step = 2
    """)
    redis_server.rpush("jobs", *range(25))
    gs.start()

    def scaled_up():
        m = metrics(port)
        return value(m, "gsuper_scale_events_total", program="consumer", direction="up") and m

    m = wait_for(scaled_up, 15, "a scale-up in /metrics", 0.1)
    assert value(m, "gsuper_queue_backlog", program="consumer") == 25
    wait_for(lambda: value(metrics(port), "gsuper_workers_desired", program="consumer") == 3, 10, "desired 3")
    gs.run("-s", "stop", check=True)
