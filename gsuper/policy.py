"""The restart policy, as pure functions: what an exit was, and what the slot does next.

Nothing here touches a process or a clock: :func:`decide` takes the facts of one exit (its code,
how long the process was up, whether the master was stopping or replacing it, what the runner
reported) and the program's rules, and returns a :class:`Decision`. :class:`gsuper.worker.Worker`
applies it. The table in README.md ("Restart policy and status") is this module, row by row,
and tests/test_policy.py checks every row.
"""

from __future__ import annotations

import enum
import signal
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from gsuper.config import ProgramConfig

BACKOFF_FIRST_S = 0.1
BACKOFF_MAX_S = 10.0
TRANSIENT_RETRY_S = 1.0  # the pause before retrying a spawn that ran out of descriptors
#: A worker up at least max(startsecs, this) seconds has started; a quicker death is a failed start.
MIN_UPTIME_S = 1.0
CRASH_SIGNALS = frozenset({signal.SIGSEGV, signal.SIGBUS, signal.SIGABRT, signal.SIGFPE, signal.SIGILL})


class ExitReason(enum.Enum):
    """`last_exit.reason` in status; also the reasons a runner reports in its `exit` event."""

    MAX_REQUEST = "max_request"
    MEMORY_LIMIT = "memory_limit"
    REQUEST_TIMEOUT = "request_timeout"
    MAX_LIFETIME = "max_lifetime"
    STOPPED = "stopped"
    CRASHED = "crashed"
    KILLED = "killed"
    EXITED = "exited"


#: Planned replacements: respawned at once, never a failed start.
RECYCLES = frozenset({ExitReason.MAX_REQUEST, ExitReason.MEMORY_LIMIT, ExitReason.REQUEST_TIMEOUT, ExitReason.MAX_LIFETIME})
#: What a runner may report as the reason of its own clean exit that makes the exit a recycle.
REPORTED_RECYCLES = frozenset({ExitReason.MAX_REQUEST, ExitReason.MEMORY_LIMIT, ExitReason.MAX_LIFETIME})


class Action(enum.Enum):
    """What the slot does after an exit."""

    RESPAWN = "respawn"  # at once (after `delay_s`, the usleep between two runs of a loop-mode command)
    BACKOFF = "backoff"  # a failed start: wait `delay_s`, then try again
    FATAL = "fatal"  # too many failed starts in a row: give up until started again by hand
    REST = "rest"  # not restarted (stopped, or autorestart says no)


@dataclass(frozen=True)
class Rules:
    """The settings of a program that the policy reads."""

    autorestart: str = "true"
    exitcodes: tuple[int, ...] = (0,)
    startsecs_s: float = 1.0
    startretries: int = 3
    loop_runs: bool = False  # runner = exec with mode = loop: a clean exit is one finished run
    usleep_s: float = 0.001

    @classmethod
    def of(cls, config: ProgramConfig) -> Rules:
        """The rules of one program's configuration."""
        return cls(
            autorestart=config.autorestart,
            exitcodes=config.exitcodes,
            startsecs_s=config.startsecs_s,
            startretries=config.startretries,
            loop_runs=config.runner == "exec" and config.mode == "loop",
            usleep_s=config.usleep_us / 1e6,
        )

    @property
    def started_after_s(self) -> float:
        """Uptime after which a death is no longer a failed start."""
        return max(self.startsecs_s, MIN_UPTIME_S)


@dataclass(frozen=True)
class Exit:
    """The facts of one exit."""

    code: int | None  # exit status, -N for signal N; None: the process could not be spawned
    uptime_s: float = 0.0
    stopping: bool = False  # the master was stopping the slot
    recycled: ExitReason | None = None  # the master was replacing the process (memory_limit, ...)
    reported: str | None = None  # the reason the runner reported in its `exit` event
    served: int | None = None  # requests served in this life (None: the program reports none)
    transient: bool = False  # could not be spawned for want of descriptors (EMFILE, ENFILE)


@dataclass(frozen=True)
class Decision:
    """What to record and what to do after one exit."""

    reason: ExitReason
    action: Action
    failures: int  # failed starts in a row, this exit included
    delay_s: float = 0.0
    counted: bool = True  # a respawn counts as a restart (a loop-mode run does not)
    loop_run: bool = False  # one finished run of a loop-mode command: a request, not a restart


def backoff_delay(failures: int) -> float:
    """Seconds to wait after `failures` failed starts in a row: 0.1 s doubling, capped at 10 s."""
    return float(min(BACKOFF_FIRST_S * 2 ** max(failures - 1, 0), BACKOFF_MAX_S))


def reason_of_code(code: int) -> ExitReason:
    """The reason of an exit that nobody explained: a crash signal or a non-zero code is a crash."""
    if code < 0:
        return ExitReason.CRASHED if -code in CRASH_SIGNALS else ExitReason.KILLED
    return ExitReason.CRASHED if code else ExitReason.EXITED


def classify(exit: Exit) -> ExitReason:
    """The `last_exit.reason` of an exit."""
    if exit.code is None:
        return ExitReason.CRASHED
    if exit.stopping:
        return ExitReason.STOPPED
    if exit.recycled is not None:
        return exit.recycled
    if exit.code == 0 and exit.reported in {r.value for r in REPORTED_RECYCLES}:
        return ExitReason(exit.reported)
    return reason_of_code(exit.code)


def decide(exit: Exit, rules: Rules, failures: int) -> Decision:
    """Apply the restart policy to one exit; `failures` counts the failed starts before it."""
    reason = classify(exit)
    if reason is ExitReason.CRASHED and exit.code is not None and exit.code > 0 and exit.code in rules.exitcodes:
        reason = ExitReason.EXITED  # an exit code the program declared expected is no crash
    if exit.stopping:
        return Decision(reason, Action.REST, failures)
    if exit.transient:
        # Out of descriptors is the machine's state, not the program's fault: retried after a
        # pause, never counted toward FATAL.
        return Decision(reason, Action.BACKOFF, failures, TRANSIENT_RETRY_S, counted=False)
    loop_run = rules.loop_runs and exit.code == 0
    if reason is ExitReason.MEMORY_LIMIT and (
        (exit.served is not None and exit.served <= 1) or (exit.served is None and exit.uptime_s < rules.started_after_s)
    ):
        # Over the limit at its first check (the runners check after each request, so after at
        # most one), or, for a program that reports no requests, within startsecs: the limit is
        # below what it needs at rest, and respawning at once would be a respawn storm (89 a
        # second for PHP at 10M). A failed start: backoff, then FATAL.
        return _failed_start(reason, rules, failures)
    if reason in RECYCLES or loop_run:
        # A recycle, or one finished run of a loop-mode command: at once, never a failure.
        delay = rules.usleep_s if loop_run else 0.0
        return Decision(reason, Action.RESPAWN, 0, delay, counted=not loop_run, loop_run=loop_run)
    expected = exit.code in rules.exitcodes
    restart = rules.autorestart == "true" or (rules.autorestart == "unexpected" and not expected)
    if exit.code is not None and exit.uptime_s >= rules.started_after_s:
        return Decision(reason, Action.RESPAWN if restart else Action.REST, 0)
    if not restart and expected:
        return Decision(reason, Action.REST, failures)
    return _failed_start(reason, rules, failures)


def _failed_start(reason: ExitReason, rules: Rules, failures: int) -> Decision:
    failures += 1
    if failures > rules.startretries:
        return Decision(reason, Action.FATAL, failures)
    return Decision(reason, Action.BACKOFF, failures, backoff_delay(failures))
