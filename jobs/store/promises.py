"""Chunks promised to a tenant's queued and running jobs: what admission counts besides today's
usage, so that jobs submitted together cannot each find the same room left.

A job admitted is a promise of about its `estimated_chunks`. As its partitions are committed,
their chunks move from the promise to the usage ledger (a partition's charge and the job's
`chunks_done` are written in one transaction), and the promise ends with the job (a job that
outgrows its estimate promises nothing more: its charges are usage already). Admission checks
usage + promised + the new job's estimate against the tenant's daily quota, under the store's
lock in the very transaction that inserts the job (Store.insert_job): before this, 50 jobs
submitted at once each saw the whole quota free, all were accepted, and most then failed with
`quota_exhausted` half-written.

Kept in memory beside the store and moved on by every job it writes, after the commit and
under its lock (as JobCache and JobFigures are), read from the file when it opens or reopens.
Only the store touches it, always under its lock: no lock of its own.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.records import JobRecord

# The jobs whose chunks are still to come (a cancelling job's never are).
PROMISING = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})
# The promises as the file holds them: each queued or running job's tenant and figures.
PROMISES_SELECT = (
    "SELECT id, tenant, status, estimated_chunks, chunks_done FROM jobs "
    f"WHERE status IN ({', '.join(repr(str(s)) for s in sorted(PROMISING))})"
)


def promised_chunks(status: JobStatus | str, estimated: int, done: int) -> int:
    """The chunks a job still promises: its estimate less what it has charged, while it is
    queued or running; none otherwise."""
    if JobStatus(status) not in PROMISING:
        return 0
    return max(0, (estimated or 0) - (done or 0))


class Promises:
    """Chunks promised, by job and summed by tenant."""

    def __init__(self) -> None:
        self._jobs: dict[str, tuple[str, int]] = {}  # job -> (tenant, chunks promised)
        self._tenants: Counter[str] = Counter()

    def load(self, rows: Iterable[tuple[str, str, str, int, int]]) -> None:
        """Start from the file: rows of PROMISES_SELECT."""
        self._jobs.clear()
        self._tenants.clear()
        for job_id, tenant, status, estimated, done in rows:
            self._set(job_id, tenant, promised_chunks(status, estimated, done))

    def follow(self, records: Iterable[JobRecord]) -> None:
        """Jobs just written (new ones, or the latest records of known ones)."""
        for record in records:
            old = self._jobs.pop(record.id, None)
            if old is not None:
                self._take(*old)
            if record.status in PROMISING:
                self._set(
                    record.id,
                    record.tenant,
                    promised_chunks(record.status, record.estimated_chunks, record.chunks_done),
                )

    def of(self, tenant: str) -> int:
        """The chunks promised to the tenant's queued and running jobs."""
        return self._tenants.get(tenant, 0)

    def _set(self, job_id: str, tenant: str, chunks: int) -> None:
        self._jobs[job_id] = (tenant, chunks)
        self._tenants[tenant] += chunks

    def _take(self, tenant: str, chunks: int) -> None:
        self._tenants[tenant] -= chunks
        if self._tenants[tenant] <= 0:
            del self._tenants[tenant]
