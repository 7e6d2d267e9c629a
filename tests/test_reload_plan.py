"""The reload plan as a table (fast tier: configurations only, nothing runs)."""

from __future__ import annotations

from dataclasses import replace

from fakes import program_config
from gsuper.config import GsuperConfig
from gsuper.reload import Kind, plan_reload


def gsuper_config(*programs: object, rundir: str = "/r", logdir: str = "/l") -> GsuperConfig:
    return GsuperConfig("/x/gsuper.ini", rundir, logdir, "info", 0, 0, 1.0, {p.name: p for p in programs})  # type: ignore[attr-defined]


A = program_config(name="a")
B = program_config(name="b")
C = program_config(name="c")


def kinds(plan: object) -> list[tuple[str, str]]:
    return [(c.name, c.kind.value) for c in plan.changes]  # type: ignore[attr-defined]


def test_unchanged_programs_are_left_alone() -> None:
    plan = plan_reload(gsuper_config(A, B), gsuper_config(A, B), running={"a", "b"})
    assert kinds(plan) == [("a", "unchanged"), ("b", "unchanged")]
    assert plan.notes == ()


def test_removed_first_then_changes_in_file_order_then_added() -> None:
    old = gsuper_config(A, B)
    new = gsuper_config(C, replace(B, numprocs=3))
    plan = plan_reload(old, new, running={"a", "b"})
    assert kinds(plan) == [("a", "removed"), ("b", "scaled"), ("c", "added")]
    assert plan.of_kind(Kind.ADD)[0].config == C
    assert plan.of_kind(Kind.REMOVE)[0].config is None


def test_a_changed_program_rolls_when_running_and_is_reconfigured_when_not() -> None:
    old = gsuper_config(A, B)
    new = gsuper_config(replace(A, stop_timeout_s=3.0), replace(B, command="sleep 5"))
    plan = plan_reload(old, new, running={"a"})
    assert kinds(plan) == [("a", "rolling"), ("b", "reconfigured")]


def test_numprocs_with_another_change_is_a_rolling_restart_not_a_scale() -> None:
    new = gsuper_config(replace(A, numprocs=4, usleep_us=0))
    assert kinds(plan_reload(gsuper_config(A), new, running={"a"})) == [("a", "rolling")]


def test_a_scale_at_runtime_is_undone_by_a_reload_of_the_same_file() -> None:
    # `scale a=4` changed the running config; the file still says 1: the reload scales back.
    plan = plan_reload(gsuper_config(A), gsuper_config(A), running={"a"}, current={"a": replace(A, numprocs=4)})
    assert kinds(plan) == [("a", "scaled")]
    assert plan.changes[0].config is not None and plan.changes[0].config.numprocs == 1


def test_moved_folders_are_a_note() -> None:
    plan = plan_reload(gsuper_config(A), gsuper_config(A, rundir="/elsewhere"), running=set())
    assert plan.notes == ("rundir and logdir changes take effect at the next start",)
