"""The control socket: a Unix socket (mode 0600) in rundir, one JSON request and one JSON reply
per connection, each a single line.

The server runs in the master (gevent); the client in the CLI (plain blocking sockets).
Garbage, huge or half-written requests get an error reply (or a closed connection) and never
disturb the master. Connections from other users are refused (peer credentials).
"""

from __future__ import annotations

import _socket  # the C type under socket.socket: the socket module costs the CLI ~7 ms of imports
import json
import os
import struct

# Not `from typing import ...` at run time: the CLI imports this module, and typing costs it
# about 4 ms of a start that must stay near Python's own (bench/cli_start.py).
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

    Dispatch = Callable[[dict[str, Any]], dict[str, Any]]

MAX_REQUEST_BYTES = 1 << 20
READ_TIMEOUT_S = 5.0
MAX_CONNECTIONS = 32  # control connections served at once (each holds one descriptor)


class ControlError(Exception):
    """The master could not be reached or answered with an error."""


def _peer_uid(sock: Any) -> int:
    creds = sock.getsockopt(_socket.SOL_SOCKET, _socket.SO_PEERCRED, struct.calcsize("3i"))
    _pid, uid, _gid = struct.unpack("3i", creds)
    return int(uid)


def _read_line(sock: Any) -> bytes | None:
    """One request line, or None when it is too big, half-written or never finished."""
    import gevent

    buf = b""
    with gevent.Timeout(READ_TIMEOUT_S, False):
        while b"\n" not in buf:
            chunk = sock.recv(65536)
            if not chunk:
                return buf or None  # a client that closes without a newline still gets parsed
            buf += chunk
            if len(buf) > MAX_REQUEST_BYTES:
                return None
        return buf.split(b"\n", 1)[0]
    return None


MAX_DEPTH = 4  # a request is an object of scalars and lists of names: nothing nests deeper


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a request may hold")


def _depth(value: Any) -> int:
    """Nesting depth of a parsed JSON value, without recursion."""
    deepest, stack = 0, [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, (dict, list)):
            deepest = max(deepest, level)
            children = item.values() if isinstance(item, dict) else item
            stack.extend((child, level + 1) for child in children)
    return deepest


def parse_request(line: bytes) -> tuple[dict[str, Any] | None, str]:
    """A request object, or None and why: not JSON, NaN or Infinity, nested too deep, no cmd."""
    try:
        request = json.loads(line, parse_constant=_reject_constant)
    except RecursionError:
        return None, f"nested deeper than {MAX_DEPTH} levels"
    except ValueError:
        return None, "expected a JSON object with a cmd"
    if not isinstance(request, dict) or not isinstance(request.get("cmd"), str):
        return None, "expected a JSON object with a cmd"
    if _depth(request) > MAX_DEPTH:
        return None, f"nested deeper than {MAX_DEPTH} levels"
    return request, ""


class ControlServer:
    """Serves requests on the control socket by calling `dispatch(request) -> reply`."""

    def __init__(self, path: str, dispatch: Dispatch) -> None:
        self.path = path
        self.dispatch = dispatch
        self._server: Any = None

    def start(self) -> None:
        """Bind the socket with mode 0600 (replacing a stale one) and start serving."""
        # gevent is imported here, in the master only: the CLI side starts faster without it.
        import gevent.socket
        from gevent.server import StreamServer

        if os.path.exists(self.path):
            os.unlink(self.path)
        listener = gevent.socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        old = os.umask(0o177)
        try:
            listener.bind(self.path)
        finally:
            os.umask(old)
        # No chmod by path: the umask above already made it 0600, and a chmod would follow a link
        # planted in its place between the bind and the chmod.
        listener.listen(128)
        # At most MAX_CONNECTIONS at once: past that, connections wait in the listen backlog and
        # take no descriptor of the master's, so a flood cannot starve the workers' respawns.
        self._server = StreamServer(listener, self._handle, spawn=MAX_CONNECTIONS)
        self._server.start()

    def close(self) -> None:
        """Stop serving and remove the socket file."""
        if self._server is not None:
            self._server.close()
        try:
            os.unlink(self.path)
        except OSError:
            pass

    def _handle(self, sock: Any, _address: Any) -> None:
        import logging  # the master's side only: the CLI starts faster without it

        log = logging.getLogger("gsuper")
        try:
            uid = _peer_uid(sock)
            if uid not in (0, os.geteuid()):
                log.warning("control: refused a connection from uid %d", uid)
                self._reply(sock, {"ok": False, "error": "permission denied"})
                return
            line = _read_line(sock)
            if line is None:
                self._reply(sock, {"ok": False, "error": "bad request: too big or not finished"})
                return
            request, problem = parse_request(line)
            if request is None:
                self._reply(sock, {"ok": False, "error": f"bad request: {problem}"})
                return
            try:
                reply = self.dispatch(request)
            except Exception as exc:  # noqa: BLE001 - a failing command must not end the master
                log.exception("control: %s failed", request.get("cmd"))
                reply = {"ok": False, "error": f"{request.get('cmd')} failed: {exc}"}
            self._reply(sock, reply)
        except OSError:
            pass
        finally:
            sock.close()

    @staticmethod
    def _reply(sock: Any, reply: dict[str, Any]) -> None:
        sock.sendall(json.dumps(reply).encode() + b"\n")


class Pending:
    """A request sent whose reply comes later (a stop that waits); the CLI polls `ready()`."""

    def __init__(self, path: str, payload: dict[str, Any]) -> None:
        self.path = path
        self.sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        self.sock.settimeout(10.0)
        try:
            self.sock.connect(path)
            self.sock.sendall(json.dumps(payload).encode() + b"\n")
        except (FileNotFoundError, ConnectionRefusedError):
            self.sock.close()
            raise ControlError(f"the master is not answering on {path}") from None
        except OSError as exc:
            self.sock.close()
            raise ControlError(f"cannot talk to the master on {path}: {exc.strerror}") from None

    def ready(self) -> bool:
        """True when the reply (or the end of the connection) has arrived."""
        import select

        return bool(select.select([self.sock], [], [], 0)[0])

    def result(self) -> dict[str, Any] | None:
        """The reply, or None when the master closed the connection (it exited) without one."""
        buf = b""
        try:
            while not buf.endswith(b"\n"):
                chunk = self.sock.recv(65536)
                if not chunk:
                    break
                buf += chunk
        except OSError:
            pass
        finally:
            self.sock.close()
        try:
            reply = json.loads(buf) if buf else None
        except ValueError:
            return None
        return reply if isinstance(reply, dict) else None


def request(path: str, payload: dict[str, Any], timeout_s: float | None = 10.0) -> dict[str, Any]:
    """Send one request to the master and return its reply (CLI side, blocking)."""
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout_s)
    try:
        sock.connect(path)
        sock.sendall(json.dumps(payload).encode() + b"\n")
        buf = b""
        while not buf.endswith(b"\n"):
            chunk = sock.recv(65536)
            if not chunk:
                break
            buf += chunk
    except (FileNotFoundError, ConnectionRefusedError):
        raise ControlError(f"the master is not answering on {path}") from None
    except TimeoutError:
        raise ControlError(f"the master did not answer within {timeout_s:.0f}s on {path}") from None
    except OSError as exc:
        raise ControlError(f"cannot talk to the master on {path}: {exc.strerror}") from None
    finally:
        sock.close()
    if not buf:
        raise ControlError("the master closed the connection without an answer")
    try:
        reply = json.loads(buf)
    except ValueError:
        raise ControlError("the master sent an unreadable answer") from None
    if not isinstance(reply, dict):
        raise ControlError("the master sent an unreadable answer")
    return reply
