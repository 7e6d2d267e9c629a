"""Logs on the master's stdout (`logdir = -`, for containers), and the JSON log format.

With `logdir = -` there is no log file: the master log and every worker's output go to the
master's stdout, which a container runtime, `kubectl logs` or the journal collect. Each
program line is prefixed `NAME#INDEX `, or, with `log_format = json`, is one JSON object
(`program`, `worker`, `pid`, `stream`, `time`, `line`).

Stdout is often a pipe whose reader can be slow (a log shipper). The master's loop must never
wait for it, so :class:`StdoutWriter` writes without blocking, keeps what did not fit in a
bounded buffer flushed by a libev io watcher, and drops (and counts) whole records once that
buffer is full; the count is written as soon as there is room again.

A worker's bytes are carried whatever they are: a line that is not UTF-8 is escaped
(``\\xff``), a line longer than :data:`MAX_LINE` is split into several records, never cut.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import time
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from gsuper.logs import LogFile, LogFileHandler
from gsuper.spawn import WorkerProcess, launch_worker

if TYPE_CHECKING:
    from gsuper.config import GsuperConfig, ProgramConfig

MAX_LINE = 16384  # bytes of a worker's line per record; Docker's json-file driver splits at 16 KiB too
MAX_BUFFER = 4 * 1024 * 1024  # bytes kept for a slow stdout reader before records are dropped
STDOUT_PATH = "-"  # the "path" of a ProgramStdout (it never opens one)


class StdoutWriter:
    """Non-blocking writes of whole records to a file descriptor, with a bounded buffer.

    `write()` never blocks and never raises: what the fd cannot take now is buffered (up to
    `max_buffer` bytes) and flushed when the fd is writable again; a record that does not fit
    is dropped and counted, and a line saying how many were dropped follows once there is room.
    """

    def __init__(self, fd: int = 1, max_buffer: int = MAX_BUFFER) -> None:
        self.fd = fd
        self.max_buffer = max_buffer
        self.dropped = 0  # records dropped since the last notice
        self.dropped_total = 0
        self._pending: deque[bytes] = deque()
        self._pending_bytes = 0
        self._broken = False
        self._watcher: Any = None  # a libev io watcher while there is something to flush
        try:
            os.set_blocking(fd, False)
        except OSError:
            self._broken = True

    def write(self, record: bytes) -> None:
        """Write one record (one or more complete lines) now, or buffer it, or drop it."""
        if self._broken:
            return
        if not self._pending:
            record = self._write_now(record)
            if not record:
                return
        if self._pending_bytes + len(record) > self.max_buffer:
            self.dropped += 1
            self.dropped_total += 1
        else:
            self._pending.append(record)
            self._pending_bytes += len(record)
        self._watch()

    def _write_now(self, data: bytes) -> bytes:
        """Write as much as the fd takes; return the rest."""
        view = memoryview(data)
        while view:
            try:
                n = os.write(self.fd, view)
            except BlockingIOError:
                break
            except InterruptedError:
                continue
            except OSError:  # the reader is gone (EPIPE) or the fd is bad: nothing can be written
                self._broken = True
                self._pending.clear()
                self._pending_bytes = 0
                return b""
            view = view[n:]
        return bytes(view)

    def _watch(self) -> None:
        if self._watcher is None:
            self._watcher = gevent.get_hub().loop.io(self.fd, 2)  # 2: writable
            self._watcher.start(self._writable)

    def _writable(self) -> None:
        while self._pending:
            head = self._pending.popleft()
            self._pending_bytes -= len(head)
            rest = self._write_now(head)
            if rest:
                self._pending.appendleft(rest)
                self._pending_bytes += len(rest)
                return
        if self.dropped and not self._broken:
            notice = f"gsuper: {self.dropped} log lines dropped: stdout was not read fast enough\n".encode()
            self.dropped = 0
            rest = self._write_now(notice)
            if rest:
                self._pending.append(rest)
                self._pending_bytes += len(rest)
                return
        self._stop_watching()

    def _stop_watching(self) -> None:
        if self._watcher is not None:
            self._watcher.stop()
            self._watcher.close()
            self._watcher = None

    @property
    def buffered(self) -> int:
        """Bytes waiting for the reader."""
        return self._pending_bytes

    def flush(self, timeout_s: float = 2.0) -> None:
        """At exit: give what is buffered up to `timeout_s` to go out."""
        deadline = time.monotonic() + timeout_s
        while self._pending and not self._broken and time.monotonic() < deadline:
            gevent.sleep(0.01)


def split_line(line: bytes, limit: int = MAX_LINE) -> list[bytes]:
    """A line (without its newline) in pieces of at most `limit` bytes, never inside a UTF-8
    character when the line is UTF-8."""
    if len(line) <= limit:
        return [line]
    pieces = []
    while len(line) > limit:
        cut = limit
        # Back off over continuation bytes (10xxxxxx), at most 3, so a character stays whole.
        while cut > limit - 3 and line[cut] & 0xC0 == 0x80:
            cut -= 1
        pieces.append(line[:cut])
        line = line[cut:]
    pieces.append(line)
    return pieces


def carry(line: bytes) -> str:
    """A worker's bytes as text: UTF-8 as it is, anything else escaped (``\\xff``)."""
    return line.decode("utf-8", "backslashreplace")


class ProgramStdout(LogFile):
    """A program's output on the master's stdout: the `logdir = -` stand-in for its LogFile.

    It is a LogFile that never opens a file (reopen and close do nothing; `write` goes to
    stdout as it is), so a Program and its Workers take it where they take a log file. The
    worker lines come through :meth:`spawner`, which the master gives the Program: it spawns
    with stderr on a pipe of its own and tags each line with the worker's index, pid and stream.
    """

    def __init__(self, name: str, writer: StdoutWriter, log_format: str = "text") -> None:
        super().__init__(STDOUT_PATH, 0, 0)
        self.name = name
        self.writer = writer
        self.log_format = log_format

    def spawner(
        self,
        config: ProgramConfig,
        index: int,
        max_request: int,
        on_output: Callable[[bytes], None],
        on_reports: Callable[[bytes], None],
        on_errors: Callable[[bytes], None] | None = None,
    ) -> WorkerProcess:
        """A Program's spawner (gsuper.worker.Spawner) whose output goes to stdout.

        The worker's own `on_output` and `on_errors` (its log files) are not used: stdout and
        stderr each get a writer here that tags the lines with index, pid and stream.
        """
        pid = [0]  # known once spawned, before the hub runs any reader
        out, err = self.line_writer(index, pid, "stdout"), self.line_writer(index, pid, "stderr")
        proc = launch_worker(config, index, max_request, out, on_reports, on_errors=err)
        pid[0] = proc.pid
        return proc

    def line_writer(self, index: int, pid: list[int], stream: str) -> Callable[[bytes], None]:
        """A PipeReader callback: the complete lines of one worker's stream, as records.

        The work per chunk is a few C-level passes (one decode, one split, one join), not
        Python per byte: a worker printing megabytes per second costs the master little.
        """
        if self.log_format == "json":
            return self._json_writer(index, pid, stream)
        prefix = f"{self.name}#{index} "
        glue = "\n" + prefix

        def write_text(data: bytes) -> None:
            self.writer.write((prefix + glue.join(_pieces(data)) + "\n").encode())

        return write_text

    def _json_writer(self, index: int, pid: list[int], stream: str) -> Callable[[bytes], None]:
        program = _json_string(self.name)
        tail = f', "stream": {_json_string(stream)}, "time": '

        def write_json(data: bytes) -> None:
            middle = f'{{"program": {program}, "worker": {index}, "pid": {pid[0]}{tail}{time.time():.3f}, "line": '
            self.writer.write("".join(f"{middle}{_json_string(p)}}}\n" for p in _pieces(data)).encode())

        return write_json

    # The LogFile operations (there is no file).
    def write(self, data: bytes) -> None:
        """Bytes as they are, to stdout."""
        self.writer.write(data)

    def rotate(self) -> None:
        """No rotation on stdout."""

    def reopen(self) -> None:
        """Nothing to reopen: stdout is not a file gsuper rotates."""

    def close(self) -> None:
        """Nothing to close."""


# The C encoder of a JSON string (json.dumps of one str, without its per-call set-up).
_json_string: Callable[[str], str] = json.encoder.encode_basestring  # type: ignore[attr-defined]


def _pieces(data: bytes) -> list[str]:
    """The records of a chunk from PipeReader (complete lines, or a piece of an over-long one):
    each line as text, bad UTF-8 escaped, lines over MAX_LINE bytes split."""
    body = data[:-1] if data.endswith(b"\n") else data
    lines = body.split(b"\n")
    if max(map(len, lines)) <= MAX_LINE:
        # Decoding the chunk at once is the same as line by line: a newline is never inside a
        # UTF-8 sequence, and backslashreplace never makes one.
        return body.decode("utf-8", "backslashreplace").split("\n")
    return [carry(piece) for line in lines for piece in split_line(line)]


class WriterHandler(logging.Handler):
    """A logging handler writing each formatted record to a StdoutWriter (the master log)."""

    def __init__(self, writer: StdoutWriter) -> None:
        super().__init__()
        self.writer = writer

    def emit(self, record: logging.LogRecord) -> None:
        """Format and write one record."""
        try:
            self.writer.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - logging must never take the master down
            self.handleError(record)


# Messages about a worker begin with its name, `NAME#INDEX`, often followed by `(pid N)`.
_WORKER_RE = re.compile(r"^(?P<program>[^\s#]+)#(?P<worker>\d+)\b(?:[^(]*\(pid (?P<pid>\d+)\))?")


class JsonFormatter(logging.Formatter):
    """`log_format = json`: one JSON object per record (time, level, program, worker, pid, message).

    `program`, `worker` and `pid` come from the record's `extra` when the caller gave them, else
    from a message that begins with a worker's name (`NAME#INDEX ... (pid N)`); for a message
    about the master itself, `program` and `worker` are null and `pid` is the master's.
    """

    def format(self, record: logging.LogRecord) -> str:
        """The record as one line of JSON."""
        message = record.getMessage()
        if record.exc_info:
            message += "\n" + self.formatException(record.exc_info)
        program = getattr(record, "program", None)
        worker = getattr(record, "worker", None)
        pid = getattr(record, "worker_pid", None)
        if program is None:
            found = _WORKER_RE.match(message)
            if found:
                program, worker = found["program"], int(found["worker"])
                pid = int(found["pid"]) if found["pid"] else None
        doc = {
            "time": round(record.created, 3),
            "level": record.levelname.lower(),
            "program": program,
            "worker": worker,
            "pid": pid if program is not None else record.process,
            "message": message,
        }
        return json.dumps(doc, ensure_ascii=False)


def master_formatter(log_format: str) -> logging.Formatter:
    """The formatter of the master log for `log_format`."""
    if log_format == "json":
        return JsonFormatter()
    return logging.Formatter("%(asctime)s %(levelname)s %(message)s")


def setup_logging(
    level: str,
    log_format: str,
    writer: StdoutWriter | None = None,
    extra_handlers: list[logging.Handler] | None = None,
) -> logging.Logger:
    """Configure the `gsuper` logger: to the stdout writer (logdir = -) and/or given handlers,
    every one with the formatter of `log_format`."""
    logger = logging.getLogger("gsuper")
    logger.handlers.clear()
    logger.setLevel(level.upper())
    logger.propagate = False
    handlers: list[logging.Handler] = list(extra_handlers or [])
    if writer is not None:
        handlers.append(WriterHandler(writer))
    fmt = master_formatter(log_format)
    for handler in handlers:
        handler.setFormatter(fmt)
        logger.addHandler(handler)
    return logger


def configure_master_logging(cfg: GsuperConfig, master_log: LogFile, foreground: bool) -> StdoutWriter | None:
    """The master log of `cfg`: on stdout (logdir = -; the writer is returned), or in
    `master_log` and, in the foreground, on stderr too; in the format of `log_format`."""
    if cfg.logs_to_stdout:
        writer = StdoutWriter(1)
        setup_logging(cfg.loglevel, cfg.log_format, writer)
        return writer
    handlers: list[logging.Handler] = [LogFileHandler(master_log)]
    if foreground:
        handlers.append(logging.StreamHandler(sys.stderr))
    setup_logging(cfg.loglevel, cfg.log_format, None, handlers)
    return None
