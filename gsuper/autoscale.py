"""Autoscaling: read a program's backlog every scale_interval, decide, move the count.

:class:`BacklogCheck` is a check of :mod:`gsuper.monitor` (the master registers it): for each
program with a `scale_source` it keeps one :class:`Autoscaler` and, when the program is due,
starts that autoscaler's reading in a greenlet of its own (one in flight per program), so a slow
Redis or a hung probe never holds up the monitor's other checks. The reading is bounded (see
:mod:`gsuper.backlog`) and the decision is :func:`gsuper.scaling.desired`; the autoscaler holds
the state between readings, applies decisions to the :class:`~gsuper.program.Program`
(``grow`` / ``drain``, neither of which waits for a draining worker), logs failures once per
change, and emits a ``scaled`` event per change of the count.

`scale NAME=N` on an autoscaled program sets a temporary floor (see :meth:`Autoscaler.set_floor`).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from typing import Any

import gevent

from gsuper.backlog import BacklogError, Reader, parse_source, reader_for
from gsuper.events import Event
from gsuper.program import Program
from gsuper.runners import settings
from gsuper.scaling import Decision, History, Limits, desired, pick_victims

log = logging.getLogger("gsuper")

#: A reading slower than this (or than scale_interval, when that is longer) has failed.
MIN_READ_TIMEOUT_S = 1.0


class Autoscaler:
    """Reads one program's backlog and keeps its worker count where the backlog wants it."""

    def __init__(
        self,
        program: Program,
        emit: Callable[[Event], None] | None = None,
        paused: Callable[[], bool] = lambda: False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.program = program
        self.emit = emit
        self.paused = paused  # a reload or rolling restart is replacing workers: decide later
        self.clock = clock
        self.backlog: int | None = None  # the last good reading
        self.error: str | None = None  # why the last reading failed (None: it did not)
        self.floor: int | None = None  # set by `scale NAME=N`, until the next reload or restart
        self.history = History()
        self.desired = program.config.numprocs
        self.readings = 0  # attempts, failed ones too (a test or a dashboard sees time pass by it)
        self._reader: Reader | None = None
        self._source: str | None = None
        self._reading: gevent.Greenlet | None = None

    @property
    def name(self) -> str:
        """The program's name."""
        return self.program.name

    def limits(self) -> Limits:
        """The program's limits now (a floor from `scale` replaces numprocs as the minimum)."""
        cfg = self.program.config
        minimum = cfg.numprocs if self.floor is None else self.floor
        return Limits(minimum, cfg.numprocs_max, cfg.scale_jobs_per_worker, cfg.scale_step, cfg.scale_cooldown_s)

    def tick_soon(self) -> None:
        """Start one reading and decision in a greenlet, unless the last one is still going."""
        if self._reading is None or self._reading.dead:
            self._reading = gevent.spawn(self._tick_logged)

    def _tick_logged(self) -> None:
        try:
            self.tick()
        except Exception:  # noqa: BLE001 - a bug here must not end autoscaling or the master
            log.exception("%s: autoscaling failed", self.name)

    def close(self) -> None:
        """Stop reading (the count stays as it is)."""
        if self._reading is not None:
            self._reading.kill()
            self._reading = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None

    # -- one reading ----------------------------------------------------------------------------

    def read(self) -> int | None:
        """One reading of the backlog; None (and the error noted, logged once) when it failed."""
        cfg = self.program.config
        if cfg.scale_source is None:
            return None
        if self._reader is None or self._source != cfg.scale_source:
            if self._reader is not None:
                self._reader.close()
            # The probe runs where worker 0 would, with its environment (expansions applied) and
            # as its user.
            ws = settings(cfg, 0)
            env = dict(os.environ)
            env.update(ws.environment)
            self._reader = reader_for(parse_source(cfg.scale_source), ws.directory, env, cfg.user)
            self._source = cfg.scale_source
        try:
            value = self._reader.read(max(cfg.scale_interval_s, MIN_READ_TIMEOUT_S))
        except BacklogError as exc:
            self._note_error(str(exc))
            return None
        finally:
            self.readings += 1
        self.backlog = value
        self._note_error(None)
        return value

    def _note_error(self, error: str | None) -> None:
        # Logged once per change between readable and not, never once per reading; status
        # always shows the latest reason.
        if error is not None and self.error is None:
            log.warning("%s: cannot read the backlog: %s; keeping %d workers", self.name, error, len(self.program.serving))
        elif error is not None and error != self.error:
            log.debug("%s: still cannot read the backlog: %s", self.name, error)
        elif error is None and self.error is not None:
            log.info("%s: the backlog can be read again (%d)", self.name, self.backlog or 0)
        self.error = error

    def tick(self) -> Decision | None:
        """Read once and apply the decision (nothing moves while the program is stopped)."""
        backlog = self.read()
        program = self.program
        if not program.config.autoscaled or not program.active or program.halted or self.paused():
            self.desired = len(program.serving)
            return None
        decision = desired(backlog, len(program.serving), self.limits(), self.history, self.clock())
        self.apply(decision, "backlog")
        return decision

    def apply(self, decision: Decision, reason: str) -> None:
        """Move the count to the decision's: start slots, or drain the idle ones first."""
        self.history = decision.history
        self.desired = decision.count
        program = self.program
        serving = program.serving
        before = len(serving)
        if decision.count > before:
            program.grow(decision.count - before)
        elif decision.count < before:
            now_ns = time.monotonic_ns()
            rows = [(w.index, w.state.value, busy_since(w, now_ns)) for w in serving]
            chosen = set(pick_victims(rows, before - decision.count))
            program.drain([w for w in serving if w.index in chosen])
        else:
            return
        after = len(program.serving)
        direction = "up" if after > before else "down"
        shown = "unreadable" if self.error else str(self.backlog)
        why = "" if reason == "backlog" else f", by {reason}"
        log.info("%s: scaled %s from %d to %d workers (backlog %s%s)", self.name, direction, before, after, shown, why)
        emit = self.emit or (program.events.emit if program.events is not None else None)
        if emit is not None:
            data = {"before": before, "after": after, "direction": direction, "backlog": self.backlog}
            emit(Event("scaled", program=self.name, reason=reason, data=data))

    # -- the `scale` command ----------------------------------------------------------------------

    def set_floor(self, floor: int) -> dict[str, Any]:
        """`scale NAME=N` on an autoscaled program: N becomes the minimum until the next reload
        or restart; the count is brought up to it now, and the backlog may take it higher."""
        cfg = self.program.config
        if floor > cfg.numprocs_max:
            return {
                "ok": False,
                "error": f"{self.name} autoscales between {cfg.numprocs} and {cfg.numprocs_max} workers; "
                f"scale sets its minimum, which cannot be above numprocs_max {cfg.numprocs_max} (got {floor})",
            }
        before = len(self.program.serving)
        self.floor = floor
        decision = desired(None, before, self.limits(), self.history, self.clock())
        # A minimum is met at once (once started, for a stopped program); a lower one waits for
        # the backlog to be low.
        if decision.direction == "up" and self.program.active and not self.program.halted:
            self.apply(decision, "scale")
        return {"ok": True, "program": self.name, "before": before, "after": len(self.program.serving), "floor": floor}

    def reset_floor(self) -> None:
        """After a reload: numprocs is the minimum again."""
        self.floor = None

    # -- status -------------------------------------------------------------------------------

    def row(self) -> dict[str, Any]:
        """The autoscaling fields of this program's entry in status's `programs` list."""
        cfg = self.program.config
        return {
            "desired": self.desired,
            "numprocs": cfg.numprocs,
            "numprocs_max": cfg.numprocs_max,
            "floor": self.floor,
            "backlog": self.backlog,
            "backlog_error": self.error,
            "readings": self.readings,
            "scale_source": _shown_source(cfg.scale_source),
        }


def busy_since(worker: Any, now_ns: int) -> float | None:
    """When the worker's current request began (seconds, monotonic), 0.0 when it is idle, and
    None when the master cannot tell.

    It reads the "busy since" stamp of issue 11 (`Worker.busy(now_ns)`, the runner's busy page)
    where that exists; without it every worker is "cannot tell" and a scale-down drains the
    highest indexes, as `scale` does.
    """
    busy = getattr(worker, "busy", None)
    if not callable(busy):
        return None
    reading = busy(now_ns)
    if reading is not None:
        return float(reading.since_ns) / 1e9 or None
    return 0.0 if _has_busy_page(worker) else None


def _has_busy_page(worker: Any) -> bool:
    """Whether None from `Worker.busy` means idle (the runner keeps a busy page), not unknown."""
    import importlib

    try:
        guard = importlib.import_module("gsuper.guard")
    except ImportError:
        return False
    return bool(guard.has_busy_page(worker.config))


class BacklogCheck:
    """The monitor's check of backlogs: one Autoscaler per program with a scale_source."""

    name = "backlog"

    def __init__(self, paused: Callable[[], bool] = lambda: False) -> None:
        self.paused = paused  # a reload, rolling restart or stop is going on: decide later
        self.scalers: dict[str, Autoscaler] = {}

    def interval_s(self, program: Program) -> float | None:
        """The program's scale_interval when it has a scale_source."""
        return program.config.scale_interval_s if program.config.scale_source else None

    def run(self, programs: list[Program], now: float) -> None:
        """Start a reading for each due program (each in its own greenlet)."""
        for program in programs:
            self.scaler_for(program).tick_soon()

    def scaler_for(self, program: Program) -> Autoscaler:
        """The program's autoscaler (a new one for a program that was removed and added again)."""
        scaler = self.scalers.get(program.name)
        if scaler is None or scaler.program is not program:
            if scaler is not None:
                scaler.close()
            scaler = self.scalers[program.name] = Autoscaler(program, paused=self.paused)
        return scaler

    def get(self, program: Program) -> Autoscaler | None:
        """The program's autoscaler if it reads a backlog (created on demand), else None."""
        return self.scaler_for(program) if program.config.scale_source else None

    def after_reload(self, programs: dict[str, Program]) -> None:
        """A reload ends every `scale` floor and forgets removed programs and sources."""
        for name in list(self.scalers):
            program = programs.get(name)
            if program is None or program.config.scale_source is None or program is not self.scalers[name].program:
                self.scalers.pop(name).close()
            else:
                self.scalers[name].reset_floor()

    def close(self) -> None:
        """The master is stopping: no more readings."""
        for scaler in self.scalers.values():
            scaler.close()


def _shown_source(source: str | None) -> str | None:
    """The source as status shows it: a Redis password is never shown."""
    if source is None or not source.startswith("redis://") or "@" not in source:
        return source
    scheme_rest = source[len("redis://") :]
    creds, _, rest = scheme_rest.rpartition("@")
    user = creds.partition(":")[0]
    return f"redis://{user}:***@{rest}"
