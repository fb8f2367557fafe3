"""The runner's decisions, as pure functions: which queued jobs start, which finished
partitions fit their tenants' quotas, whether and when a failed partition runs again, when a job
is done. No cluster, no database: each is
tested on its own (tests/test_policies.py); the runner only does the I/O around them.
"""

from __future__ import annotations

from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol, TypeVar

from embedscale.jobs.policies.scheduling import PRIORITY_LEVELS


class QueuedJob(Protocol):
    id: str
    tenant: str
    priority: str
    created_at: datetime


Queued = TypeVar("Queued", bound=QueuedJob)  # the caller's own records come back


def admissions(
    queued: Sequence[Queued], active: Mapping[str, int], limit_of: Callable[[str], int | None]
) -> list[Queued]:
    """The queued jobs that may start now, in order: highest priority first, then oldest,
    while each tenant stays within its concurrent-job limit (None: no limit). A job over the
    limit is not refused: it waits in `queued` until one of its tenant's jobs ends."""
    running = dict(active)
    admitted = []
    for job in sorted(queued, key=lambda j: (-PRIORITY_LEVELS[j.priority], j.created_at)):
        limit = limit_of(job.tenant)
        if limit is not None and running.get(job.tenant, 0) >= limit:
            continue
        running[job.tenant] = running.get(job.tenant, 0) + 1
        admitted.append(job)
    return admitted


@dataclass(frozen=True, slots=True)
class FinishedPartition:
    """What the quota split needs of one finished partition."""

    job_id: str
    tenant: str
    partition: int
    chunks: int


def split_by_quota(
    finished: Sequence[FinishedPartition],
    used_today: Mapping[str, int],
    daily_limit_of: Callable[[str], int | None],
) -> tuple[list[int], dict[str, str]]:
    """Positions of the partitions that fit their tenants' daily chunk quotas, taken in order,
    and the jobs (with the reason) whose next partition does not: nothing more of those is
    committed in this batch, and they fail with `quota_exhausted`."""
    used = dict(used_today)
    accepted: list[int] = []
    exhausted: dict[str, str] = {}
    for position, p in enumerate(finished):
        if p.job_id in exhausted:
            continue
        limit = daily_limit_of(p.tenant)
        spent = used.get(p.tenant, 0)
        if limit is not None and spent + p.chunks > limit:
            exhausted[p.job_id] = (
                f"daily chunk quota exhausted: partition {p.partition} needs {p.chunks} "
                f"chunks, {max(0, limit - spent)} of {limit} left today"
            )
            continue
        used[p.tenant] = spent + p.chunks
        accepted.append(position)
    return accepted, exhausted


@dataclass(frozen=True, slots=True)
class RetryPolicy:
    """Exponential backoff for a failed partition, up to `max_attempts` in all."""

    max_attempts: int = 3
    backoff_seconds: float = 1.0  # the first retry's delay; doubles each attempt
    backoff_max_seconds: float = 60.0

    def delay(self, attempts: int, worker_died_each_time: bool = False) -> float | None:
        """Seconds until the next attempt after `attempts` failures; None: no more attempts.
        A partition whose task killed every worker that ran it while it ran alone on the cluster
        (Dask's KilledWorker, after its own re-runs) is not tried again: it would only kill
        more workers, and every tenant's work on them."""
        if worker_died_each_time or attempts >= self.max_attempts:
            return None
        return min(self.backoff_max_seconds, self.backoff_seconds * 2 ** (attempts - 1))


class Progressing(Protocol):
    """What `is_done` reads of a running job (read-only: any collection of partitions)."""

    @property
    def pending(self) -> Collection[int]: ...

    @property
    def in_flight(self) -> Collection[int]: ...

    @property
    def retry_at(self) -> Collection[int]: ...

    @property
    def suspects(self) -> Collection[int]: ...


def is_done(job: Progressing) -> bool:
    """A job is done when no partition of it waits, runs, waits for a retry, or waits to run
    alone after its workers died."""
    return not job.pending and not job.in_flight and not job.retry_at and not job.suspects
