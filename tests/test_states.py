"""The job state machine, as pure data, checked against an expectation written out here."""

from itertools import product

import pytest

from embedscale.jobs.states import (
    ACTIVE,
    CANCELABLE,
    TERMINAL,
    UNFINISHED,
    IllegalTransitionError,
    JobStatus,
    check_transition,
)

# Typed out by hand from the documented life of a job, not read from jobs/states.py: a change
# to the table there has to be made here as well, on purpose.
ALLOWED = {
    ("queued", "running"),
    ("queued", "failed"),
    ("queued", "cancelled"),
    ("running", "succeeded"),
    ("running", "failed"),
    ("running", "cancelling"),
    ("cancelling", "cancelled"),
}
STATUSES = ["queued", "running", "cancelling", "succeeded", "failed", "cancelled"]
HISTORY = [("queued", "t0"), ("running", "t1")]


def test_the_statuses_are_the_six_expected():
    assert sorted(JobStatus) == sorted(STATUSES)


@pytest.mark.parametrize("old,new", sorted(product(STATUSES, STATUSES)))
def test_every_pair_is_allowed_or_refused_with_the_history(old, new):
    if (old, new) in ALLOWED:
        assert check_transition("j1", old, new, HISTORY) is JobStatus(new)
        return
    with pytest.raises(IllegalTransitionError) as err:
        check_transition("j1", old, new, HISTORY)
    assert (err.value.job_id, err.value.old, err.value.new) == ("j1", old, new)
    assert err.value.history == HISTORY
    assert f"cannot go from {old} to {new}" in str(err.value)
    assert "(history: queued -> running)" in str(err.value)


def test_groups():
    assert {"succeeded", "failed", "cancelled"} == TERMINAL
    assert {"running", "cancelling"} == ACTIVE
    assert {"queued", "running"} == CANCELABLE
    assert {"queued", "running", "cancelling"} == UNFINISHED


def test_an_unknown_status_is_a_value_error():
    with pytest.raises(ValueError):
        check_transition("j1", "queued", "paused")
    with pytest.raises(ValueError):
        check_transition("j1", "paused", "running")
