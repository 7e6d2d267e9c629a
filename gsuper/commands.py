"""The control commands: one request from the socket (a JSON object) to one reply.

Each `cmd_<name>` checks its request and asks the master; the master does the work. Nothing
here blocks supervision: a long operation (a stop) is started in its own greenlet and the
reply goes out at once.
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import gevent

from gsuper import config
from gsuper.config import MAX_WORKERS
from gsuper.program import RollingError

if TYPE_CHECKING:
    from gsuper.master import Master


class Refused(RuntimeError):
    """An operation that cannot run now (the master is stopping, or another one is going on)."""

log = logging.getLogger("gsuper")

Reply = dict[str, Any]


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
        try:
            names = self._names(request)
        except config.ConfigError as exc:
            return {"ok": False, "error": str(exc)}
        result: Reply = handler(request, names)
        return result

    def _names(self, request: dict[str, Any]) -> list[str]:
        programs = request.get("programs") or []
        groups = request.get("groups") or []
        if not isinstance(programs, list) or not isinstance(groups, list):
            raise config.ConfigError("programs and groups must be lists")
        selected = self.master.config.select([str(p) for p in programs], [str(g) for g in groups])
        return [n for n in selected if n in self.master.programs]

    def cmd_ping(self, _request: dict[str, Any], _names: list[str]) -> Reply:
        """Liveness."""
        return {"ok": True, "pid": os.getpid()}

    def cmd_status(self, request: dict[str, Any], names: list[str]) -> Reply:
        """The status document (only the selected programs' workers).

        `"rss": false` skips sampling memory: the CLI polls status while a stop drains, and one
        pass over /proc per poll would be work done for nothing.
        """
        return {"ok": True, "status": self.master.status(names, with_rss=request.get("rss", True) is not False)}

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
        timeout_s = float(timeout) if isinstance(timeout, (int, float)) else None
        if not request.get("programs") and not request.get("groups"):
            gevent.spawn(self.master.shutdown, timeout_s)
            return {"ok": True, "shutdown": True}
        gevent.spawn(self.master.stop_programs, names, timeout_s)
        return {"ok": True, "shutdown": False, "programs": names}

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
        scaler = self.master.backlog.get(program) if program.config.autoscaled else None
        if scaler is not None:  # N becomes a temporary minimum (docs/operations.md, Autoscaling)
            return scaler.set_floor(numprocs)
        before = len(program.workers)
        program.scale(numprocs)
        log.info("scaled %s from %d to %d workers", name, before, numprocs)
        return {"ok": True, "program": name, "before": before, "after": numprocs}

    def cmd_reload(self, _request: dict[str, Any], _names: list[str]) -> Reply:
        """Re-read the configuration and apply the difference."""
        return self.master.reload()
