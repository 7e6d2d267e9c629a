"""The state table: every legal transition passes, every other one raises."""

import itertools

import pytest

from gsuper.states import TRANSITIONS, ProcessState, TransitionError, check_transition

S = ProcessState
LEGAL = {
    (S.STOPPED, S.STARTING),
    (S.STARTING, S.RUNNING),
    (S.STARTING, S.BACKOFF),
    (S.STARTING, S.STOPPING),
    (S.STARTING, S.EXITED),
    (S.RUNNING, S.STOPPING),
    (S.RUNNING, S.EXITED),
    (S.BACKOFF, S.STARTING),
    (S.BACKOFF, S.FATAL),
    (S.BACKOFF, S.STOPPED),
    (S.STOPPING, S.STOPPED),
    (S.EXITED, S.STARTING),
    (S.EXITED, S.BACKOFF),
    (S.EXITED, S.STOPPED),
    (S.FATAL, S.STARTING),
    (S.FATAL, S.STOPPED),
}


def test_table_is_exactly_the_documented_set():
    table = {(a, b) for a, targets in TRANSITIONS.items() for b in targets}
    assert table == LEGAL


@pytest.mark.parametrize("old,new", sorted(LEGAL, key=lambda p: (p[0].value, p[1].value)))
def test_legal_transition(old, new):
    check_transition(old, new)


ILLEGAL = sorted(set(itertools.product(S, S)) - LEGAL, key=lambda p: (p[0].value, p[1].value))


@pytest.mark.parametrize("old,new", ILLEGAL)
def test_illegal_transition(old, new):
    with pytest.raises(TransitionError):
        check_transition(old, new)


def test_every_state_has_a_row():
    assert set(TRANSITIONS) == set(S)
