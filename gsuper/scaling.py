"""The autoscaling decision: a pure function of one backlog reading, the count and the clock.

``desired(backlog, current, limits, history, now)`` returns a :class:`Decision` (the count to
have now, and the history to pass to the next call). It does no I/O and reads no clock, so
tests drive it with a table of readings and a fake time.

What it does, and how it differs from the peers (docs/operations.md, "Autoscaling"):

- The count wanted is ``clamp(ceil(backlog / jobs_per_worker), minimum, maximum)``, as KEDA
  does for a Redis list.
- It moves by at most ``step`` workers per ``cooldown`` seconds, up or down (Horizon's
  ``balanceMaxShift`` per ``balanceCooldown``); a spike adds ``step`` workers, not one per
  waiting job (RoadRunner's dynamic allocator spawns on every spike).
- It scales down only once every reading for a whole cooldown wanted fewer workers, and then
  only to the most that any of those readings wanted: a queue that empties between two
  readings, then fills again, never makes the count flap.
- ``current`` is the number of serving workers: workers draining after a scale-down are not
  capacity and the caller does not wait for them, so a long job in a draining worker neither
  blocks the next decision nor holds up scale-down (Horizon #1539, PR #1636).
- A failed reading (``backlog`` None) keeps the count, and restarts the low window: no
  scale-down on readings that did not happen.
- The limits are hard: a count outside them (a new floor from ``scale``, a reload) is brought
  inside at once, whatever the cooldown.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace


@dataclass(frozen=True)
class Limits:
    """A program's autoscaling settings, as numbers."""

    minimum: int
    maximum: int
    jobs_per_worker: int = 10
    step: int = 1
    cooldown_s: float = 3.0


@dataclass(frozen=True)
class History:
    """What the decision remembers between readings."""

    #: When the count last changed (None: never).
    changed_at: float | None = None
    #: Since when every reading wanted fewer workers than serve now (None: the last one did not).
    low_since: float | None = None
    #: The most workers any reading wanted since `low_since`.
    low_peak: int = 0


@dataclass(frozen=True)
class Decision:
    """The count to have now, and why."""

    count: int
    #: The count this reading alone asks for (within the limits); None without a reading.
    wanted: int | None
    #: "up", "down", or None when the count stays.
    direction: str | None
    history: History
    #: "backlog" (moved by the reading), "limits" (brought inside the limits), "cooldown" (a move
    #: waits for the cooldown), "low" (a scale-down waits for the backlog to stay low), "steady",
    #: or "no reading".
    reason: str


def wanted(backlog: int, limits: Limits) -> int:
    """clamp(ceil(backlog / jobs_per_worker), minimum, maximum)."""
    need = math.ceil(max(backlog, 0) / max(limits.jobs_per_worker, 1))
    return _clamp(need, limits)


def desired(backlog: int | None, current: int, limits: Limits, history: History, now: float) -> Decision:
    """The count to have after this reading (see the module's text for the rules)."""
    lo, hi = limits.minimum, max(limits.maximum, limits.minimum)
    if current < lo or current > hi:
        count = _clamp(current, limits)
        direction = "up" if count > current else "down"
        return Decision(count, None if backlog is None else wanted(backlog, limits), direction, History(now), "limits")
    if backlog is None:
        return Decision(current, None, None, replace(history, low_since=None, low_peak=0), "no reading")
    want = wanted(backlog, limits)
    cooled = history.changed_at is None or now - history.changed_at >= limits.cooldown_s
    if want > current:
        history = replace(history, low_since=None, low_peak=0)
        if not cooled:
            return Decision(current, want, None, history, "cooldown")
        count = min(want, current + limits.step)
        return Decision(count, want, "up", replace(history, changed_at=now), "backlog")
    if want == current:
        return Decision(current, want, None, replace(history, low_since=None, low_peak=0), "steady")
    # Fewer wanted: only after a whole cooldown of such readings, and not below any of them.
    low_since = now if history.low_since is None else history.low_since
    peak = want if history.low_since is None else max(history.low_peak, want)
    history = replace(history, low_since=low_since, low_peak=peak)
    if now - low_since < limits.cooldown_s:
        return Decision(current, want, None, history, "low")
    if not cooled:
        return Decision(current, want, None, history, "cooldown")
    count = max(history.low_peak, current - limits.step)
    # The next step down needs its own cooldown of low readings, judged from here.
    return Decision(count, want, "down", History(changed_at=now, low_since=now, low_peak=want), "backlog")


def _clamp(n: int, limits: Limits) -> int:
    return max(limits.minimum, min(n, max(limits.maximum, limits.minimum)))


#: Which workers go first on a scale-down: those that serve no request yet (backing off,
#: exited, starting), then idle ones, then busy ones; among equals the highest index.
_VICTIM_RANK = {"STOPPED": 0, "FATAL": 0, "BACKOFF": 0, "EXITED": 0, "STARTING": 1, "RUNNING": 2}


def pick_victims(workers: list[tuple[int, str, float | None]], n: int) -> list[int]:
    """The indexes of the `n` workers to drain, from (index, state, busy_since) rows.

    `busy_since` is when the worker's current request began, 0 when it is idle, and None when
    the runner does not tell (then the highest index goes first, as a plain scale does).
    """
    def key(row: tuple[int, str, float | None]) -> tuple[int, int, int]:
        index, state, busy_since = row
        return (_VICTIM_RANK.get(state, 3), 1 if busy_since else 0, -index)

    return [row[0] for row in sorted(workers, key=key)[: max(n, 0)]]
