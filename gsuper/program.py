"""A program's workers: start, stop, scale and rolling restart, and the questions the master
asks about them (is anything running, which workers are live, what to record for a takeover)."""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import gevent

from gsuper.config import ProgramConfig
from gsuper.events import Event, EventStream
from gsuper.logs import LogFile, LogFiles
from gsuper.policy import Rules
from gsuper.record import Entry
from gsuper.spawn import launch_worker
from gsuper.states import STOPPABLE_STATES, ProcessState
from gsuper.worker import REAL_CLOCK, Clock, Spawner, Worker

if TYPE_CHECKING:
    from gsuper.autoscale import Autoscaler

log = logging.getLogger("gsuper")

#: How long a rolling restart waits for a replacement to come up, beyond its startsecs.
UP_TIMEOUT_S = 60.0


class RollingError(RuntimeError):
    """A replacement worker did not come up; the old one was kept."""

    def __init__(self, message: str) -> None:
        super().__init__(message)
        #: Per program, how many workers were replaced before it (set by the master).
        self.replaced: dict[str, int] = {}


class Program:
    """The numprocs worker slots of one [program:NAME]."""

    def __init__(
        self,
        config: ProgramConfig,
        logfile: LogFile | LogFiles,
        events: EventStream | None = None,
        spawner: Spawner = launch_worker,
        clock: Clock = REAL_CLOCK,
    ) -> None:
        self._config = config
        self.logfile = logfile  # LogFiles: each worker takes its logfile and stderr_logfile there
        self.events = events
        self.spawner = spawner
        self.clock = clock
        self.workers: list[Worker] = []
        self.halted = False  # the master is stopping: no new worker may start
        self.active = False  # started and not stopped since: an autoscaler may move the count
        self.draining: set[Worker] = set()  # stopping after an autoscaled scale-down; not capacity

    @property
    def name(self) -> str:
        """The program's name."""
        return self._config.name

    @property
    def config(self) -> ProgramConfig:
        """The configuration the program runs with (numprocs follows `scale`)."""
        return self._config

    # -- questions ----------------------------------------------------------------------------

    def is_running(self) -> bool:
        """True when any slot is not at rest in STOPPED."""
        return any(w.state is not ProcessState.STOPPED for w in self.workers)

    def live_workers(self) -> list[Worker]:
        """Workers whose process has not exited."""
        return [w for w in self.workers if w.alive]

    def stoppable_workers(self) -> list[Worker]:
        """Workers with a process that is starting or running (not already stopping)."""
        return [w for w in self.workers if w.pid is not None and w.state in STOPPABLE_STATES]

    def record_entries(self) -> list[Entry]:
        """The takeover record's entries: each live worker's process group and stop timeout."""
        entries = [Entry(w.proc.pid, w.config.stop_timeout_s) for w in self.workers if w.proc is not None and w.alive]
        extra: list[Entry] = self._spawner_hook("record_entries", default=[])  # a warm template's group
        return entries + extra

    def unspawned(self) -> list[str]:
        """`NAME#I: why` for each slot whose last spawn failed."""
        return [f"{w.name}: {w.last_error}" for w in self.workers if w.pid is None and w.last_error]

    def snapshot(self) -> list[dict[str, Any]]:
        """The status rows of the program's workers, by index."""
        rows = [w.snapshot() for w in sorted(self.workers, key=lambda w: (w.index, w.started_at))]
        extra = self._spawner_hook("describe", self._config, default={})  # warm: the template's state
        for row in rows:
            row.update(extra)
        return rows

    def _spawner_hook(self, name: str, *args: Any, default: Any = None) -> Any:
        """Call the spawner's optional `name` hook (the warm spawner's template lifecycle)."""
        hook = getattr(self.spawner, name, None)
        return hook(*args) if hook is not None else default

    # -- operations ---------------------------------------------------------------------------

    def _new_worker(self, index: int, config: ProgramConfig | None = None) -> Worker:
        return Worker(config or self._config, index, self.logfile, self.events, self.spawner, self.clock)

    def add_slots(self) -> None:
        """Create the numprocs slots without starting them (autostart = false: shown STOPPED)."""
        while len(self.workers) < self._config.numprocs:
            self.workers.append(self._new_worker(len(self.workers)))

    def start(self) -> None:
        """Start every slot (creating numprocs of them); return once each has been spawned."""
        self.active = True
        self.add_slots()
        gevent.joinall([gevent.spawn(w.start) for w in self.workers])

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every slot gracefully, all at once, and wait until they are at rest.

        A worker that a rolling restart or scale added meanwhile is stopped in another round.
        """
        self.active = False
        batch = list(self.workers)
        while batch:
            gevent.joinall([gevent.spawn(w.stop, timeout_s) for w in batch])
            batch = [w for w in self.workers if w.proc is not None]
        self._spawner_hook("close")  # a warm program's template goes with its workers

    def halt(self) -> None:
        """From now on start no new worker (the master is stopping)."""
        self.halted = True

    def kill(self) -> None:
        """SIGKILL every worker's process group at once."""
        for w in self.workers:
            w.kill()
        self._spawner_hook("kill")

    def scale(self, numprocs: int) -> None:
        """Set the number of slots now: new ones start, the highest-indexed ones stop gracefully."""
        if numprocs < 0:
            raise ValueError("numprocs must be 0 or more")
        before = len(self.workers)
        extra = [w for w in self.workers if w.index >= numprocs]
        gevent.joinall([gevent.spawn(w.stop) for w in extra])
        for w in extra:
            self.workers.remove(w)
        have = {w.index for w in self.workers}
        fresh = [] if self.halted else [self._new_worker(i) for i in range(numprocs) if i not in have]
        self.workers.extend(fresh)
        self.workers.sort(key=lambda w: w.index)
        gevent.joinall([gevent.spawn(w.start) for w in fresh])
        self._config = replace(self._config, numprocs=numprocs)
        if self.events is not None and before != numprocs:
            direction = "up" if numprocs > before else "down"
            self.events.emit(Event("scaled", self.name, data={"before": before, "after": numprocs, "direction": direction}))

    # -- autoscaling (gsuper/autoscale.py decides; these only carry it out) ---------------------

    @property
    def serving(self) -> list[Worker]:
        """The slots that count as capacity: every one but those draining after a scale-down."""
        return [w for w in self.workers if w not in self.draining]

    def grow(self, n: int) -> list[Worker]:
        """Start `n` more slots at the lowest indexes no slot holds (draining ones included, so
        no two live processes share GSUPER_WORKER); return once each was spawned."""
        if self.halted:
            return []
        used = {w.index for w in self.workers}
        fresh: list[Worker] = []
        index = 0
        while len(fresh) < n:
            if index not in used:
                fresh.append(self._new_worker(index))
            index += 1
        self.workers.extend(fresh)
        self.workers.sort(key=lambda w: w.index)
        gevent.joinall([gevent.spawn(w.start) for w in fresh])
        return fresh

    def drain(self, workers: list[Worker]) -> None:
        """Stop these slots gracefully in the background (each finishes its request). They stop
        counting as capacity now and are dropped once at rest; nothing waits for them, so a long
        request never holds up the next decision."""
        for w in workers:
            self.draining.add(w)
            gevent.spawn(self._drain_one, w)

    def _drain_one(self, worker: Worker) -> None:
        try:
            worker.stop()
        finally:
            self.draining.discard(worker)
            if worker in self.workers:
                self.workers.remove(worker)

    def rolling_restart(self, new_config: ProgramConfig | None = None) -> int:
        """Replace workers one at a time, each replacement up before the old one stops.

        Returns how many workers were replaced; raises RollingError (keeping the old worker)
        when a replacement does not come up.
        """
        config = new_config or self._config
        self._spawner_hook("renew")  # warm: replacements fork from a new template, of the current code
        replaced = 0
        for old in sorted(self.serving, key=lambda w: w.index):
            if old.index >= config.numprocs and not config.autoscaled:
                continue
            if self.halted:
                raise RollingError(f"{self.name}: the master is stopping; {replaced} workers were replaced")
            fresh = self._new_worker(old.index, config)
            self.workers.append(fresh)
            fresh.start()
            if not wait_up(fresh):
                fresh.stop()
                self.workers.remove(fresh)
                if self.halted:  # the stop that began meanwhile ended the replacement
                    raise RollingError(f"{self.name}: the master is stopping; {replaced} workers were replaced")
                detail = fresh.last_error or (fresh.last_exit or {}).get("reason") or "no ready report"
                raise RollingError(f"{fresh.name} did not come up ({detail}); kept the old worker")
            old.stop()
            self.workers.remove(old)
            replaced += 1
        self.workers.sort(key=lambda w: w.index)
        self._config = config
        # An autoscaled program keeps the count its autoscaler chose, within the new limits.
        if len(self.workers) != config.numprocs and not config.autoscaled:
            self.scale(config.numprocs)
        return replaced

    def reconfigure(self, config: ProgramConfig) -> None:
        """Take a new config while no worker runs: the next start follows it (numprocs too)."""
        self._config = config
        self.workers = [w for w in self.workers if w.index < config.numprocs]
        for w in self.workers:
            w.configure(config)

    def adopt(self, config: ProgramConfig) -> None:
        """Take a new config that differs only in numprocs (or the scale_* keys): scale, leave
        every other worker alone. An autoscaled program keeps its count: its autoscaler moves
        it within the new limits."""
        for w in self.workers:
            w.configure(config)
        self._config = config
        if not config.autoscaled:
            self.scale(config.numprocs)


def wait_up(worker: Worker, timeout_s: float | None = None) -> bool:
    """Wait until the worker is up (ready reported, or startsecs passed) or gives up."""
    limit = timeout_s if timeout_s is not None else Rules.of(worker.config).started_after_s + UP_TIMEOUT_S
    gevent.wait([worker.up, worker.at_rest], timeout=limit, count=1)
    return worker.up.is_set() and worker.state in (ProcessState.STARTING, ProcessState.RUNNING)


def program_row(program: Program, scaler: Autoscaler | None) -> dict[str, Any]:
    """One entry of status's `programs` list: counts, limits and the last backlog reading (from
    the program's autoscaler, gsuper.autoscale, when it reads a backlog)."""
    cfg = program.config
    row: dict[str, Any] = {
        "name": program.name,
        "workers": len(program.serving),
        "draining": len(program.draining),
        "desired": cfg.numprocs,
        "numprocs": cfg.numprocs,
        "numprocs_max": max(cfg.numprocs_max, cfg.numprocs),
        "floor": None,
        "backlog": None,
        "backlog_error": None,
        "readings": 0,
        "scale_source": None,
    }
    if scaler is not None:
        row.update(scaler.row())
        if not cfg.autoscaled:  # the backlog is read and shown; the count is numprocs (or `scale`'s)
            row["desired"] = len(program.serving)
    if not program.active:  # stopped (stop -p, autostart off): no worker is wanted
        row["desired"] = 0
    return row
