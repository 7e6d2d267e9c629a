"""The reload plan: from the running configuration and a new one to a list of changes (pure).

The master applies the plan (:meth:`gsuper.master.Master.reload`); tests/test_reload_plan.py
checks it as a table. Nothing restarts that did not change: a change of `numprocs` alone only
scales, and a changed program that is running is replaced one worker at a time.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from gsuper.config import GsuperConfig, ProgramConfig


class Kind(enum.Enum):
    """What is done to one program."""

    REMOVE = "removed"  # gone from the file: stopped, then forgotten
    UNCHANGED = "unchanged"
    SCALE = "scaled"  # only numprocs changed: workers added or stopped, the others untouched
    RECONFIGURE = "reconfigured"  # changed while not running: the next start follows the new file
    ROLLING = "rolling"  # changed while running: replaced one worker at a time, each up first
    ADD = "added"  # new in the file: started


@dataclass(frozen=True)
class Change:
    """One step of a reload."""

    kind: Kind
    name: str
    config: ProgramConfig | None  # the new configuration (None for REMOVE)


@dataclass(frozen=True)
class Plan:
    """Every change of a reload, in the order they are applied, and notes for the user."""

    changes: tuple[Change, ...]
    notes: tuple[str, ...] = ()

    def of_kind(self, kind: Kind) -> list[Change]:
        """The changes of one kind, in order."""
        return [c for c in self.changes if c.kind is kind]


def plan_reload(
    old: GsuperConfig,
    new: GsuperConfig,
    running: Collection[str],
    current: Mapping[str, ProgramConfig] | None = None,
) -> Plan:
    """The changes that turn `old` into `new`.

    `running` names the programs that have a slot not at rest. `current` is each program's
    configuration as it runs (a `scale` changes its numprocs), `old.programs` by default: a
    reload brings every program back to what the file says.
    """
    current = old.programs if current is None else current
    notes = []
    if (new.rundir, new.logdir) != (old.rundir, old.logdir):
        notes.append("rundir and logdir changes take effect at the next start")
    if new.log_format != old.log_format:
        notes.append("a log_format change takes effect at the next start")
    changes = [Change(Kind.REMOVE, name, None) for name in current if name not in new.programs]
    for name, cfg in new.programs.items():
        before = current.get(name)
        if before is None:
            continue
        if before == cfg:
            kind = Kind.UNCHANGED
        elif before.same_except_numprocs(cfg):
            kind = Kind.SCALE
        elif name in running:
            kind = Kind.ROLLING
        else:
            kind = Kind.RECONFIGURE
        changes.append(Change(kind, name, cfg))
    changes += [Change(Kind.ADD, name, cfg) for name, cfg in new.programs.items() if name not in current]
    return Plan(tuple(changes), tuple(notes))
