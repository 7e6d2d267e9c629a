"""The restart policy as a table (fast tier: no process, no clock).

Each row of README.md's "Restart policy and status" table is a row here.
"""

from __future__ import annotations

import signal

import pytest

from gsuper.policy import Action, Exit, ExitReason, Rules, backoff_delay, classify, decide

R = ExitReason
DEFAULT = Rules()  # autorestart true, exitcodes 0, startsecs 1, startretries 3


@pytest.mark.parametrize(
    ("exit", "rules", "failures", "reason", "action", "after", "delay"),
    [
        # Up at least max(startsecs, 1) s, then died: respawned at once, whatever the exit.
        (Exit(-signal.SIGKILL, 5.0), DEFAULT, 0, R.KILLED, Action.RESPAWN, 0, 0.0),
        (Exit(-signal.SIGSEGV, 5.0), DEFAULT, 2, R.CRASHED, Action.RESPAWN, 0, 0.0),
        (Exit(3, 1.0), DEFAULT, 0, R.CRASHED, Action.RESPAWN, 0, 0.0),
        (Exit(0, 60.0), DEFAULT, 0, R.EXITED, Action.RESPAWN, 0, 0.0),
        # startsecs above 1 s moves the line.
        (Exit(1, 1.5), Rules(startsecs_s=2.0), 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        (Exit(1, 2.0), Rules(startsecs_s=2.0), 0, R.CRASHED, Action.RESPAWN, 0, 0.0),
        # startsecs below 1 s does not: the line is 1 s.
        (Exit(1, 0.5), Rules(startsecs_s=0.0), 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        # A recycle is respawned at once and never counts as a failure, however soon.
        (Exit(0, 0.01, reported="max_request"), DEFAULT, 2, R.MAX_REQUEST, Action.RESPAWN, 0, 0.0),
        (Exit(0, 0.01, reported="memory_limit", served=3), DEFAULT, 0, R.MEMORY_LIMIT, Action.RESPAWN, 0, 0.0),
        (Exit(0, 0.2, reported="max_lifetime"), DEFAULT, 0, R.MAX_LIFETIME, Action.RESPAWN, 0, 0.0),
        (Exit(-signal.SIGTERM, 0.3, recycled=R.MEMORY_LIMIT, served=5), DEFAULT, 1, R.MEMORY_LIMIT, Action.RESPAWN, 0, 0.0),
        (Exit(-signal.SIGTERM, 9.0, recycled=R.MEMORY_LIMIT), DEFAULT, 1, R.MEMORY_LIMIT, Action.RESPAWN, 0, 0.0),
        # ... but over memory_limit at its first check (after at most one request; or, reporting
        # none, within startsecs) is a failed start: the limit is below the program's resting size.
        (Exit(0, 5.0, reported="memory_limit", served=0), DEFAULT, 0, R.MEMORY_LIMIT, Action.BACKOFF, 1, 0.1),
        (Exit(0, 0.05, reported="memory_limit", served=1), DEFAULT, 1, R.MEMORY_LIMIT, Action.BACKOFF, 2, 0.2),
        (Exit(-signal.SIGTERM, 0.3, recycled=R.MEMORY_LIMIT), DEFAULT, 1, R.MEMORY_LIMIT, Action.BACKOFF, 2, 0.2),
        (Exit(0, 0.2, reported="memory_limit", served=0), DEFAULT, 3, R.MEMORY_LIMIT, Action.FATAL, 4, 0.0),
        # Out of descriptors at spawn: retried after 1 s, never counted toward FATAL.
        (Exit(None, transient=True), DEFAULT, 3, R.CRASHED, Action.BACKOFF, 3, 1.0),
        # An exit code listed in exitcodes is `exited`, not `crashed`.
        (Exit(2, 5.0, stopping=False), Rules(exitcodes=(0, 2)), 0, R.EXITED, Action.RESPAWN, 0, 0.0),
        (Exit(-signal.SIGKILL, 0.3, recycled=R.REQUEST_TIMEOUT), DEFAULT, 0, R.REQUEST_TIMEOUT, Action.RESPAWN, 0, 0.0),
        # A reported recycle counts only with a clean exit code.
        (Exit(1, 0.01, reported="max_request"), DEFAULT, 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        # Died sooner: a failed start; backoff 0.1 s doubling, FATAL after startretries retries.
        (Exit(1, 0.1), DEFAULT, 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        (Exit(1, 0.1), DEFAULT, 1, R.CRASHED, Action.BACKOFF, 2, 0.2),
        (Exit(1, 0.1), DEFAULT, 2, R.CRASHED, Action.BACKOFF, 3, 0.4),
        (Exit(1, 0.1), DEFAULT, 3, R.CRASHED, Action.FATAL, 4, 0.0),
        (Exit(1, 0.1), Rules(startretries=0), 0, R.CRASHED, Action.FATAL, 1, 0.0),
        (Exit(0, 0.1), DEFAULT, 0, R.EXITED, Action.BACKOFF, 1, 0.1),
        # A process that could not be spawned is a failed start too.
        (Exit(None), DEFAULT, 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        # A stop: at rest, whatever the code.
        (Exit(-signal.SIGTERM, 0.1, stopping=True), DEFAULT, 2, R.STOPPED, Action.REST, 2, 0.0),
        (Exit(-signal.SIGKILL, 9.0, stopping=True), DEFAULT, 0, R.STOPPED, Action.REST, 0, 0.0),
        # autorestart and exitcodes decide for a worker that was up long enough.
        (Exit(0, 5.0), Rules(autorestart="false"), 0, R.EXITED, Action.REST, 0, 0.0),
        (Exit(0, 5.0), Rules(autorestart="unexpected"), 0, R.EXITED, Action.REST, 0, 0.0),
        (Exit(2, 5.0), Rules(autorestart="unexpected"), 0, R.CRASHED, Action.RESPAWN, 0, 0.0),
        (Exit(2, 5.0), Rules(autorestart="unexpected", exitcodes=(0, 2)), 0, R.EXITED, Action.REST, 0, 0.0),
        # ... and an expected quick exit that is not to be restarted is no failure either.
        (Exit(0, 0.1), Rules(autorestart="false"), 1, R.EXITED, Action.REST, 1, 0.0),
        (Exit(1, 0.1), Rules(autorestart="false"), 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
        # A loop-mode command: a clean run is a request; the next run follows after usleep.
        (Exit(0, 0.01), Rules(loop_runs=True, usleep_s=0.5), 3, R.EXITED, Action.RESPAWN, 0, 0.5),
        (Exit(1, 0.01), Rules(loop_runs=True), 0, R.CRASHED, Action.BACKOFF, 1, 0.1),
    ],
)
def test_decide(exit: Exit, rules: Rules, failures: int, reason: ExitReason, action: Action, after: int, delay: float) -> None:
    d = decide(exit, rules, failures)
    assert (d.reason, d.action, d.failures) == (reason, action, after)
    assert d.delay_s == pytest.approx(delay)


def test_a_loop_run_is_not_a_restart() -> None:
    d = decide(Exit(0, 0.01), Rules(loop_runs=True), 0)
    assert d.loop_run and not d.counted
    assert decide(Exit(0, 5.0), DEFAULT, 0).counted


def test_backoff_doubles_up_to_ten_seconds() -> None:
    assert [backoff_delay(n) for n in range(1, 10)] == [0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 10.0, 10.0]


@pytest.mark.parametrize(
    ("exit", "reason"),
    [
        (Exit(-signal.SIGABRT), R.CRASHED),
        (Exit(-signal.SIGTERM), R.KILLED),
        (Exit(0, reported="bootstrap"), R.EXITED),  # not a recycle: the runner failed
        (Exit(0, reported="done"), R.EXITED),
        (Exit(0, reported="no such reason"), R.EXITED),
    ],
)
def test_classify(exit: Exit, reason: ExitReason) -> None:
    assert classify(exit) is reason
