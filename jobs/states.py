"""Job statuses, the transitions allowed between them, and the groups callers ask about.

Pure code: no I/O, testable without a cluster or a database (as distributed's scheduler keeps
its task states as data). An illegal transition raises an error that carries the job's history.
"""

from __future__ import annotations

from collections.abc import Sequence
from enum import StrEnum

from embedscale.jobs.errors import ConflictError


class JobStatus(StrEnum):
    """Where a job is in its life."""

    QUEUED = "queued"  # accepted; waiting for a slot under its tenant's concurrency limit
    RUNNING = "running"  # partitions are being fed to the cluster
    CANCELLING = "cancelling"  # cancel asked: in-flight work is being stopped, rows removed
    SUCCEEDED = "succeeded"  # every partition committed (some documents may have been skipped)
    FAILED = "failed"  # a partition failed after its retries, or the quota ran out
    CANCELLED = "cancelled"  # stopped on request; its rows were removed from its table


TERMINAL = frozenset({JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED})
ACTIVE = frozenset({JobStatus.RUNNING, JobStatus.CANCELLING})  # hold a concurrency slot
CANCELABLE = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
UNFINISHED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING, JobStatus.CANCELLING})

# (from, to) -> why this step exists. Anything else is illegal.
TRANSITIONS: dict[tuple[JobStatus, JobStatus], str] = {
    (JobStatus.QUEUED, JobStatus.RUNNING): "admitted under the tenant's concurrency limit",
    (JobStatus.QUEUED, JobStatus.FAILED): "could not start (bad source, model or table)",
    (JobStatus.QUEUED, JobStatus.CANCELLED): "cancelled before it started: nothing to remove",
    (JobStatus.RUNNING, JobStatus.SUCCEEDED): "every partition committed",
    (JobStatus.RUNNING, JobStatus.FAILED): "a partition failed after retries, or quota ran out",
    (JobStatus.RUNNING, JobStatus.CANCELLING): "cancel asked while partitions run",
    (JobStatus.CANCELLING, JobStatus.CANCELLED): "in-flight work stopped and rows removed",
}


class IllegalTransitionError(ConflictError):
    """A status change the transition table does not allow (a conflict with the job's state:
    the CLI prints it as one line, the API answers 409)."""

    def __init__(
        self, job_id: str, old: JobStatus, new: JobStatus, history: Sequence[tuple[str, str]] = ()
    ) -> None:
        self.job_id, self.old, self.new, self.history = job_id, old, new, list(history)
        steps = " -> ".join(status for status, _ in self.history) or str(old)
        super().__init__(f"job {job_id}: cannot go from {old} to {new} (history: {steps})")


def check_transition(
    job_id: str, old: JobStatus | str, new: JobStatus | str, history: Sequence[tuple[str, str]] = ()
) -> JobStatus:
    """Return `new` as a JobStatus if `old -> new` is allowed, else raise with the history."""
    old, new = JobStatus(old), JobStatus(new)
    if (old, new) not in TRANSITIONS:
        raise IllegalTransitionError(job_id, old, new, history)
    return new
