"""A program's workers: start, stop, scale and rolling restart."""

from __future__ import annotations

import logging
from collections.abc import Callable

import gevent

from gsuper.config import ProgramConfig
from gsuper.logs import LogFile
from gsuper.states import ProcessState
from gsuper.worker import MIN_UPTIME_S, Worker

log = logging.getLogger("gsuper")


class RollingError(RuntimeError):
    """A replacement worker did not come up; the old one was kept."""


class Program:
    """The numprocs worker slots of one [program:NAME]."""

    def __init__(self, config: ProgramConfig, logfile: LogFile, on_change: Callable[[Worker], None] | None = None):
        self.config = config
        self.logfile = logfile
        self.on_change = on_change
        self.workers: list[Worker] = []
        self.halted = False  # the master is stopping: no new worker may start

    @property
    def name(self) -> str:
        """The program's name."""
        return self.config.name

    def _new_worker(self, index: int, config: ProgramConfig | None = None) -> Worker:
        return Worker(config or self.config, index, self.logfile, self.on_change)

    def start(self) -> None:
        """Start every slot (creating numprocs of them); return once each has been spawned."""
        while len(self.workers) < self.config.numprocs:
            self.workers.append(self._new_worker(len(self.workers)))
        gevent.joinall([gevent.spawn(w.start) for w in self.workers])

    def stop(self, timeout_s: float | None = None) -> None:
        """Stop every slot gracefully, all at once, and wait until they are at rest.

        A worker that a rolling restart or scale added meanwhile is stopped in another round.
        """
        batch = list(self.workers)
        while batch:
            gevent.joinall([gevent.spawn(w.stop, timeout_s) for w in batch])
            batch = [w for w in self.workers if w.proc is not None]

    def halt(self) -> None:
        """From now on start no new worker (the master is stopping); then stop."""
        self.halted = True

    def kill(self) -> None:
        """SIGKILL every worker's process group at once."""
        for w in self.workers:
            w.kill()

    def scale(self, numprocs: int) -> None:
        """Set the number of slots now: new ones start, the highest-indexed ones stop gracefully."""
        if numprocs < 0:
            raise ValueError("numprocs must be 0 or more")
        extra = [w for w in self.workers if w.index >= numprocs]
        gevent.joinall([gevent.spawn(w.stop) for w in extra])
        for w in extra:
            self.workers.remove(w)
        have = {w.index for w in self.workers}
        fresh = [] if self.halted else [self._new_worker(i) for i in range(numprocs) if i not in have]
        self.workers.extend(fresh)
        self.workers.sort(key=lambda w: w.index)
        gevent.joinall([gevent.spawn(w.start) for w in fresh])
        self.config = _with_numprocs(self.config, numprocs)

    def rolling_restart(self, new_config: ProgramConfig | None = None) -> int:
        """Replace workers one at a time, each replacement up before the old one stops.

        Returns how many workers were replaced; raises RollingError (keeping the old worker)
        when a replacement does not come up.
        """
        config = new_config or self.config
        replaced = 0
        for old in sorted(self.workers, key=lambda w: w.index):
            if old.index >= config.numprocs:
                continue
            if self.halted:
                raise RollingError(f"{self.name}: the master is stopping; {replaced} workers were replaced")
            fresh = self._new_worker(old.index, config)
            self.workers.append(fresh)
            fresh.start()
            if not wait_up(fresh):
                fresh.stop()
                self.workers.remove(fresh)
                detail = fresh.last_error or (fresh.last_exit or {}).get("reason") or "no ready report"
                raise RollingError(f"{fresh.name} did not come up ({detail}); kept the old worker")
            old.stop()
            self.workers.remove(old)
            replaced += 1
        self.workers.sort(key=lambda w: w.index)
        self.config = config
        if len(self.workers) != config.numprocs:
            self.scale(config.numprocs)
        return replaced

    def reconfigure(self, config: ProgramConfig) -> None:
        """Take a new config while no worker runs: the next start follows it (numprocs too)."""
        self.config = config
        self.workers = [w for w in self.workers if w.index < config.numprocs]
        for w in self.workers:
            w.program = config

    def adopt(self, config: ProgramConfig) -> None:
        """Take a new config that differs only in numprocs: scale, leave every other worker alone."""
        for w in self.workers:
            w.program = config
        self.scale(config.numprocs)
        self.config = config


def wait_up(worker: Worker, timeout_s: float | None = None) -> bool:
    """Wait until the worker is up (ready reported, or startsecs passed) or gives up."""
    limit = timeout_s if timeout_s is not None else max(worker.program.startsecs_s, MIN_UPTIME_S) + 60.0
    gevent.wait([worker.up, worker.at_rest], timeout=limit, count=1)
    return worker.up.is_set() and worker.state in (ProcessState.STARTING, ProcessState.RUNNING)


def _with_numprocs(config: ProgramConfig, numprocs: int) -> ProgramConfig:
    from dataclasses import replace

    return replace(config, numprocs=numprocs)
