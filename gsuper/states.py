"""Worker states (supervisor's names) and the table of legal transitions.

This module imports nothing from the rest of gsuper: it is the data every other part checks
against.
"""

from __future__ import annotations

import enum


class ProcessState(enum.Enum):
    """The state of one worker slot."""

    STOPPED = "STOPPED"
    STARTING = "STARTING"
    RUNNING = "RUNNING"
    BACKOFF = "BACKOFF"
    STOPPING = "STOPPING"
    EXITED = "EXITED"
    FATAL = "FATAL"


S = ProcessState

#: Every legal change of state. Anything not listed here is a bug and raises.
TRANSITIONS: dict[ProcessState, frozenset[ProcessState]] = {
    # A slot is started from rest.
    S.STOPPED: frozenset({S.STARTING}),
    # STARTING -> EXITED: a clean recycle (max_request) or a loop-mode run that ended with an
    # expected code before startsecs; neither is a failed start.
    S.STARTING: frozenset({S.RUNNING, S.BACKOFF, S.STOPPING, S.EXITED}),
    S.RUNNING: frozenset({S.STOPPING, S.EXITED}),
    # BACKOFF -> STOPPED: a stop while waiting to retry has no process to signal.
    S.BACKOFF: frozenset({S.STARTING, S.FATAL, S.STOPPED}),
    S.STOPPING: frozenset({S.STOPPED}),
    S.EXITED: frozenset({S.STARTING, S.BACKOFF, S.STOPPED}),
    S.FATAL: frozenset({S.STARTING, S.STOPPED}),
}

# The groups are named for what they mean here. supervisor's RUNNING_STATES and
# SIGNALLABLE_STATES hold other members; reusing those names would mislead its users.

#: States in which the slot has a live process (status shows its pid, uptime and RSS).
LIVE_STATES = frozenset({S.STARTING, S.RUNNING, S.STOPPING})
#: States in which the slot's process may be asked to stop, recycled or killed.
STOPPABLE_STATES = frozenset({S.STARTING, S.RUNNING})
#: The same groups by name, for code that sees states as text (the CLI, over the socket).
LIVE_STATE_NAMES = frozenset(s.value for s in LIVE_STATES)


class TransitionError(RuntimeError):
    """An attempt to move a worker along a transition the table does not allow."""


def check_transition(old: ProcessState, new: ProcessState) -> None:
    """Raise TransitionError unless old -> new is in TRANSITIONS."""
    if new not in TRANSITIONS[old]:
        raise TransitionError(f"illegal transition {old.value} -> {new.value}")
