"""The job state machine, as pure data."""
import pytest

from jobs.states import (
    ACTIVE,
    CANCELABLE,
    TERMINAL,
    TRANSITIONS,
    IllegalTransitionError,
    JobStatus,
    check_transition,
)


def test_every_status_is_reachable_and_terminal_ones_lead_nowhere():
    targets = {new for _, new in TRANSITIONS} | {JobStatus.QUEUED}
    assert targets == set(JobStatus)
    assert not any(old in TERMINAL for old, _ in TRANSITIONS)


def test_groups():
    assert {JobStatus.QUEUED, JobStatus.RUNNING} == CANCELABLE
    assert ACTIVE.isdisjoint(TERMINAL)


@pytest.mark.parametrize("old,new", sorted(TRANSITIONS))
def test_allowed(old, new):
    assert check_transition("j", old, new) is new


def test_illegal_transition_carries_the_history():
    history = [("queued", "t0"), ("running", "t1"), ("succeeded", "t2")]
    with pytest.raises(IllegalTransitionError) as err:
        check_transition("j1", "succeeded", "running", history)
    assert err.value.history == history
    assert "queued -> running -> succeeded" in str(err.value)
    with pytest.raises(IllegalTransitionError):
        check_transition("j1", "queued", "succeeded")
    with pytest.raises(ValueError):
        check_transition("j1", "queued", "paused")
