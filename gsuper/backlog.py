"""Backlog sources for autoscaling: the length of a Redis list, or a probe command's number.

A reading is cooperative and bounded: the Redis client speaks RESP over a gevent socket (one
connection kept open, `LLEN` per reading) and the probe is a spawned process read through a
non-blocking pipe. Both run under a `gevent.Timeout`, so a Redis that is down, slow or not
Redis, or a probe that hangs, costs the master's loop nothing: the reading fails with a
:class:`BacklogError` (one sentence for the log and status) and the caller keeps its count.

Why not redis-py: the master is not monkey-patched, so redis-py's blocking socket would stall
the hub (or need a thread per reading); one command with an integer reply is ~60 lines of RESP.
bench/autoscale.py --resp-vs-redis-py measures both (see docs/operations.md).
"""

from __future__ import annotations

import math
import os
import re
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Union
from urllib.parse import unquote as url_unquote
from urllib.parse import urlsplit

from gsuper.osutil import killpg

if TYPE_CHECKING:
    from gsuper.spawn import Child

# gevent is imported by the readers, not here: config.py parses sources for `check`, and the
# CLI imports gevent only where the master runs.

PROBE_OUTPUT_MAX = 4096


class BacklogError(Exception):
    """A reading that failed; the text is one sentence for the master log and status."""


@dataclass(frozen=True)
class RedisSource:
    """`redis://[[USER]:PASSWORD@]HOST[:PORT]/DB/KEY`: the length of list KEY in database DB."""

    host: str
    port: int
    db: int
    key: str
    username: str | None = None
    password: str | None = None

    def describe(self) -> str:
        """How the source is named in messages (never with its password)."""
        return f"redis {self.host}:{self.port}/{self.db} list {self.key!r}"


@dataclass(frozen=True)
class CommandSource:
    """`command:CMD`: CMD run by `sh -c`, which must print one number."""

    command: str

    def describe(self) -> str:
        """How the source is named in messages."""
        return f"probe {self.command!r}"


Source = Union[RedisSource, CommandSource]  # `|` between classes needs Python 3.10
USAGE = "use redis://HOST:PORT/DB/KEY or command:CMD"


def parse_source(text: str) -> Source:
    """Parse a `scale_source` value; ValueError with one sentence when it cannot be used."""
    text = text.strip()
    if text.startswith("command:"):
        command = text[len("command:") :].strip()
        if not command:
            raise ValueError(f"{text!r} names no command ({USAGE})")
        return CommandSource(command)
    if not text.startswith("redis://"):
        raise ValueError(f"{text!r} is not a backlog source ({USAGE})")
    parts = urlsplit(text)
    try:
        port = parts.port or 6379
    except ValueError:
        raise ValueError(f"{text!r}: the port is not a number from 1 to 65535 ({USAGE})") from None
    host = parts.hostname
    if not host:
        raise ValueError(f"{text!r} names no host ({USAGE})")
    db_text, sep, key = parts.path.lstrip("/").partition("/")
    if not sep or not re.fullmatch(r"\d+", db_text):
        raise ValueError(f"{text!r}: the path must be /DB/KEY with DB a number, like redis://127.0.0.1:6379/0/jobs")
    key = url_unquote(key)
    if not key:
        raise ValueError(f"{text!r} names no list key ({USAGE})")
    if parts.query or parts.fragment:
        raise ValueError(f"{text!r}: a '?' or '#' in the key must be written %3F or %23 ({USAGE})")
    username = url_unquote(parts.username) if parts.username else None
    password = url_unquote(parts.password) if parts.password else None
    return RedisSource(host, port, int(db_text), key, username, password)


# -- Redis ------------------------------------------------------------------------------------------


def _command(*words: str) -> bytes:
    out = [b"*%d\r\n" % len(words)]
    for word in words:
        data = word.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


class RedisReader:
    """Reads `LLEN KEY` over one kept-open connection; reconnects after any failure."""

    def __init__(self, source: RedisSource) -> None:
        self.source = source
        self._sock: Any = None
        self._buf = b""

    def read(self, timeout_s: float) -> int:
        """The list's length now; BacklogError when Redis is down, slow or answers garbage."""
        import gevent

        timer = gevent.Timeout(timeout_s)
        timer.start()
        try:
            if self._sock is not None:
                try:
                    return self._ask_int(_command("LLEN", self.source.key))
                except (OSError, BacklogError):
                    # A kept connection may have been closed by the server meanwhile (a
                    # restart, its idle timeout): ask once more on a fresh one.
                    self.close()
            self._connect()
            return self._ask_int(_command("LLEN", self.source.key))
        except gevent.Timeout as t:
            if t is not timer:
                raise
            self.close()  # a late reply would answer the next question
            raise BacklogError(f"{self.source.describe()}: no answer within {timeout_s:g}s") from None
        except OSError as exc:
            self.close()
            reason = exc.strerror or str(exc) or type(exc).__name__
            raise BacklogError(f"{self.source.describe()}: cannot reach it ({reason})") from None
        except BacklogError:
            self.close()
            raise
        finally:
            timer.close()

    def close(self) -> None:
        """Drop the connection (the next reading connects again)."""
        if self._sock is not None:
            self._sock.close()
        self._sock, self._buf = None, b""

    def _connect(self) -> None:
        import gevent.socket

        self._sock = gevent.socket.create_connection((self.source.host, self.source.port))
        self._buf = b""
        if self.source.password is not None:
            auth = [self.source.username, self.source.password] if self.source.username else [self.source.password]
            self._ask_ok(_command("AUTH", *auth))
        if self.source.db:
            self._ask_ok(_command("SELECT", str(self.source.db)))

    def _ask_ok(self, request: bytes) -> None:
        line = self._ask(request)
        if line != b"+OK":
            raise BacklogError(f"{self.source.describe()}: {self._garbage(line)}")

    def _ask_int(self, request: bytes) -> int:
        line = self._ask(request)
        if line[:1] == b":" and re.fullmatch(rb":\d+", line):
            return int(line[1:])
        raise BacklogError(f"{self.source.describe()}: {self._garbage(line)}")

    def _ask(self, request: bytes) -> bytes:
        assert self._sock is not None
        self._sock.sendall(request)
        while b"\r\n" not in self._buf:
            chunk = self._sock.recv(4096)
            if not chunk:
                raise BacklogError(f"{self.source.describe()}: the connection was closed")
            self._buf += chunk
            if len(self._buf) > 65536:
                raise BacklogError(f"{self.source.describe()}: the answer is not Redis's")
        line, _, self._buf = self._buf.partition(b"\r\n")
        return line

    @staticmethod
    def _garbage(line: bytes) -> str:
        if line[:1] == b"-":
            return "Redis answered " + line[1:].decode(errors="replace")[:200]
        return "the answer is not a list length (is it a Redis server?)"


# -- probe command -----------------------------------------------------------------------------------


class CommandReader:
    """Runs the probe once per reading; its stdout must be one number. Killed if it hangs."""

    def __init__(self, source: CommandSource, cwd: str, env: dict[str, str], user: Any = None) -> None:
        self.source = source
        self.cwd = cwd
        self.env = env
        self.user = user  # the program's `user`: the probe runs as the workers do

    def read(self, timeout_s: float) -> int:
        """The number the probe printed; BacklogError if it fails, hangs or prints text."""
        import gevent

        out_r, out_w = os.pipe()
        err_r, err_w = os.pipe()
        try:
            child = self._spawn(out_w, err_w)
        except OSError as exc:
            for fd in (out_r, err_r):
                os.close(fd)
            raise BacklogError(f"{self.source.describe()}: cannot start it ({exc.strerror})") from None
        finally:
            os.close(out_w)
            os.close(err_w)
        out, err = bytearray(), bytearray()
        timer = gevent.Timeout(timeout_s)
        timer.start()
        try:
            readers = [gevent.spawn(_drain, out_r, out), gevent.spawn(_drain, err_r, err)]
            gevent.joinall(readers)  # both pipes at EOF: the probe (and its children) closed them
            code = child.wait()
        except gevent.Timeout as t:
            if t is not timer:
                raise
            gevent.killall(readers)
            raise BacklogError(f"{self.source.describe()}: did not finish within {timeout_s:g}s and was killed") from None
        finally:
            timer.close()
            killpg(child.pid, signal.SIGKILL)  # whatever it left in its group goes too (and a hung probe)
            for fd in (out_r, err_r):
                os.close(fd)
        if code != 0:
            last = err.decode(errors="replace").strip().splitlines()[-1:] or ["no message"]
            raise BacklogError(f"{self.source.describe()}: exited {code} ({last[0][:200]})")
        return parse_number(out.decode(errors="replace"), self.source.describe())

    def close(self) -> None:
        """Nothing is kept between readings."""

    def _spawn(self, out_w: int, err_w: int) -> Child:
        import gevent

        from gsuper.spawn import _RESET, Child, setpriv_argv

        command = setpriv_argv(["/bin/sh", "-c", self.source.command], self.user)
        # As spawn.spawn does: libev's SIGCHLD handler before the child exists, or a probe that
        # exits at once, as the master's first child, would never be reaped nor seen.
        gevent.get_hub().loop.install_sigchld()
        actions = [
            (os.POSIX_SPAWN_OPEN, 0, os.devnull, os.O_RDONLY, 0),
            (os.POSIX_SPAWN_DUP2, out_w, 1),
            (os.POSIX_SPAWN_DUP2, err_w, 2),
        ]
        try:
            previous = os.getcwd()
        except OSError:
            previous = "/"
        os.chdir(self.cwd)  # the master is single-threaded (see spawn.spawn)
        try:
            pid = os.posix_spawnp(
                command[0], command, self.env, file_actions=actions, setsid=True, setsigmask=(), setsigdef=_RESET
            )
        finally:
            os.chdir(previous)
        return Child(pid)


def parse_number(text: str, where: str) -> int:
    """One non-negative number (a fraction is rounded up) from a probe's output."""
    words = text.split()
    if len(words) == 1 and re.fullmatch(r"\d+(\.\d+)?", words[0]):
        return int(math.ceil(float(words[0])))
    shown = text.strip()[:60] or "nothing"
    raise BacklogError(f"{where}: printed {shown!r}, not one number")


def _drain(fd: int, into: bytearray) -> None:
    import gevent.os

    os.set_blocking(fd, False)
    while True:
        chunk = gevent.os.nb_read(fd, 4096)
        if not chunk:
            return
        if len(into) < PROBE_OUTPUT_MAX:
            into += chunk




Reader = Union[RedisReader, CommandReader]


def reader_for(source: Source, cwd: str, env: dict[str, str], user: Any = None) -> Reader:
    """The reader of a parsed source (the probe runs in `cwd` with `env`, as `user`)."""
    if isinstance(source, RedisSource):
        return RedisReader(source)
    return CommandReader(source, cwd, env, user)
