"""Backlog sources (gsuper/backlog.py): parsing, a real Redis, a probe command, and failures
that must never block the loop: Redis down, slow, or not Redis; a probe that hangs or prints text."""

from __future__ import annotations

import os
import socket
import threading
import time

import gevent
import pytest

from gsuper.backlog import BacklogError, CommandReader, CommandSource, RedisReader, RedisSource, parse_source
from tests.conftest import free_port


@pytest.mark.parametrize(
    "text,expected",
    [
        ("redis://127.0.0.1:6390/0/jobs", RedisSource("127.0.0.1", 6390, 0, "jobs")),
        ("redis://localhost/2/queues:default", RedisSource("localhost", 6379, 2, "queues:default")),
        ("redis://:s%40cret@h:1/0/a/b", RedisSource("h", 1, 0, "a/b", None, "s@cret")),
        ("redis://u:p@h:1/0/k", RedisSource("h", 1, 0, "k", "u", "p")),
        ("command: redis-cli llen jobs", CommandSource("redis-cli llen jobs")),
    ],
)
def test_parse_source(text, expected):
    assert parse_source(text) == expected


@pytest.mark.parametrize(
    "text,words",
    [
        ("http://h/0/k", "is not a backlog source"),
        ("redis://h:port/0/k", "the port is not a number"),
        ("redis://h:1/jobs", "the path must be /DB/KEY"),
        ("redis://h:1/x/jobs", "the path must be /DB/KEY"),
        ("redis://h:1/0/", "names no list key"),
        ("redis:///0/k", "names no host"),
        ("command:", "names no command"),
    ],
)
def test_unparsable_sources_get_one_sentence(text, words):
    with pytest.raises(ValueError, match=words) as info:
        parse_source(text)
    assert "\n" not in str(info.value) and "/DB/KEY" in str(info.value)


def test_redis_llen_and_database(redis_server):
    port = redis_server.port
    redis_server.rpush("jobs", *range(7))
    source = parse_source(f"redis://127.0.0.1:{port}/0/jobs")
    assert isinstance(source, RedisSource)
    reader = RedisReader(source)
    assert reader.read(1.0) == 7
    redis_server.rpush("jobs", "x")
    assert reader.read(1.0) == 8  # the same connection, read again
    assert RedisReader(RedisSource("127.0.0.1", port, 0, "missing")).read(1.0) == 0
    import redis

    db3 = redis.Redis(port=port, db=3)
    db3.rpush("jobs", "a", "b")
    db3.close()
    assert RedisReader(RedisSource("127.0.0.1", port, 3, "jobs")).read(1.0) == 2
    reader.close()


def test_redis_wrong_type_is_one_sentence(redis_server):
    redis_server.set("jobs", "not a list")
    reader = RedisReader(RedisSource("127.0.0.1", redis_server.port, 0, "jobs"))
    with pytest.raises(BacklogError, match="Redis answered WRONGTYPE"):
        reader.read(1.0)


def test_redis_down_is_an_error_not_a_hang():
    reader = RedisReader(RedisSource("127.0.0.1", free_port(), 0, "jobs"))
    with pytest.raises(BacklogError, match=r"cannot reach it \(Connection refused\)"):
        reader.read(1.0)


def _server(reply: bytes | None) -> tuple[socket.socket, threading.Event]:
    """A TCP server (in a thread) that answers every connection with `reply`, or never answers."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    done = threading.Event()

    def serve() -> None:
        conns = []
        srv.settimeout(0.1)
        while not done.is_set():
            try:
                conn, _ = srv.accept()
            except (TimeoutError, OSError):
                continue
            conns.append(conn)
            if reply is not None:
                conn.recv(1024)
                conn.sendall(reply)
        for c in conns:
            c.close()
        srv.close()

    threading.Thread(target=serve, daemon=True).start()
    return srv, done


def test_slow_redis_times_out_and_the_loop_keeps_running():
    srv, done = _server(None)
    try:
        reader = RedisReader(RedisSource("127.0.0.1", srv.getsockname()[1], 0, "jobs"))
        ticks = []
        ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
        with pytest.raises(BacklogError, match="no answer within 0.3s"):
            reader.read(0.3)
        assert len(ticks) >= 10  # other greenlets ran while the reading waited
        ticker.kill()
    finally:
        done.set()


def test_an_answer_that_is_not_redis():
    srv, done = _server(b"HTTP/1.1 400 Bad Request\r\n\r\n")
    try:
        reader = RedisReader(RedisSource("127.0.0.1", srv.getsockname()[1], 0, "jobs"))
        with pytest.raises(BacklogError, match="not a list length"):
            reader.read(1.0)
    finally:
        done.set()


def test_redis_going_away_and_coming_back(redis_server, tmp_path):
    import subprocess

    port = redis_server.port
    redis_server.rpush("jobs", 1, 2, 3)
    reader = RedisReader(RedisSource("127.0.0.1", port, 0, "jobs"))
    assert reader.read(1.0) == 3
    stop_redis(port)
    with pytest.raises(BacklogError):
        reader.read(1.0)
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
        stdout=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 10
        while True:
            try:
                assert reader.read(1.0) == 0  # a fresh, empty server: read through a new connection
                break
            except BacklogError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)
    finally:
        proc.terminate()
        proc.wait(10)


def stop_redis(port: int) -> None:
    """SHUTDOWN NOSAVE NOW over a plain socket (redis-py retries the dropped connection for
    seconds before it reports the shutdown), then wait until nothing listens on the port."""
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(b"*3\r\n$8\r\nSHUTDOWN\r\n$6\r\nNOSAVE\r\n$3\r\nNOW\r\n")
        s.settimeout(10)
        while s.recv(1024):
            pass
    deadline = time.monotonic() + 10
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
        except OSError:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"redis on port {port} did not stop")
        time.sleep(0.02)


def probe(command: str, tmp_path) -> CommandReader:
    return CommandReader(CommandSource(command), str(tmp_path), dict(os.environ))


def test_probe_prints_a_number(tmp_path):
    assert probe("echo 42", tmp_path).read(2.0) == 42
    assert probe("printf ' 7\\n'; echo noise >&2", tmp_path).read(2.0) == 7
    assert probe("echo 2.5", tmp_path).read(2.0) == 3
    (tmp_path / "depth").write_text("13\n")
    assert probe("cat depth", tmp_path).read(2.0) == 13  # runs in the given folder


@pytest.mark.parametrize(
    "command,words",
    [
        ("echo lots", "printed 'lots', not one number"),
        ("echo 1 2", "printed '1 2', not one number"),
        ("true", "printed 'nothing', not one number"),
        ("echo -3", "not one number"),
        ("echo oops >&2; exit 3", r"exited 3 \(oops\)"),
    ],
)
def test_probe_failures_are_one_sentence(tmp_path, command, words):
    with pytest.raises(BacklogError, match=words):
        probe(command, tmp_path).read(2.0)


def test_a_hung_probe_is_killed_and_does_not_block(tmp_path):
    ticks = []
    ticker = gevent.spawn(lambda: [ticks.append(gevent.sleep(0.01)) for _ in range(1000)])
    marker = tmp_path / "pid"
    with pytest.raises(BacklogError, match="did not finish within 0.3s and was killed"):
        probe(f"echo $$ > {marker}; sleep 30", tmp_path).read(0.3)
    assert len(ticks) >= 10
    ticker.kill()
    pid = int(marker.read_text())
    deadline = time.monotonic() + 5
    while os.path.exists(f"/proc/{pid}") and time.monotonic() < deadline:
        gevent.sleep(0.02)  # let libev reap it
    assert not os.path.exists(f"/proc/{pid}")
