"""systemd `Type=notify`: readiness, reload, stop, status and watchdog, over `NOTIFY_SOCKET`.

No library: the protocol is one datagram of `KEY=value` lines to the AF_UNIX socket named in
`NOTIFY_SOCKET` (a leading `@` means the abstract namespace). The master sends
- `READY=1` once every worker was spawned (and again after a reload),
- `RELOADING=1` with `MONOTONIC_USEC=` (systemd 253+ wants it) when a reload begins,
- `STOPPING=1` when a stop begins,
- `STATUS=` with the worker counts, whenever a worker changes state (coalesced),
- `WATCHDOG=1` every half of `WATCHDOG_USEC`, from a greenlet of the hub: if the loop stalls,
  the pings stop and systemd acts.

The variables are removed from the master's environment once read, so that no worker talks to
systemd in the master's name (sd_notify's `unset_environment`).
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections import Counter, deque
from collections.abc import Callable, Iterable, MutableMapping
from typing import Any

import gevent

from gsuper.events import Event

log = logging.getLogger("gsuper")

ENV_VARS = ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID")
STATUS_DELAY_S = 0.2  # state changes within this window give one STATUS= datagram
RETRY_S = 0.05  # a datagram that met a full socket queue is tried again after this
BACKLOG_MAX = 100  # datagrams waiting for room; past it the oldest are dropped
STATE_ORDER = ("RUNNING", "STARTING", "BACKOFF", "STOPPING", "EXITED", "FATAL", "STOPPED")


def status_line(states: Iterable[str], stopping: bool = False) -> str:
    """`STATUS=` text from the workers' states: `3 workers: 2 RUNNING, 1 BACKOFF`."""
    counts = Counter(states)
    total = sum(counts.values())
    parts = [f"{counts[s]} {s}" for s in STATE_ORDER if counts.get(s)]
    parts += [f"{n} {s}" for s, n in sorted(counts.items()) if s not in STATE_ORDER]
    text = f"{total} worker{'s' if total != 1 else ''}" + (": " + ", ".join(parts) if parts else "")
    return ("stopping; " + text) if stopping else text


def status_of(programs: Iterable[Any], stopping: bool = False) -> str:
    """`STATUS=` text of the master's programs (anything with `workers` that have a `state`)."""
    return status_line((w.state.value for p in programs for w in p.workers), stopping)


def socket_address(value: str) -> str | bytes:
    """The sendto() address of a NOTIFY_SOCKET value (`@name` is abstract: a leading NUL)."""
    if value.startswith("@"):
        return b"\0" + value[1:].encode()
    return value


def watchdog_interval_s(environ: MutableMapping[str, str], pid: int) -> float | None:
    """Seconds between two WATCHDOG=1 pings (half of WATCHDOG_USEC), or None when the watchdog
    is off or meant for another process (WATCHDOG_PID)."""
    try:
        usec = int(environ.get("WATCHDOG_USEC", "0"))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = environ.get("WATCHDOG_PID")
    if owner and owner.strip() != str(pid):
        return None
    return usec / 1e6 / 2


class SystemdNotifier:
    """The master's end of the sd_notify protocol. Sending never blocks and never raises."""

    def __init__(self, address: str, watchdog_s: float | None = None) -> None:
        self.address = address
        self.watchdog_s = watchdog_s
        self.sent = 0
        self._target = socket_address(address)
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC)
        self._sock.setblocking(False)
        self._error: str | None = None
        self._backlog: deque[bytes] = deque(maxlen=BACKLOG_MAX)
        self._status_pending = False
        self._status: Callable[[], str] = lambda: ""
        self._greenlets: list[gevent.Greenlet] = []

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None, pid: int | None = None) -> SystemdNotifier | None:
        """A notifier when NOTIFY_SOCKET is set (None otherwise); the variables are removed."""
        env = os.environ if environ is None else environ
        address = env.get("NOTIFY_SOCKET", "")
        watchdog = watchdog_interval_s(env, os.getpid() if pid is None else pid)
        for name in ENV_VARS:
            env.pop(name, None)
        if not address:
            return None
        if not address.startswith(("/", "@")):
            log.warning("NOTIFY_SOCKET=%s is not a path or an abstract (@) address: systemd is not notified", address)
            return None
        return cls(address, watchdog)

    def send(self, *fields: str, retry: bool = True) -> bool:
        """One datagram of `KEY=value` lines; False if it was not sent now (errors logged once).

        A full socket queue (the manager reads slowly) is not a reason to lose READY=1 or
        STOPPING=1: such a datagram waits, in order, and is retried every 50 ms (up to
        BACKLOG_MAX waiting). A watchdog ping (`retry=False`) is only worth sending now.
        """
        data = ("\n".join(fields) + "\n").encode()
        if self._backlog:  # keep the order: behind what already waits
            if retry:
                self._backlog.append(data)
            return False
        try:
            self._sock.sendto(data, self._target)
        except BlockingIOError:
            if retry:
                self._backlog.append(data)
                self._greenlets.append(gevent.spawn(self._retry))
            return False
        except OSError as exc:
            self._failed(exc)
            return False
        self.sent += 1
        self._error = None
        return True

    def _failed(self, exc: OSError) -> None:
        text = f"cannot notify systemd at {self.address}: {exc.strerror or exc}"
        if text != self._error:
            log.warning("%s", text)
            self._error = text

    def _retry(self) -> None:
        while self._backlog:
            gevent.sleep(RETRY_S)
            while self._backlog:
                try:
                    self._sock.sendto(self._backlog[0], self._target)
                except BlockingIOError:
                    break
                except OSError as exc:
                    self._failed(exc)
                else:
                    self.sent += 1
                self._backlog.popleft()

    def start(self, status: Callable[[], str]) -> None:
        """Begin: `status()` gives the STATUS= text; the watchdog pings start (if asked for)."""
        self._status = status
        if self.watchdog_s:
            self._greenlets.append(gevent.spawn(self._watchdog))

    def ready(self) -> None:
        """Start-up (or a reload) is complete."""
        self.send("READY=1", f"STATUS={self._status()}")

    def reloading(self) -> None:
        """A reload begins; READY=1 follows when it is applied."""
        self.send("RELOADING=1", f"MONOTONIC_USEC={time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000}", "STATUS=reloading")

    def stopping(self) -> None:
        """A stop of the whole master begins."""
        self.send("STOPPING=1", f"STATUS={self._status()}")

    def changed(self, _event: Event | None = None) -> None:
        """A worker changed state (an event stream subscriber): send STATUS= soon, coalesced."""
        if _event is not None and _event.kind not in ("state", "scaled", "reloaded"):
            return
        if not self._status_pending:
            self._status_pending = True
            self._greenlets.append(gevent.spawn_later(STATUS_DELAY_S, self._send_status))

    def _send_status(self) -> None:
        self._status_pending = False
        self._greenlets = [g for g in self._greenlets if not g.dead]
        self.send(f"STATUS={self._status()}")

    def _watchdog(self) -> None:
        assert self.watchdog_s
        while True:
            self.send("WATCHDOG=1", retry=False)
            gevent.sleep(self.watchdog_s)

    def close(self) -> None:
        """Stop the pings and close the socket."""
        gevent.killall(self._greenlets, block=False)
        self._greenlets = []
        self._sock.close()
