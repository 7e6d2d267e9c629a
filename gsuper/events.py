"""One in-process stream of what the master learns.

Every fact (a worker was spawned, changed state, exited with a reason, reported requests; a
program was scaled; a reload was applied) is one :class:`Event`, emitted once on the master's
:class:`EventStream`. Status, metrics, hooks, the dashboard's recent events and sd_notify read
this stream (or the snapshot kept from it); none of them keeps its own bookkeeping of the same
facts.

Subscribers are called synchronously, in the hub, in the order they subscribed: they must not
block (queue the event and act in a greenlet of their own). A subscriber that raises is logged
and never disturbs supervision or the other subscribers.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger("gsuper")

#: The kinds of event.
#: - ``started``: a process was spawned (``pid``).
#: - ``state``: a worker changed state (``state`` is the new one, ``data["from"]`` the old).
#: - ``exit``: a worker's process ended (``reason``, ``code``, ``data["uptime_s"]``).
#: - ``request``: a runner reported requests (``data["done"]`` since the last report,
#:   ``data["requests"]`` in this life, ``data["ms"]`` their mean duration).
#: - ``scaled``: a program's worker count changed (``data["before"]``, ``data["after"]``).
#: - ``reloaded``: a reload was applied (``data["changes"]``).
KINDS = frozenset({"started", "state", "exit", "request", "scaled", "reloaded"})

Subscriber = Callable[["Event"], None]


@dataclass(frozen=True)
class Event:
    """One fact the master learned."""

    kind: str
    program: str | None = None
    worker: int | None = None
    pid: int | None = None
    reason: str | None = None
    code: int | None = None
    state: str | None = None
    data: dict[str, Any] = field(default_factory=dict)
    time: float = field(default_factory=time.time)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict (for hooks, the dashboard's recent events)."""
        out: dict[str, Any] = {"event": self.kind, "program": self.program, "worker": self.worker, "pid": self.pid}
        out.update(time=self.time, reason=self.reason, code=self.code, state=self.state)
        out.update(self.data)
        return out


class EventStream:
    """Fan-out of events to subscribers, plus the last `keep` events (not requests) for display."""

    def __init__(self, keep: int = 200) -> None:
        self._subscribers: list[Subscriber] = []
        self.recent: deque[Event] = deque(maxlen=keep)

    def subscribe(self, fn: Subscriber) -> Callable[[], None]:
        """Call `fn(event)` for every event from now on; returns a function that unsubscribes."""
        self._subscribers.append(fn)

        def unsubscribe() -> None:
            if fn in self._subscribers:
                self._subscribers.remove(fn)

        return unsubscribe

    def emit(self, event: Event) -> None:
        """Hand the event to every subscriber, in order; a failing subscriber is logged."""
        if event.kind != "request":
            self.recent.append(event)
        for fn in list(self._subscribers):
            try:
                fn(event)
            except Exception:  # noqa: BLE001 - a subscriber's bug must not disturb supervision
                log.exception("event subscriber %r failed on a %s event", fn, event.kind)
