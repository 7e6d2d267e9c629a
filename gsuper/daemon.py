"""Daemonizing (the fork, detach and pipe protocol of `start`) and the locked pid file.

The pid file is locked (flock) for as long as the master lives: "running" means "locked", so a
pid file left by a killed master is recognised as stale and taken over, and the CLI waits for a
master to be gone by the lock being released, not by `kill(pid, 0)` failing (a dead master can
linger as a zombie until init reaps it).
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import time

from gsuper import fsafe

TYPE_CHECKING = False  # not typing at run time: the CLI imports this module (see control.py)
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    #: run(notify) -> exit code: the master's life; it calls notify(message) once it is up (or failed).
    MasterRun = Callable[[Callable[[dict[str, Any]], None]], int]


class AlreadyRunning(Exception):
    """Another master holds the pid file lock."""

    def __init__(self, pid: int | None) -> None:
        super().__init__(f"already running (pid {pid})" if pid else "already running")
        self.pid = pid


class PidFile:
    """The master's pid file, locked while the master lives."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.fd: int | None = None

    def acquire(self) -> bool:
        """Lock and write our pid; return True when a stale file was taken over.

        Raises AlreadyRunning when a live master holds the lock.
        """
        os.makedirs(os.path.dirname(self.path), exist_ok=True)
        stale = os.path.exists(self.path)
        fd = fsafe.open_rdwr(self.path)  # never through a link planted in rundir
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                raise AlreadyRunning(read_pid(self.path)) from None
            raise
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd
        return stale

    def release(self) -> None:
        """Remove the file, then drop the lock (removing first means no one can see it unlocked)."""
        if self.fd is None:
            return
        try:
            os.unlink(self.path)
        except OSError:
            pass
        os.close(self.fd)
        self.fd = None


def read_pid(path: str) -> int | None:
    """The pid written in the file, or None."""
    try:
        with open(path) as fh:
            return int(fh.read().strip() or 0) or None
    except (OSError, ValueError):
        return None


def running_pid(path: str) -> int | None:
    """The pid of the live master that holds the lock on `path`, or None."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN):
                return read_pid(path) or -1
            raise
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


def wait_gone(path: str, timeout_s: float) -> bool:
    """Poll until no master holds the pid file lock; False on timeout."""
    deadline = time.monotonic() + timeout_s
    while running_pid(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)
    return True


def detach(stdio_path: str | None = os.devnull) -> None:
    """In a freshly forked child: setsid, fork again, stdio to `stdio_path` (None: stdout and
    stderr stay as they are, for `logdir = -`).

    The second fork means the daemon is not a session leader and can never regain a terminal.
    Returns in the grandchild only; the intermediate child exits.
    """
    os.setsid()
    if os.fork():
        os._exit(0)
    os.umask(0o022)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    if stdio_path is not None:
        out = fsafe.open_append(stdio_path)  # never through a link planted in logdir
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)


def describe(exc: BaseException) -> str:
    """One sentence for an error met while starting: an OS error names the path and the cause."""
    if isinstance(exc, OSError) and exc.errno == errno.ELOOP and exc.filename:
        return f"{exc.filename} is a symbolic link, which the master never follows; remove it"
    if isinstance(exc, OSError) and exc.strerror:
        where = f" {exc.filename}" if exc.filename else ""
        return f"cannot use{where}: {exc.strerror}"
    return str(exc)


def start_daemon(stdio_path: str | None, run: MasterRun) -> dict[str, Any] | None:
    """Start `run` as a daemon and return the first message it sends through `notify`.

    The CLI forks; the child detaches (:func:`detach`, stdio to `stdio_path`) and calls `run`.
    The message comes back over a pipe as one JSON document; None means the daemon died before
    it said anything. The caller's process is left as it was (the intermediate child is reaped).
    """
    read_end, write_end = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - runs in the daemon
        os.close(read_end)
        code = 1
        pipe: list[int] = [write_end]

        def notify(msg: dict[str, Any]) -> None:
            if pipe:
                os.write(pipe[0], json.dumps(msg).encode())
                os.close(pipe.pop())

        try:
            if stdio_path is not None:  # None: logdir = -, the daemon keeps this stdout
                os.makedirs(os.path.dirname(stdio_path), exist_ok=True)
            detach(stdio_path)
            code = run(notify)
        except BaseException as exc:  # noqa: BLE001 - the CLI must hear why the daemon died
            try:
                notify({"ok": False, "error": f"the master could not start: {describe(exc)}"})
            except OSError:
                pass
        finally:
            os._exit(code)
    os.close(write_end)
    chunks = []
    while chunk := os.read(read_end, 65536):
        chunks.append(chunk)
    os.close(read_end)
    os.waitpid(child, 0)
    if not chunks:
        return None
    msg: dict[str, Any] = json.loads(b"".join(chunks))
    return msg
