"""Fast tests of the pure parts of issue 13: stdout logs, the JSON format, sd_notify, the grace check.

The sd_notify tests use a real AF_UNIX datagram socket the test binds; the stdout writer
tests use a real pipe whose reader does not read."""

import json
import logging
import os
import socket
import time

import gevent
import pytest

from gsuper import config
from gsuper.grace import grace_warnings
from gsuper.notify import SystemdNotifier, socket_address, status_line, watchdog_interval_s
from gsuper.stdlog import MAX_LINE, JsonFormatter, ProgramStdout, StdoutWriter, split_line

pytestmark = pytest.mark.timeout(30)


def read_all(fd):
    out = b""
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            return out
        if not chunk:
            return out
        out += chunk


@pytest.fixture
def pipe():
    r, w = os.pipe()
    os.set_blocking(r, False)
    yield r, w
    for fd in (r, w):
        try:
            os.close(fd)
        except OSError:
            pass


# -- splitting and carrying lines -----------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, MAX_LINE, MAX_LINE + 1, 3 * MAX_LINE + 7])
def test_split_line_keeps_every_byte_in_pieces_of_at_most_the_limit(size):
    line = bytes(i % 251 for i in range(size))
    pieces = split_line(line)
    assert b"".join(pieces) == line
    assert all(len(p) <= MAX_LINE for p in pieces)


def test_split_line_never_cuts_a_utf8_character():
    line = ("é" * 20).encode()  # 2 bytes each
    pieces = split_line(line, limit=7)
    assert b"".join(pieces) == line
    assert all(p.decode("utf-8") for p in pieces)  # each piece decodes on its own


def test_program_lines_text_prefix_escape_and_split(pipe):
    r, w = pipe
    sink = ProgramStdout("member_1", StdoutWriter(w), "text")
    write = sink.line_writer(2, [4242], "stdout")
    long = b"x" * (MAX_LINE * 2 + 5)
    write(b"hello\n\xffbad\n" + long + b"\n")
    lines = read_all(r).decode().splitlines()
    assert lines[0] == "member_1#2 hello"
    assert lines[1] == "member_1#2 \\xffbad"
    rest = lines[2:]
    assert len(rest) == 3 and all(ln.startswith("member_1#2 ") for ln in rest)
    assert "".join(ln[len("member_1#2 "):] for ln in rest) == long.decode()


def test_program_lines_json(pipe):
    r, w = pipe
    sink = ProgramStdout("py", StdoutWriter(w), "json")
    sink.line_writer(0, [77], "stderr")(b"caf\xc3\xa9\n\xfe\n")
    docs = [json.loads(line) for line in read_all(r).splitlines()]
    assert [d["line"] for d in docs] == ["café", "\\xfe"]
    assert all(d["program"] == "py" and d["worker"] == 0 and d["pid"] == 77 and d["stream"] == "stderr" for d in docs)
    assert all(abs(d["time"] - time.time()) < 60 for d in docs)


# -- a slow reader never blocks the writer ---------------------------------------------------------


def test_writer_never_blocks_buffers_boundedly_and_counts_drops(pipe):
    r, w = pipe
    writer = StdoutWriter(w, max_buffer=65536)
    record = b"y" * 999 + b"\n"
    began = time.monotonic()
    for _ in range(1000):  # 1 MB into a 64 KiB pipe nobody reads, with a 64 KiB buffer
        writer.write(record)
    assert time.monotonic() - began < 5  # a blocking write would hang here forever
    assert 0 < writer.buffered <= 65536
    assert writer.dropped > 0 and writer.dropped == writer.dropped_total
    dropped = writer.dropped
    got = b""
    deadline = time.monotonic() + 10
    while (writer.buffered or writer.dropped or b"dropped" not in got) and time.monotonic() < deadline:
        got += read_all(r)
        gevent.sleep(0.01)
    got += read_all(r)
    lines = got.splitlines()
    notice = [ln for ln in lines if b"dropped" in ln]
    assert notice == [f"gsuper: {dropped} log lines dropped: stdout was not read fast enough".encode()]
    kept = [ln for ln in lines if b"dropped" not in ln]
    assert kept and all(ln == record[:-1] for ln in kept)  # whole records, none cut
    assert len(kept) + dropped == 1000


def test_writer_with_a_closed_reader_drops_silently(pipe):
    r, w = pipe
    os.close(r)
    writer = StdoutWriter(w)
    writer.write(b"nobody reads this\n")  # EPIPE: no exception, nothing kept
    writer.write(b"nor this\n")
    assert writer.buffered == 0


# -- the JSON master log --------------------------------------------------------------------------


def record(msg, *args, **extra):
    rec = logging.LogRecord("gsuper", logging.WARNING, __file__, 1, msg, args, None)
    rec.__dict__.update(extra)
    return rec


def test_json_formatter_fields():
    fmt = JsonFormatter()
    about_worker = json.loads(fmt.format(record("%s (pid %s) exited: %s", "member_1#3", 991, "crashed")))
    assert about_worker["program"] == "member_1" and about_worker["worker"] == 3 and about_worker["pid"] == 991
    assert about_worker["level"] == "warning" and about_worker["message"] == "member_1#3 (pid 991) exited: crashed"
    master = json.loads(fmt.format(record("stopping every program")))
    assert master["program"] is None and master["worker"] is None and master["pid"] == os.getpid()
    given = json.loads(fmt.format(record("x", program="p", worker=1, worker_pid=5)))
    assert (given["program"], given["worker"], given["pid"]) == ("p", 1, 5)
    assert set(master) == {"time", "level", "program", "worker", "pid", "message"}


# -- the grace period check -----------------------------------------------------------------------


def test_grace_warnings(tmp_path):
    path = tmp_path / "gsuper.ini"
    path.write_text(
        "[program:slow]\ncommand = sleep 1\nstop_timeout = 40\n[program:quick]\ncommand = sleep 1\nstop_timeout = 5\n"
    )
    cfg = config.load(str(path))
    assert grace_warnings(cfg, {}) == []
    warned = grace_warnings(cfg, {"GSUPER_GRACE_SECONDS": "30"})
    assert len(warned) == 1 and "[program:slow] stop_timeout: 40s is above GSUPER_GRACE_SECONDS=30" in warned[0]
    assert grace_warnings(cfg, {"GSUPER_GRACE_SECONDS": "60"}) == []
    assert "not a number of seconds" in grace_warnings(cfg, {"GSUPER_GRACE_SECONDS": "soon"})[0]


# -- sd_notify -------------------------------------------------------------------------------------


def test_status_line():
    assert status_line(["RUNNING", "RUNNING", "BACKOFF"]) == "3 workers: 2 RUNNING, 1 BACKOFF"
    assert status_line([]) == "0 workers"
    assert status_line(["RUNNING"], stopping=True) == "stopping; 1 worker: 1 RUNNING"


def test_addresses_and_watchdog_settings():
    assert socket_address("@gsuper/notify") == b"\0gsuper/notify"
    assert socket_address("/run/systemd/notify") == "/run/systemd/notify"
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000"}, 5) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "5"}, 5) == 5.0
    assert watchdog_interval_s({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "6"}, 5) is None
    assert watchdog_interval_s({}, 5) is None and watchdog_interval_s({"WATCHDOG_USEC": "x"}, 5) is None


def receiver(address):
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(socket_address(address))
    sock.setblocking(False)
    return sock


def messages(sock, count):
    """`count` datagrams as dicts, letting the hub run (the watchdog greenlet) while waiting."""
    got, deadline = [], time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        try:
            data = sock.recv(4096, socket.MSG_DONTWAIT)
        except BlockingIOError:
            gevent.sleep(0.01)
            continue
        got.append(dict(line.split("=", 1) for line in data.decode().splitlines()))
    assert len(got) == count, got
    return got


@pytest.mark.parametrize("kind", ["path", "abstract"])
def test_notifier_on_a_real_socket(tmp_path, kind):
    address = str(tmp_path / "notify.sock") if kind == "path" else f"@gsuper-test-{os.getpid()}-{time.monotonic_ns()}"
    sock = receiver(address)
    try:
        env = {"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "100000", "OTHER": "kept"}
        notifier = SystemdNotifier.from_environ(env, pid=os.getpid())
        assert notifier is not None and notifier.watchdog_s == 0.05
        assert env == {"OTHER": "kept"}  # the workers must not talk to systemd as the master
        notifier.start(lambda: "2 workers: 2 RUNNING")
        notifier.ready()
        notifier.reloading()
        notifier.stopping()
        got = messages(sock, 4)
        pings = [m for m in got if "WATCHDOG" in m]
        rest = [m for m in got if "WATCHDOG" not in m]
        assert pings and rest[0] == {"READY": "1", "STATUS": "2 workers: 2 RUNNING"}
        assert rest[1]["RELOADING"] == "1" and abs(int(rest[1]["MONOTONIC_USEC"]) - time.monotonic_ns() // 1000) < 60e6
        assert rest[2] == {"STOPPING": "1", "STATUS": "2 workers: 2 RUNNING"}
        # Pings keep coming while the loop runs (every 50 ms here).
        seen, deadline = 0, time.monotonic() + 5
        while seen < 3 and time.monotonic() < deadline:
            gevent.sleep(0.02)
            try:
                seen += sock.recv(4096, socket.MSG_DONTWAIT) == b"WATCHDOG=1\n"
            except BlockingIOError:
                pass
        assert seen >= 3
        for _ in range(5):  # state changes close together give one STATUS=
            notifier.changed()
        gevent.sleep(0.5)
        notifier.close()
        statuses = []
        while True:
            try:
                data = sock.recv(4096, socket.MSG_DONTWAIT)
            except BlockingIOError:
                break
            if data.startswith(b"STATUS="):
                statuses.append(data)
        assert statuses == [b"STATUS=2 workers: 2 RUNNING\n"]
    finally:
        sock.close()


def test_no_notify_socket_no_notifier():
    assert SystemdNotifier.from_environ({}) is None
    assert SystemdNotifier.from_environ({"NOTIFY_SOCKET": "vsock:2:1234"}) is None


def test_a_gone_socket_is_not_an_error(tmp_path, caplog):
    notifier = SystemdNotifier(str(tmp_path / "nobody.sock"))
    with caplog.at_level(logging.WARNING, logger="gsuper"):
        assert notifier.send("READY=1") is False
        assert notifier.send("READY=1") is False
    assert len([r for r in caplog.records if "cannot notify systemd" in r.message]) == 1
    notifier.close()


def test_a_piece_of_an_over_long_line_keeps_its_last_byte_in_a_log_file(tmp_path):
    from gsuper.logs import LogFile, output_to_log

    log = LogFile(str(tmp_path / "p.log"), 0, 0)
    write = output_to_log(1, log)
    write(b"abc")  # what PipeReader passes on of a line longer than its max_line
    write(b"def\nnext\n")
    log.close()
    lines = (tmp_path / "p.log").read_bytes().splitlines()
    assert [ln.split(b" [1] ", 1)[1] for ln in lines] == [b"abc", b"def", b"next"]


FIRST_CHILD = """
import os, sys
from gsuper.spawn import spawn
r, w = os.pipe()
child = spawn(["true"], dict(os.environ), "/", w, (w,))
print(child.wait(5))
"""


def test_the_first_child_of_a_process_is_seen_to_exit_even_at_once():
    """gevent installs its SIGCHLD handler with the first child watcher; a first child that
    exited before it was lost (a zombie, RUNNING forever: on_fatal and PID 1 depend on this)."""
    import subprocess
    import sys

    from conftest import ROOT

    for _ in range(6):  # it was lost about half the time
        proc = subprocess.run([sys.executable, "-c", FIRST_CHILD], capture_output=True, text=True, timeout=30, cwd=ROOT)
        assert proc.stdout.strip() == "0", proc.stderr


def test_a_full_notify_socket_delays_state_messages_and_drops_only_pings(tmp_path):
    address = str(tmp_path / "slow.sock")
    sock = receiver(address)  # nobody reads it for now: its queue fills (max_dgram_qlen)
    try:
        notifier = SystemdNotifier(address)
        sent_now = [notifier.send(f"STATUS=message {i}") for i in range(40)]
        assert not all(sent_now)  # the queue was full before the 40th
        assert notifier.send("WATCHDOG=1", retry=False) is False  # a late ping is not kept
        got, deadline = [], time.monotonic() + 10
        while len(got) < 40 and time.monotonic() < deadline:
            try:
                got.append(sock.recv(4096).decode().strip())
            except BlockingIOError:
                gevent.sleep(0.01)
        assert got == [f"STATUS=message {i}" for i in range(40)]  # every one, in order
        notifier.close()
    finally:
        sock.close()
