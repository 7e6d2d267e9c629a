"""The control commands: one request from the socket (a JSON object) to one reply.

Each `cmd_<name>` checks its request and asks the master; the master does the work. Nothing
here blocks supervision: a long operation (a stop) is started in its own greenlet and the
reply goes out at once.
"""

from __future__ import annotations

import json
import logging
import math
import os
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import gevent

from gsuper import config
from gsuper.client import status_json
from gsuper.config import MAX_WORKERS
from gsuper.program import RollingError

if TYPE_CHECKING:
    from gsuper.master import Master


class Refused(RuntimeError):
    """An operation that cannot run now (the master is stopping, or another one is going on)."""

log = logging.getLogger("gsuper")

Reply = dict[str, Any]


def _is_number(value: Any) -> bool:
    # A JSON true is not a count: bool is an int subclass in Python, so it is ruled out by name.
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


#: The type each request field must have when present: checked before any command runs.
FIELD_CHECKS: dict[str, tuple[str, Callable[[Any], bool]]] = {
    "timeout": ("a number of seconds from 0 (or null)", lambda v: v is None or (_is_number(v) and 0 <= v <= 1e7)),
    "numprocs": ("a whole number", lambda v: isinstance(v, int) and not isinstance(v, bool)),
    "program": ("a name", lambda v: isinstance(v, str)),
    "rolling": ("true or false", lambda v: isinstance(v, bool)),
    "rss": ("true or false", lambda v: isinstance(v, bool)),
    "wait": ("true or false", lambda v: isinstance(v, bool)),
    "format": ('"json"', lambda v: v == "json"),
}
KILLED_EXIT = {"reason": "stopped", "code": -9}  # last_exit of a worker SIGKILLed at its stop timeout


def check_types(request: dict[str, Any]) -> str | None:
    """Why a field of the request has the wrong type, or None."""
    for key, (what, ok) in FIELD_CHECKS.items():
        if key in request and not ok(request[key]):
            return f"{key} must be {what} (got {json.dumps(request[key])[:40]})"
    return None


class Commands:
    """Dispatches control requests to the master."""

    def __init__(self, master: Master) -> None:
        self.master = master

    def dispatch(self, request: dict[str, Any]) -> Reply:
        """Run one control request and return the reply."""
        cmd = request["cmd"]
        handler = getattr(self, f"cmd_{cmd}", None)
        if handler is None:
            return {"ok": False, "error": f"unknown command {cmd!r}"}
        problem = check_types(request)
        if problem:
            return {"ok": False, "error": f"bad request: {problem}"}
        try:
            names = self._names(request)
        except config.ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        result: Reply = handler(request, names)
        return result

    def _names(self, request: dict[str, Any]) -> list[str]:
        programs = request.get("programs") or []
        groups = request.get("groups") or []
        for key, value in (("programs", programs), ("groups", groups)):
            if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
                raise config.ConfigError(f"{key} must be a list of names")
        selected = self.master.config.select(programs, groups)
        return [n for n in selected if n in self.master.programs]

    def cmd_ping(self, _request: dict[str, Any], _names: list[str]) -> Reply:
        """Liveness."""
        return {"ok": True, "pid": os.getpid()}

    def cmd_status(self, request: dict[str, Any], names: list[str]) -> Reply:
        """The status document (only the selected programs' workers).

        `"rss": false` skips sampling memory: the CLI polls status while a stop drains, and one
        pass over /proc per poll would be work done for nothing. `"format": "json"` answers
        with the text `status --json` prints (`"json"`), encoded once, here: the CLI then
        neither decodes nor re-encodes 1,000 rows (about 15 ms of its start).
        """
        status = self.master.status(names, with_rss=request.get("rss", True) is not False)
        if request.get("format") == "json":
            return {"ok": True, "json": status_json(status)}
        return {"ok": True, "status": status}

    def cmd_start(self, request: dict[str, Any], names: list[str]) -> Reply:
        """Start the selected programs' slots that are at rest."""
        if self.master.stopping:
            return {"ok": False, "error": "the master is stopping"}
        named = request.get("programs") or []  # autostart = false: started only when named with -p
        names = [n for n in names if self.master.programs[n].config.autostart or n in named]
        self.master.start_programs(names)
        return {"ok": True, "programs": {n: self.master.programs[n].config.numprocs for n in names}}

    def cmd_stop(self, request: dict[str, Any], names: list[str]) -> Reply:
        """Stop the selected programs, or everything and the master; replies at once."""
        timeout = request.get("timeout")
        timeout_s = None if timeout is None else float(timeout)
        whole = not request.get("programs") and not request.get("groups")
        if request.get("wait"):
            # The reply comes once the stop is done, saying how many workers had to be SIGKILLed
            # (the CLI shows progress meanwhile on other connections).
            chosen = list(self.master.programs) if whole else names
            before = self._live(chosen)
            if whole:
                self.master.shutdown(timeout_s)
            else:
                self.master.stop_programs(names, timeout_s)
            killed = sum(1 for key, row in self._rows(chosen).items() if key in before and row["last_exit"] == KILLED_EXIT)
            return {"ok": True, "shutdown": whole, "programs": names, "killed": killed}
        if whole:
            gevent.spawn(self.master.shutdown, timeout_s)
            return {"ok": True, "shutdown": True}
        gevent.spawn(self.master.stop_programs, names, timeout_s)
        return {"ok": True, "shutdown": False, "programs": names}

    def _rows(self, names: list[str]) -> dict[tuple[str, int], dict[str, Any]]:
        programs = self.master.programs
        return {(r["program"], r["index"]): r for n in names if n in programs for r in programs[n].snapshot()}

    def _live(self, names: list[str]) -> set[tuple[str, int]]:
        return {key for key, row in self._rows(names).items() if row["pid"]}

    def cmd_restart(self, request: dict[str, Any], names: list[str]) -> Reply:
        """Rolling restart of the selected programs (the plain restart is stop then start)."""
        if not request.get("rolling"):
            return {"ok": False, "error": "only the rolling restart is done by the master"}
        try:
            return {"ok": True, "replaced": self.master.rolling_restart(names)}
        except RollingError as exc:
            return {"ok": False, "error": str(exc), "replaced": exc.replaced}
        except Refused as exc:
            return {"ok": False, "error": str(exc)}

    def cmd_scale(self, request: dict[str, Any], _names: list[str]) -> Reply:
        """Set one program's worker count now."""
        name, numprocs = request.get("program"), request.get("numprocs")
        if self.master.stopping:
            return {"ok": False, "error": "the master is stopping"}
        if name not in self.master.programs:
            return {"ok": False, "error": f"no program named {name!r}"}
        if not isinstance(numprocs, int) or not 0 <= numprocs <= MAX_WORKERS:
            return {"ok": False, "error": f"the worker count must be a whole number from 0 to {MAX_WORKERS}"}
        program = self.master.programs[name]
        backlog = self.master.backlog
        scaler = backlog.get(program) if backlog is not None and program.config.autoscaled else None
        if scaler is not None:  # N becomes a temporary minimum (docs/operations.md, Autoscaling)
            return scaler.set_floor(numprocs)
        before = len(program.workers)
        program.scale(numprocs)
        log.info("scaled %s from %d to %d workers", name, before, numprocs)
        return {"ok": True, "program": name, "before": before, "after": numprocs}

    def cmd_reload(self, _request: dict[str, Any], _names: list[str]) -> Reply:
        """Re-read the configuration and apply the difference."""
        return self.master.reload()
