"""Prometheus metrics: counters kept from the event stream, gauges read from the status document.

Nothing here keeps its own bookkeeping of worker state: the gauges (workers by state, desired
workers, resident memory, backlog) are read from the master's status document at each scrape,
and the counters (starts, exits by reason, requests, request durations, scale events) are
counted from the one event stream (:mod:`gsuper.events`) as events arrive. The custom collector
renders both through a private ``CollectorRegistry`` (never the global one).

Request durations: a runner reports at most every 50 ms the number of requests it finished
since its last report (``done``) and their mean duration (``ms``). Each report puts ``done``
observations of that mean into the ``gsuper_request_duration_seconds`` histogram: the count and
sum are exact, the bucket of each single request is approximated by the mean of its report.
"""

from __future__ import annotations

import bisect
from collections import defaultdict
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily, Metric

from gsuper import __version__
from gsuper.events import Event
from gsuper.states import ProcessState

#: Upper bounds (seconds) of the request duration histogram: 1 ms to one minute.
BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
STATES = tuple(s.value for s in ProcessState)
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


class Counters:
    """Monotonic counts per program, fed by subscribing to the master's event stream."""

    def __init__(self) -> None:
        self.starts: dict[str, int] = defaultdict(int)
        self.exits: dict[tuple[str, str], int] = defaultdict(int)
        self.requests: dict[str, int] = defaultdict(int)
        self.scale_events: dict[tuple[str, str], int] = defaultdict(int)
        # Per program: one count per bucket of BUCKETS_S plus +Inf (not cumulative), and the sum.
        self.buckets: dict[str, list[int]] = {}
        self.duration_sum_s: dict[str, float] = defaultdict(float)

    def __call__(self, event: Event) -> None:
        """The event stream subscriber."""
        program = event.program
        if program is None:
            return
        if event.kind == "started":
            self.starts[program] += 1
        elif event.kind == "exit":
            self.exits[(program, event.reason or "exited")] += 1
        elif event.kind == "request":
            done = event.data.get("done")
            if not isinstance(done, int) or done <= 0:
                return
            self.requests[program] += done
            ms = event.data.get("ms")
            if isinstance(ms, (int, float)) and ms >= 0:
                seconds = ms / 1000.0
                counts = self.buckets.setdefault(program, [0] * (len(BUCKETS_S) + 1))
                counts[bisect.bisect_left(BUCKETS_S, seconds)] += done
                self.duration_sum_s[program] += seconds * done
        elif event.kind == "scaled":
            direction = event.data.get("direction")
            if direction not in ("up", "down"):
                direction = "up" if event.data.get("after", 0) > event.data.get("before", 0) else "down"
            self.scale_events[(program, direction)] += 1

    def totals(self) -> dict[str, dict[str, int]]:
        """Per program: requests and starts so far (for the dashboard's rates)."""
        names = set(self.requests) | set(self.starts)
        return {n: {"requests": self.requests.get(n, 0), "starts": self.starts.get(n, 0)} for n in sorted(names)}


class GsuperCollector:
    """A prometheus_client custom collector over the status document and the counters."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]], desired: Callable[[], dict[str, int]], counters: Counters):
        self.snapshot = snapshot
        self.desired = desired
        self.counters = counters

    def describe(self) -> list[Metric]:
        """Nothing: the registry must not call collect() at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """Every gsuper_* metric, from one status document."""
        doc = self.snapshot()
        desired = dict(self.desired())
        # The status document's programs list (autoscaling) knows the wanted count best.
        programs = doc.get("programs")
        for p in programs if isinstance(programs, list) else ():
            if isinstance(p, dict) and isinstance(p.get("desired"), int):
                desired[str(p.get("name", p.get("program")))] = p["desired"]
        rows = doc.get("workers", [])
        names = sorted(set(desired) | {w["program"] for w in rows})
        c = self.counters

        workers = GaugeMetricFamily("gsuper_workers", "Worker slots by state.", labels=["program", "state"])
        by_state: dict[tuple[str, str], int] = defaultdict(int)
        for w in rows:
            by_state[(w["program"], w["state"])] += 1
        for name in names:
            for state in STATES:
                workers.add_metric([name, state], by_state.get((name, state), 0))
        yield workers

        want = GaugeMetricFamily("gsuper_workers_desired", "Workers the program should have now.", labels=["program"])
        for name in names:
            want.add_metric([name], desired.get(name, 0))
        yield want

        starts = CounterMetricFamily("gsuper_worker_starts", "Worker processes spawned.", labels=["program"])
        for name in sorted(set(names) | set(c.starts)):
            starts.add_metric([name], c.starts.get(name, 0))
        yield starts

        exits = CounterMetricFamily("gsuper_worker_exits", "Worker process exits by reason.", labels=["program", "reason"])
        for (name, reason), n in sorted(c.exits.items()):
            exits.add_metric([name, reason], n)
        yield exits

        requests = CounterMetricFamily("gsuper_requests", "Requests the runners reported done.", labels=["program"])
        for name in sorted(set(names) | set(c.requests)):
            requests.add_metric([name], c.requests.get(name, 0))
        yield requests

        hist = HistogramMetricFamily(
            "gsuper_request_duration_seconds",
            "Request durations (each runner report adds its requests at their mean duration).",
            labels=["program"],
        )
        for name in sorted(c.buckets):
            cumulative, buckets = 0, []
            # Equal lengths by construction (zip's strict= needs Python 3.10).
            for bound, n in zip((*BUCKETS_S, float("inf")), c.buckets[name]):
                cumulative += n
                buckets.append(("+Inf" if bound == float("inf") else repr(bound), cumulative))
            hist.add_metric([name], buckets, c.duration_sum_s[name])
        yield hist

        info = GaugeMetricFamily("gsuper_build_info", "The running gsuper's version.", labels=["version"])
        info.add_metric([__version__], 1)
        yield info

        # Autoscaling: present once the status document has a programs list.
        if isinstance(programs, list):
            backlog = GaugeMetricFamily("gsuper_queue_backlog", "The last backlog reading.", labels=["program"])
            for p in programs:
                if isinstance(p, dict) and isinstance(p.get("backlog"), (int, float)):
                    backlog.add_metric([str(p.get("name", p.get("program")))], p["backlog"])
            yield backlog
        if c.scale_events or isinstance(programs, list):
            scaled = CounterMetricFamily(
                "gsuper_scale_events", "Changes of a program's worker count.", labels=["program", "direction"]
            )
            for (name, direction), n in sorted(c.scale_events.items()):
                scaled.add_metric([name, direction], n)
            yield scaled


class MemoryCollector:
    """gsuper_worker_resident_memory_bytes: one sample per worker, the bulk of a scrape at 1,000
    workers, so it has its own registry and its rendering is reused while no sample changed."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def describe(self) -> list[Metric]:
        """Nothing: the registry must not call collect() at registration."""
        return []

    def collect(self) -> Iterator[Metric]:
        """The per-worker memory gauge."""
        rss = GaugeMetricFamily(
            "gsuper_worker_resident_memory_bytes", "Resident memory of the worker's process tree.", labels=["program", "worker"]
        )
        for w in self.snapshot().get("workers", []):
            if w.get("rss_bytes") is not None:
                rss.add_metric([w["program"], str(w["index"])], w["rss_bytes"])
        yield rss


def memory_key(doc: dict[str, Any]) -> tuple[tuple[str, int, int | None], ...]:
    """What the memory gauge's rendering depends on (cheap to compare, costly to render)."""
    return tuple((w["program"], w["index"], w.get("rss_bytes")) for w in doc.get("workers", []))


def make_registry(collector: GsuperCollector | MemoryCollector) -> CollectorRegistry:
    """A private registry holding only gsuper's collector (never the process-global one)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)  # type: ignore[arg-type]
    return registry


def render(registry: CollectorRegistry) -> bytes:
    """The Prometheus text exposition of the registry."""
    return generate_latest(registry)
