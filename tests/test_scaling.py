"""The autoscaling decision (gsuper/scaling.py), table-tested with a fake clock."""

from __future__ import annotations

import pytest

from gsuper.scaling import Decision, History, Limits, desired, wanted

LIM = Limits(minimum=1, maximum=8, jobs_per_worker=10, step=1, cooldown_s=3.0)


def run(readings: list[tuple[float, int | None]], start: int, limits: Limits = LIM) -> list[Decision]:
    """Feed (time, backlog) readings in order, applying each decision as the caller would."""
    history, current, out = History(), start, []
    for now, backlog in readings:
        d = desired(backlog, current, limits, history, now)
        history, current = d.history, d.count
        out.append(d)
    return out


@pytest.mark.parametrize(
    "backlog,expected",
    [(0, 1), (1, 1), (10, 1), (11, 2), (45, 5), (80, 8), (81, 8), (10_000, 8), (-5, 1)],
)
def test_wanted_is_ceil_of_backlog_per_worker_within_limits(backlog, expected):
    assert wanted(backlog, LIM) == expected


def test_scale_up_moves_one_step_per_cooldown():
    ds = run([(0, 1000), (1, 1000), (2, 1000), (3, 1000), (5.9, 1000), (6, 1000)], start=1)
    assert [d.count for d in ds] == [2, 2, 2, 3, 3, 4]
    assert [d.direction for d in ds] == ["up", None, None, "up", None, "up"]
    assert ds[1].reason == "cooldown" and ds[0].reason == "backlog"


def test_a_bigger_step_stops_at_what_is_wanted():
    lim = Limits(1, 8, 10, step=4, cooldown_s=3)
    ds = run([(0, 1000), (3, 1000), (6, 1000)], start=1, limits=lim)
    assert [d.count for d in ds] == [5, 8, 8]
    ds = run([(0, 25)], start=1, limits=lim)
    assert ds[0].count == 3  # ceil(25/10), not 1 + 4


def test_scale_down_waits_for_a_whole_cooldown_of_low_readings():
    # 4 workers serve; the queue empties: nothing moves until it has been low for 3 s.
    h = History(changed_at=-100.0)
    ds = []
    current = 4
    for now in (0, 1, 2, 2.9, 3, 4, 6):
        d = desired(0, current, LIM, h, now)
        h, current = d.history, d.count
        ds.append(d)
    assert [d.count for d in ds] == [4, 4, 4, 4, 3, 3, 2]
    assert ds[0].reason == "low" and ds[4].direction == "down"


def test_a_queue_that_empties_between_two_readings_does_not_flap():
    # Bursty: full, empty, full, empty... every second; 4 workers are right for the full queue.
    readings = [(float(t), 40 if t % 2 == 0 else 0) for t in range(30)]
    ds = run(readings, start=4)
    assert {d.count for d in ds} == {4}
    assert all(d.direction is None for d in ds)


def test_scale_down_goes_no_lower_than_the_highest_low_reading():
    h = History(changed_at=-100.0)
    d1 = desired(0, 6, LIM, h, 0)  # wants 1
    d2 = desired(45, 6, LIM, d1.history, 1)  # wants 5, still below 6
    d3 = desired(0, 6, Limits(1, 8, 10, step=5, cooldown_s=3), d2.history, 3)
    assert d3.direction == "down" and d3.count == 5  # not 1: a reading in the window wanted 5


def test_after_a_step_down_the_next_needs_its_own_low_window():
    lim = Limits(1, 8, 10, step=1, cooldown_s=3)
    ds = run([(0, 0), (3, 0), (4, 0), (6, 0), (9, 0)], start=4, limits=lim)
    assert [d.count for d in ds] == [4, 3, 3, 2, 1]


def test_a_failed_reading_keeps_the_count_and_restarts_the_low_window():
    ds = run([(0, 0), (2, None), (3, 0), (5.9, 0), (6, 0)], start=3)
    assert [d.count for d in ds] == [3, 3, 3, 3, 2]
    assert ds[1].reason == "no reading" and ds[1].wanted is None


def test_no_reading_never_scales_up_either():
    ds = run([(0, None), (10, None)], start=1)
    assert [d.count for d in ds] == [1, 1]


def test_a_count_outside_the_limits_is_brought_inside_at_once():
    # A new floor of 5 (scale NAME=5) while 2 serve, inside the cooldown of the last change.
    h = History(changed_at=0.0)
    d = desired(0, 2, Limits(5, 8), h, 0.5)
    assert (d.count, d.direction, d.reason) == (5, "up", "limits")
    d = desired(None, 9, Limits(1, 8), h, 0.5)
    assert (d.count, d.direction, d.reason) == (8, "down", "limits")


def test_draining_workers_are_not_capacity():
    # The caller passes only serving workers: 2 serve while 3 drain a long job each; the
    # backlog needs 3, so the count goes up now (the drainers neither count nor block).
    d = desired(30, 2, LIM, History(changed_at=-10.0), 0)
    assert (d.count, d.direction) == (3, "up")


def test_floor_of_zero_scales_to_zero_and_back():
    lim = Limits(0, 4, 10, 1, 3)
    ds = run([(0, 0), (3, 0), (4, 5)], start=1, limits=lim)
    assert [d.count for d in ds] == [1, 0, 0]  # the up step waits for the cooldown of the down one
    d = desired(5, 0, lim, ds[-1].history, 6)
    assert (d.count, d.direction) == (1, "up")


def test_steady_reading_clears_the_low_window():
    ds = run([(0, 0), (2, 30), (4, 0), (6, 0), (7, 0)], start=3)
    # The 30 at t=2 wants 3 = current: the low window restarts at t=4, so the step is at t=7.
    assert [d.count for d in ds] == [3, 3, 3, 3, 2]


def test_victims_are_idle_first_then_highest_index():
    from gsuper.scaling import pick_victims

    rows = [(0, "RUNNING", None), (1, "RUNNING", None), (2, "RUNNING", None), (3, "RUNNING", None)]
    assert pick_victims(rows, 2) == [3, 2]  # no busy stamp: the highest index, like a plain scale
    rows = [(0, "RUNNING", 0.0), (1, "RUNNING", 12.5), (2, "RUNNING", 0.0), (3, "RUNNING", 11.0)]
    assert pick_victims(rows, 2) == [2, 0]  # the idle ones, though 3 is the highest
    assert pick_victims(rows, 3) == [2, 0, 3]
    rows = [(0, "RUNNING", 0.0), (1, "BACKOFF", None), (2, "STARTING", None), (3, "RUNNING", 0.0)]
    assert pick_victims(rows, 2) == [1, 2]  # serving no request yet: cheapest to stop
    assert pick_victims(rows, 0) == []


def test_the_worked_example_of_docs_operations():
    """docs/operations.md, "A worked example": readings every second, 2..6, 50 per worker."""
    lim = Limits(minimum=2, maximum=6, jobs_per_worker=50, step=2, cooldown_s=5)
    backlog = [40, 1000, 900, 800, 700, 600, 500, 300, 100, 0, 120] + [0] * 10
    ds = run([(float(t), b) for t, b in enumerate(backlog)], start=2, limits=lim)
    counts = {t: d.count for t, d in enumerate(ds)}
    assert [counts[t] for t in (0, 1, 5, 6, 8, 10, 12, 13, 17, 18, 20)] == [2, 4, 4, 6, 6, 6, 6, 4, 4, 2, 2]
    assert ds[8].reason == "low" and ds[10].wanted == 3
