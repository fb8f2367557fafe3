"""The runner's pure policies: admission, the quota split of a batch, retry/backoff, the done
rule. No cluster, no database."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from embedscale.jobs.policies.decisions import (
    FinishedPartition,
    RetryPolicy,
    admissions,
    is_done,
    split_by_quota,
)
from embedscale.jobs.runner.admission import AdmissionQueue

T0 = datetime(2026, 1, 1, tzinfo=UTC)


@dataclass
class Queued:
    id: str
    tenant: str
    priority: str = "normal"
    created_at: datetime = T0


def test_admission_takes_priority_then_age_and_keeps_each_tenant_within_its_limit():
    queued = [
        Queued("a1", "a", created_at=T0),
        Queued("b1", "b", "low"),
        Queued("a2", "a", "high", T0 + timedelta(seconds=5)),
        Queued("a3", "a", created_at=T0 + timedelta(seconds=1)),
        Queued("c1", "c"),
    ]
    limits = {"a": 2, "b": None, "c": 0}
    admitted = admissions(queued, {"a": 1}, limits.get)
    # a has one running and a limit of two: only its best queued job starts (a2, high);
    # c may run none; b has no limit.
    assert [j.id for j in admitted] == ["a2", "b1"]
    assert [j.id for j in admissions(queued, {}, limits.get)] == ["a2", "a1", "b1"]


def test_the_admission_queue_frees_a_slot_when_a_job_ends_and_hands_over_its_plan():
    queue = AdmissionQueue()
    queue.hold("running", "a")  # found running at start
    for job in (Queued("a1", "a"), Queued("a2", "a", created_at=T0 + timedelta(seconds=1))):
        queue.add(job, partitions=[f"plan of {job.id}"])
    limits = {"a": 2}.get
    admitted = queue.admissible(limits)
    assert [j.id for j in admitted] == ["a1"]  # one slot of two is held
    # a1 was cancelled while it waited: it leaves the queue but holds no slot.
    assert queue.started(admitted, running=[]) == []
    assert [j.id for j in queue.admissible(limits)] == ["a2"]
    queue.release("running")
    admitted = queue.admissible(limits)
    started = queue.started(admitted, running=admitted)
    assert [(r.id, plan) for r, plan in started] == [("a2", ["plan of a2"])]
    assert queue.admissible(limits) == []


def test_the_quota_split_stops_a_job_at_its_first_partition_that_does_not_fit():
    finished = [
        FinishedPartition("j1", "t", 0, 40),
        FinishedPartition("j2", "t", 0, 50),
        FinishedPartition("j1", "t", 1, 5),
        FinishedPartition("j3", "u", 0, 999),
    ]
    limits = {"t": 100, "u": None}
    accepted, exhausted = split_by_quota(finished, {"t": 20}, limits.get)
    # t has 80 left: j1's 40 fit, j2's 50 do not (and j2 ends), j1's next 5 still fit.
    assert accepted == [0, 2, 3]
    assert exhausted == {
        "j2": "daily chunk quota exhausted: partition 0 needs 50 chunks, 40 of 100 left today"
    }
    # With 5 left, j1's first partition does not fit: its later one (which would) is not
    # committed either, since the job has ended.
    accepted, exhausted = split_by_quota(finished[:3], {"t": 95}, limits.get)
    assert accepted == [] and set(exhausted) == {"j1", "j2"}


def test_retries_back_off_exponentially_up_to_a_cap_and_stop_after_the_last_attempt():
    policy = RetryPolicy(max_attempts=5, backoff_seconds=1.0, backoff_max_seconds=5.0)
    assert [policy.delay(n) for n in range(1, 6)] == [1.0, 2.0, 4.0, 5.0, None]
    assert RetryPolicy().delay(1, worker_died_each_time=True) is None


@dataclass
class Progress:
    pending: deque = field(default_factory=deque)
    in_flight: dict = field(default_factory=dict)
    retry_at: dict = field(default_factory=dict)
    suspects: set = field(default_factory=set)


def test_a_job_is_done_only_when_nothing_waits_runs_or_waits_for_a_retry():
    assert is_done(Progress())
    assert not is_done(Progress(pending=deque([3])))
    assert not is_done(Progress(in_flight={1: "future"}))
    assert not is_done(Progress(retry_at={2: 10.0}))
    assert not is_done(Progress(suspects={4}))
