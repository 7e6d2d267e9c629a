"""Log files: size rotation, reopen on SIGUSR1, and capture of worker output.

One :class:`LogFile` serves both the master log (through :class:`LogFileHandler`) and each
program's ``NAME.log``. Worker output is drained by a :class:`PipeReader` (a libev io watcher,
no greenlet), so a worker that prints a lot never blocks and never stalls the master.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable

import gevent
import gevent.event

from gsuper import fsafe

CHUNK = 65536


class LogFile:
    """An append-only file rotated by size; write errors are reported once, never raised."""

    def __init__(self, path: str, max_bytes: int, backups: int, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path
        self.max_bytes = max_bytes
        self.backups = backups
        self.on_error = on_error  # told each new error once, as a sentence
        self._fd: int | None = None
        self._size = 0
        self._failed_at = 0.0
        self.last_error: str | None = None

    def _open(self) -> bool:
        try:
            os.makedirs(os.path.dirname(self.path), exist_ok=True)
            self._fd = fsafe.open_append(self.path)  # O_NOFOLLOW: a planted link is an error
            self._size = os.fstat(self._fd).st_size
            return True
        except OSError as exc:
            self._fail(exc)
            return False

    def _fail(self, exc: OSError) -> None:
        # Report each new error once; retry opening at most once a second.
        text = f"cannot write {self.path}: {exc.strerror}"
        if text != self.last_error and self.on_error is not None:
            self.on_error(f"{text}; output is dropped until it can be written")
        self.last_error = text
        self._failed_at = time.monotonic()
        self.close()

    def write(self, data: bytes) -> None:
        """Append data, rotating first when the file would pass max_bytes."""
        if self._fd is None:
            if time.monotonic() - self._failed_at < 1.0 and self.last_error:
                return
            if not self._open():
                return
        if self.max_bytes and self._size and self._size + len(data) > self.max_bytes:
            self.rotate()
            if self._fd is None:
                return
        assert self._fd is not None
        try:
            view = memoryview(data)
            while view:
                n = os.write(self._fd, view)
                view = view[n:]
            self._size += len(data)
            self.last_error = None  # cleared by a write that worked, so an error is told once
        except OSError as exc:
            # Every write error (ENOSPC, EFBIG past RLIMIT_FSIZE, EIO ...): reported once, the
            # data dropped, the file retried at most once a second; never a raise or a busy loop.
            self._fail(exc)

    def rotate(self) -> None:
        """NAME.log -> NAME.log.1 -> ... -> NAME.log.N (the oldest is dropped)."""
        self.close()
        try:
            if self.backups <= 0:
                os.close(fsafe.open_truncate(self.path))  # os.truncate would follow a link
            else:
                for i in range(self.backups - 1, 0, -1):
                    src = f"{self.path}.{i}"
                    if os.path.exists(src):
                        os.replace(src, f"{self.path}.{i + 1}")
                if os.path.exists(self.path):
                    os.replace(self.path, f"{self.path}.1")
        except OSError as exc:
            self._fail(exc)
            return
        self._open()

    def reopen(self) -> None:
        """Close and open again (after an outside tool moved the file away)."""
        self.close()
        self._failed_at = 0.0
        self._open()

    def close(self) -> None:
        """Close the file descriptor, if open."""
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError:
                pass
            self._fd = None


class LogFiles:
    """The programs' log files, one LogFile per path, shared by every worker that writes there.

    Paths come from each program's `logfile` and `stderr_logfile` (expanded per worker), so two
    programs, or two workers, naming one file share one LogFile and one rotation.
    """

    def __init__(self, on_error: Callable[[str], None] | None = None) -> None:
        self.files: dict[str, LogFile] = {}
        self.on_error = on_error

    def get(self, path: str, max_bytes: int, backups: int) -> LogFile:
        """The LogFile of `path` (created on first use; the latest rotation settings win)."""
        logfile = self.files.get(path)
        if logfile is None:
            logfile = self.files[path] = LogFile(path, max_bytes, backups, self.on_error)
        else:
            logfile.max_bytes, logfile.backups = max_bytes, backups
        return logfile

    def reopen(self) -> None:
        """Reopen every file (SIGUSR1, after logrotate moved them)."""
        for logfile in self.files.values():
            logfile.reopen()

    def keep_only(self, paths: set[str]) -> None:
        """Close and forget the files no worker writes to any more (after a reload moved them)."""
        for path in [p for p in self.files if p not in paths]:
            self.files.pop(path).close()

    def values(self) -> list[LogFile]:
        """Every LogFile."""
        return list(self.files.values())


class LogFileHandler(logging.Handler):
    """A logging handler writing to a LogFile (the master log)."""

    def __init__(self, logfile: LogFile) -> None:
        super().__init__()
        self.logfile = logfile

    def emit(self, record: logging.LogRecord) -> None:
        """Format and append one record."""
        try:
            self.logfile.write((self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - logging must never take the master down
            self.handleError(record)


def timestamp() -> bytes:
    """The prefix time of a log line, to the millisecond."""
    now = time.time()
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(now)).encode() + b".%03d" % int(now % 1 * 1000)


class PipeReader:
    """Calls `on_lines(data)` with the complete lines read from a non-blocking pipe, until EOF.

    No greenlet: a libev io watcher calls back in the hub each time the pipe is readable, and
    each callback reads one chunk, so a worker that never stops writing gets its turn like every
    other pipe and never starves the master. A line longer than `max_line` without a newline
    is passed on as it is. At EOF the rest (a last line without a newline) is passed on, the fd
    is closed and `eof` is set.
    """

    def __init__(self, fd: int, on_lines: Callable[[bytes], None], max_line: int = CHUNK) -> None:
        self.fd = fd
        self.on_lines = on_lines
        self.max_line = max_line
        self.eof = gevent.event.Event()
        self._partial = b""
        self._watcher = gevent.get_hub().loop.io(fd, 1)  # 1: readable
        self._watcher.start(self._readable)

    def _readable(self) -> None:
        if self._read_chunk() is False:  # EOF (None: nothing to read yet)
            self.close()

    def _read_chunk(self) -> bool | None:
        """Read one chunk and pass on its complete lines: True when one was read, False at EOF
        (or a read error), None when the pipe is empty for now."""
        try:
            chunk = os.read(self.fd, CHUNK)
        except BlockingIOError:
            return None
        except OSError:
            chunk = b""
        if not chunk:
            return False
        data = self._partial + chunk
        cut = data.rfind(b"\n") + 1
        self._partial = data[cut:]
        if len(self._partial) > self.max_line:
            cut, self._partial = len(data), b""
        if cut:
            self._deliver(data[:cut])
        return True

    def _deliver(self, data: bytes) -> None:
        try:
            self.on_lines(data)
        except Exception:  # noqa: BLE001 - a callback's bug must not kill the hub
            logging.getLogger("gsuper").exception("reading a worker's pipe")

    def drain_now(self) -> None:
        """Read what is in the pipe now, without waiting for an EOF, then close.

        After the writer exited, everything it wrote is already in the pipe; the EOF may never
        come while its children hold the write end (a shell script's `sleep`), so it is not
        waited for.
        """
        while not self.eof.is_set() and self._read_chunk():
            pass
        self.close()

    def close(self) -> None:
        """Stop watching, pass on what is left, close the fd, set `eof`."""
        if self.eof.is_set():
            return
        self._watcher.stop()
        self._watcher.close()
        if self._partial:
            self._deliver(self._partial + b"\n")
            self._partial = b""
        os.close(self.fd)
        self.eof.set()


def output_to_log(index: int, logfile: LogFile) -> Callable[[bytes], None]:
    """A PipeReader callback writing a worker's lines to its program's log, each prefixed.

    Lines arriving in one read share one timestamp: prefixing with one C-level replace keeps the
    cost flat however much a worker prints.
    """
    tag = b" [%d] " % index

    def write(data: bytes) -> None:
        prefix = timestamp() + tag
        # A piece of an over-long line comes without its newline: it keeps its last byte.
        body = data[:-1] if data.endswith(b"\n") else data
        logfile.write(prefix + body.replace(b"\n", b"\n" + prefix) + b"\n")

    return write
