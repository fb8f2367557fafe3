"""The runner's admission queue: jobs waiting for a concurrency slot, the jobs holding one, and
the partitions a job was planned with, all in memory (loaded from the store at start), so no
submission or admission scans the jobs table. Which waiting jobs start is the pure policy
`jobs.policies.decisions.admissions`."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from embedscale.engine.sources.partitions import Partition
from embedscale.jobs.policies.decisions import admissions
from embedscale.jobs.store.records import JobRecord


class AdmissionQueue:
    """Queued and active jobs. `due` says whether admission may let a job through now: set
    when a job arrives or a slot frees."""

    def __init__(self) -> None:
        self._queued: dict[str, JobRecord] = {}  # oldest first
        self._active: dict[str, str] = {}  # job -> tenant, for jobs holding a slot
        self._planned: dict[str, list[Partition]] = {}
        self.due = True

    def add(self, record: JobRecord, partitions: list[Partition] | None = None) -> None:
        """A queued job (with the partitions it was planned with, when known)."""
        self._queued[record.id] = record
        if partitions is not None:
            self._planned[record.id] = partitions
        self.due = True

    def queued_partitions(self, limit_of: Callable[[str], int | None]) -> int:
        """Partitions (their planned counts) of the queued jobs that a free slot of their
        tenant would admit now: those held back by their tenant's limit wait for that
        tenant, not for more workers."""
        return sum(r.partitions_total for r in self.admissible(limit_of))

    def hold(self, job_id: str, tenant: str) -> None:
        """A job holds a slot (one admitted, or one found running at start)."""
        self._active[job_id] = tenant

    def release(self, job_id: str) -> None:
        """A job ended or was cancelled: its slot frees, or it leaves the queue."""
        self._active.pop(job_id, None)
        self._queued.pop(job_id, None)
        self._planned.pop(job_id, None)
        self.due = True

    def admissible(self, limit_of: Callable[[str], int | None]) -> list[JobRecord]:
        """The queued jobs that may start now, in order (still queued until `started`)."""
        if not self._queued:
            return []
        active = Counter(self._active.values())
        return admissions(list(self._queued.values()), active, limit_of)

    def started(
        self, admitted: list[JobRecord], running: list[JobRecord]
    ) -> list[tuple[JobRecord, list[Partition] | None]]:
        """`admitted` left the queue; those of them now `running` (the others were cancelled
        while they waited) hold slots. Returns each running job with its planned
        partitions."""
        for job in admitted:
            del self._queued[job.id]
        out = []
        for record in running:
            self._active[record.id] = record.tenant
            out.append((record, self._planned.pop(record.id, None)))
        for job in admitted:
            self._planned.pop(job.id, None)
        return out
