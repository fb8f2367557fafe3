"""The figures /metrics reports about jobs, kept in memory beside the store: jobs by status,
chunks and tokens embedded by tenant and model, and the partitions still waiting.

Why in memory: these were three aggregate queries (one a scan of every job ever, parsing each
spec's JSON) run under the store's one lock at each scrape, so a flood of /metrics requests
stalled the runner's commits behind them. Now the store reads them from the file once, when it
opens, and moves them on with every job it writes, under its lock after the commit (as it
keeps JobCache), so they never run ahead of the file. A scrape copies them under a lock of
their own and never touches DuckDB.

Only unfinished jobs can change (the transitions table has no way out of a terminal status),
so only they are remembered one by one; a finished job is a count and a sum.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

from embedscale.jobs.states import UNFINISHED, JobStatus
from embedscale.jobs.store.records import JobRecord

# Jobs whose partitions not yet done are work waiting (a cancelling job's never run).
WAITING = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})


@dataclass(frozen=True, slots=True)
class JobShare:
    """What one job adds to the figures: its status, its (tenant, model), what it embedded,
    and its partitions still waiting."""

    status: JobStatus
    key: tuple[str, str]
    chunks: int
    tokens: int
    waiting: int

    @classmethod
    def of(
        cls,
        status: JobStatus | str,
        tenant: str,
        model: str | None,
        chunks: int,
        tokens: int,
        partitions_total: int,
        partitions_done: int,
    ) -> JobShare:
        status = JobStatus(status)
        waiting = max(0, partitions_total - partitions_done) if status in WAITING else 0
        return cls(status, (tenant, model or ""), chunks or 0, tokens or 0, waiting)

    @classmethod
    def of_record(cls, record: JobRecord) -> JobShare:
        return cls.of(
            record.status,
            record.tenant,
            record.spec.get("model"),
            record.chunks_done,
            record.tokens_done,
            record.partitions_total,
            record.partitions_done,
        )


@dataclass(frozen=True)
class FiguresSnapshot:
    """The figures at one moment: jobs by status (every status present), (tenant, model,
    chunks, tokens) embedded, partitions waiting."""

    by_status: dict[JobStatus, int]
    embedded: list[tuple[str, str, int, int]]
    waiting: int


class JobFigures:
    """Counts and sums over every job, moved on by each job the store writes."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_status: Counter[JobStatus] = Counter()
        self._embedded: dict[tuple[str, str], tuple[int, int]] = {}
        self._unfinished: dict[str, JobShare] = {}
        self._waiting = 0

    def load(
        self,
        by_status: dict[str, int],
        embedded: Iterable[tuple[str, str | None, int | None, int | None]],
        unfinished: Iterable[tuple[str, JobShare]],
    ) -> None:
        """Start from what the file holds: jobs by status, the embedded sums, and the share
        of each unfinished job (by id)."""
        with self._lock:
            self._by_status = Counter({JobStatus(s): n for s, n in by_status.items()})
            self._embedded = {}
            for tenant, model, chunks, tokens in embedded:
                key = (tenant, model or "")
                old = self._embedded.get(key, (0, 0))
                self._embedded[key] = (old[0] + (chunks or 0), old[1] + (tokens or 0))
            self._unfinished = dict(unfinished)
            self._waiting = sum(share.waiting for share in self._unfinished.values())

    def added(self, records: Iterable[JobRecord]) -> None:
        """New jobs, just written."""
        with self._lock:
            for record in records:
                self._apply(record.id, None, JobShare.of_record(record))

    def changed(self, records: Iterable[JobRecord]) -> None:
        """The latest records of jobs already counted. A job not remembered as unfinished has
        ended, and an ended job's figures no longer change: it is left as counted."""
        with self._lock:
            for record in records:
                old = self._unfinished.get(record.id)
                if old is not None:
                    self._apply(record.id, old, JobShare.of_record(record))

    def _apply(self, job_id: str, old: JobShare | None, new: JobShare) -> None:
        if old is not None:
            self._by_status[old.status] -= 1
            self._add(old.key, -old.chunks, -old.tokens)
            self._waiting -= old.waiting
        self._by_status[new.status] += 1
        self._add(new.key, new.chunks, new.tokens)
        self._waiting += new.waiting
        if new.status in UNFINISHED:
            self._unfinished[job_id] = new
        else:
            self._unfinished.pop(job_id, None)

    def _add(self, key: tuple[str, str], chunks: int, tokens: int) -> None:
        old = self._embedded.get(key, (0, 0))
        self._embedded[key] = (old[0] + chunks, old[1] + tokens)

    def snapshot(self) -> FiguresSnapshot:
        """A copy of the figures, taken under their own lock (never the store's)."""
        with self._lock:
            return FiguresSnapshot(
                {status: self._by_status.get(status, 0) for status in JobStatus},
                [
                    (tenant, model, chunks, tokens)
                    for (tenant, model), (chunks, tokens) in self._embedded.items()
                ],
                self._waiting,
            )
