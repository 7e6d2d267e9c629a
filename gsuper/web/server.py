"""The master's HTTP server: gevent's pywsgi in the master's hub, never in supervision's way.

Paths: ``/metrics`` (Prometheus text), ``/status.json`` (the ``status --json`` document),
``/events.json`` (the last events and per-program totals, for the dashboard), ``/healthz``,
``/readyz``, and ``/`` with ``/static/*`` (the dashboard, files inside the package).

What keeps a client from hurting supervision: at most :data:`MAX_CONNECTIONS` connections are
served at once (the rest wait in the listen backlog); a socket that says nothing for
:data:`IDLE_TIMEOUT_S` is closed, and so is any connection still open after
:data:`CONNECTION_TIMEOUT_S` (a client that trickles bytes); a request (line and headers) over
:data:`MAX_REQUEST_BYTES` gets 400 or 414 and is closed; one request per connection; only GET
and HEAD. Every handler is a few dict reads and a render: it never waits on a worker.
"""

from __future__ import annotations

import hmac
import json
import logging
import time
from collections.abc import Callable, Iterable
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import gevent
import gevent.pool
from gevent.pywsgi import WSGIHandler, WSGIServer

from gsuper.events import EventStream
from gsuper.web.metrics import CONTENT_TYPE, Counters, GsuperCollector, MemoryCollector, make_registry, memory_key, render

if TYPE_CHECKING:
    from gsuper.master import Master

log = logging.getLogger("gsuper")

MAX_CONNECTIONS = 64
IDLE_TIMEOUT_S = 5.0
CONNECTION_TIMEOUT_S = 10.0
MAX_REQUEST_BYTES = 16384
# A scrape reuses a memory sample this recent: sampling every worker (its PSS above all, ~65 µs
# a process) costs tens of ms of CPU at 1,000 workers. Programs with a memory_limit are sampled
# more often by the master's monitor anyway.
RSS_MAX_AGE_S = 15.0
EVENTS_SHOWN = 100
OPEN_PATHS = ("/healthz", "/readyz")
STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
    "/favicon.ico": ("favicon.svg", "image/svg+xml"),
}
NOT_UP = ("STARTING", "BACKOFF", "FATAL", "EXITED")

StartResponse = Callable[[str, list[tuple[str, str]]], Any]


class Source(Protocol):
    """What the server reads from the master."""

    events: EventStream

    def document(self, fresh_rss: bool) -> dict[str, Any]:
        """The status document."""

    def desired(self) -> dict[str, int]:
        """Each program's wanted worker count."""

    def autostarted(self) -> set[str]:
        """Programs that readyz waits for."""


class MasterSource:
    """The master, as the server reads it."""

    def __init__(self, master: Master) -> None:
        self.master = master
        self.events = master.events

    def document(self, fresh_rss: bool) -> dict[str, Any]:
        """The master's status document (memory sampled now only when `fresh_rss`)."""
        return self.master.status(None, with_rss=fresh_rss, rss_now=fresh_rss)

    def desired(self) -> dict[str, int]:
        """Each program's worker count as configured or last scaled."""
        return {name: p.config.numprocs for name, p in self.master.programs.items()}

    def autostarted(self) -> set[str]:
        """Programs started with the master (autostart = true)."""
        return {name for name, p in self.master.programs.items() if p.config.autostart}


def readiness(doc: dict[str, Any], autostarted: set[str]) -> tuple[bool, list[dict[str, Any]]]:
    """Whether every wanted worker of every autostarted program is RUNNING, and those that are not.

    A slot that was stopped on purpose (STOPPED, STOPPING) is not wanted; STARTING, BACKOFF,
    FATAL and EXITED (between an exit and its respawn) are not up.
    """
    if doc.get("master", {}).get("stopping"):
        return False, [{"master": "stopping"}]
    down = [
        {"program": w["program"], "index": w["index"], "state": w["state"], "last_error": w.get("last_error")}
        for w in doc.get("workers", [])
        if w["program"] in autostarted and w["state"] in NOT_UP
    ]
    return not down, down


class _Limited:
    """A request's input, cut off after `limit` bytes (request line and headers together)."""

    def __init__(self, raw: Any, limit: int) -> None:
        self._raw = raw
        self._left = limit

    def _take(self, size: int | None) -> int:
        if self._left <= 0:
            raise ValueError("the request is too large")
        return self._left if size is None or size < 0 else min(size, self._left)

    def readline(self, size: int | None = -1) -> bytes:
        data: bytes = self._raw.readline(self._take(size))
        self._left -= len(data)
        return data

    def read(self, size: int | None = -1) -> bytes:
        data: bytes = self._raw.read(self._take(size))
        self._left -= len(data)
        return data

    def __getattr__(self, name: str) -> Any:
        return getattr(self._raw, name)


class _Handler(WSGIHandler):  # type: ignore[misc]
    """pywsgi's handler with a per-socket idle timeout, a whole-connection deadline, a size cap."""

    def __init__(self, sock: Any, address: Any, server: Any, rfile: Any = None) -> None:
        sock.settimeout(IDLE_TIMEOUT_S)
        super().__init__(sock, address, server, _Limited(sock.makefile("rb", -1), MAX_REQUEST_BYTES))

    def handle(self) -> None:
        with gevent.Timeout(CONNECTION_TIMEOUT_S, False):
            super().handle()
        if self.socket is not None:
            self.socket.close()


class WebServer:
    """The HTTP endpoint of one master."""

    def __init__(self, host: str, port: int, token: str | None, source: Source) -> None:
        self.host, self.port = host, port
        self.token = token.encode() if token else None
        self.source = source
        self.counters = Counters()
        self._unsubscribe = source.events.subscribe(self.counters)
        self._rss_at = -RSS_MAX_AGE_S
        self._scrape: dict[str, Any] = {}
        self.registry = make_registry(GsuperCollector(self._scrape_doc, source.desired, self.counters))
        self.memory_registry = make_registry(MemoryCollector(self._scrape_doc))
        self._memory: tuple[Any, bytes] = (None, b"")
        self._static = {path: (_read_static(name), ctype) for path, (name, ctype) in STATIC.items()}
        self._server: WSGIServer | None = None

    def start(self) -> None:
        """Bind and serve (raises OSError when the address cannot be bound)."""
        self._server = WSGIServer(
            (self.host, self.port),
            self.app,
            spawn=gevent.pool.Pool(MAX_CONNECTIONS),
            handler_class=_Handler,
            log=None,
            error_log=logging.getLogger("gsuper.http"),
        )
        self._server.start()
        self.port = self._server.server_port
        log.info("serving HTTP on %s:%d%s", self.host, self.port, " (token required)" if self.token else "")

    def close(self) -> None:
        """Stop serving and stop counting."""
        if self._server is not None:
            self._server.stop(timeout=1)
            self._server = None
        self._unsubscribe()

    # -- the WSGI application ------------------------------------------------------------------

    def app(self, environ: dict[str, Any], start_response: StartResponse) -> Iterable[bytes]:
        """Route one request."""
        method, path = environ.get("REQUEST_METHOD", "GET"), environ.get("PATH_INFO", "/")
        try:
            if method not in ("GET", "HEAD"):
                status, ctype, body = "405 Method Not Allowed", "text/plain", b"only GET and HEAD\n"
            elif self.token is not None and path not in OPEN_PATHS and not self._authorized(environ):
                status, ctype, body = "401 Unauthorized", "text/plain", b"a bearer token is required\n"
            else:
                status, ctype, body = self._route(path)
        except Exception:  # noqa: BLE001 - a bug in a page must not end the server or the master
            log.exception("HTTP %s %s failed", method, path)
            status, ctype, body = "500 Internal Server Error", "text/plain", b"internal error\n"
        headers = [("Content-Type", ctype), ("Content-Length", str(len(body))), ("Connection", "close")]
        headers += [("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff")]
        if status.startswith("401"):
            headers.append(("WWW-Authenticate", 'Bearer realm="gsuper"'))
        if ctype.startswith("text/html"):
            headers.append(("Content-Security-Policy", "default-src 'self'; img-src 'self' data:"))
        start_response(status, headers)
        return [b""] if method == "HEAD" else [body]

    def _authorized(self, environ: dict[str, Any]) -> bool:
        assert self.token is not None
        given = environ.get("HTTP_AUTHORIZATION", "")
        scheme, _, value = given.partition(" ")
        return scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode("latin-1"), self.token)

    def _route(self, path: str) -> tuple[str, str, bytes]:
        if path == "/metrics":
            return "200 OK", CONTENT_TYPE, self.metrics()
        if path == "/status.json":
            return "200 OK", "application/json", _json(self._public(self._doc()))
        if path == "/events.json":
            recent = list(self.source.events.recent)[-EVENTS_SHOWN:]
            feed = {"time": time.time(), "events": [e.as_dict() for e in recent], "totals": self.counters.totals()}
            return "200 OK", "application/json", _json(feed)
        if path == "/healthz":
            return "200 OK", "application/json", _json({"ok": True})
        if path == "/readyz":
            ok, down = readiness(self.source.document(False), self.source.autostarted())
            return ("200 OK" if ok else "503 Service Unavailable"), "application/json", _json({"ready": ok, "not_up": down})
        if path in self._static:
            content, ctype = self._static[path]
            return "200 OK", ctype, content
        return "404 Not Found", "text/plain", b"not found\n"

    def _doc(self) -> dict[str, Any]:
        # Scrapes and dashboards share a recent memory sample (gsuper.memsample).
        now = time.monotonic()
        fresh = now - self._rss_at >= RSS_MAX_AGE_S
        if fresh:
            self._rss_at = now
        return self.source.document(fresh)

    def metrics(self) -> bytes:
        """The exposition: one status document per scrape, the memory part re-rendered only
        when a sample changed."""
        self._scrape = self._doc()
        try:
            key = memory_key(self._scrape)
            if key != self._memory[0]:
                self._memory = (key, render(self.memory_registry))
            return render(self.registry) + self._memory[1]
        finally:
            self._scrape = {}

    def _scrape_doc(self) -> dict[str, Any]:
        return self._scrape

    @staticmethod
    def _public(doc: dict[str, Any]) -> dict[str, Any]:
        """The document exactly as `status --json` prints it."""
        master = {k: v for k, v in doc.get("master", {}).items() if k != "stopping"}
        return {**doc, "master": master}


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _read_static(name: str) -> bytes:
    return resources.files("gsuper.web").joinpath("static").joinpath(name).read_bytes()
