"""The DuckDB store: the only code that opens DuckDB. One file, owned by one process.

Every method takes the store's lock: the API's threads and the runner's thread share one
connection, and each operation (a partition's progress, its usage charge and its skipped
documents) is one transaction. The connection is jobs/store/connection.py, tenants and keys
jobs/store/tenants.py, schedules jobs/store/schedules.py, reports jobs/store/reports.py, row
mapping jobs/store/rows.py and the recording of committed partitions
jobs/store/progress.py; jobs, their partitions and usage are here.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
from collections.abc import Callable, Collection, Iterable, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any

import duckdb

from embedscale.engine.sources.documents import Skipped
from embedscale.engine.sources.partitions import Partition
from embedscale.jobs.errors import NotFoundError, PartitionsNotDoneError
from embedscale.jobs.states import ACTIVE, TERMINAL, UNFINISHED, JobStatus, check_transition
from embedscale.jobs.store.generations import GenerationRows, active_folder
from embedscale.jobs.store.job_cache import JobCache
from embedscale.jobs.store.job_figures import JobFigures
from embedscale.jobs.store.ledger import SKIPPED, LedgerRow, LedgerRows, insert_ledger
from embedscale.jobs.store.progress import (
    ALL_PARTITIONS_DONE,
    PartitionDone,
    insert_skipped,
    record_done,
)
from embedscale.jobs.store.promises import PROMISES_SELECT, Promises, promised_chunks
from embedscale.jobs.store.records import (
    RUNNER_KINDS,
    JobRecord,
    StoredPartition,
    partition_from_json,
    partition_to_json,
)
from embedscale.jobs.store.reports import StoreReports
from embedscale.jobs.store.retention import ENDED_BEFORE, PRUNE_PARTITIONS, PRUNE_SPECS
from embedscale.jobs.store.rows import (
    JOB_COLUMNS,
    JOB_LIST_SELECT,
    JOB_SELECT,
    job_from_row,
    job_values,
    scalar,
    stored,
    transition_changes,
    utcnow,
)
from embedscale.jobs.store.schedules import ScheduleRows
from embedscale.jobs.store.tenants import TenantRows

__all__ = ["Admit", "PartitionDone", "Store", "utcnow"]
log = logging.getLogger(__name__)
LISTED_CAPACITY = 5_000  # ended jobs' listing records (~1 KB each, their texts counted)
# A submission's admission: called with the tenant's chunks charged today and promised to its
# queued and running jobs; raises to refuse the job (Store.insert_job).
Admit = Callable[[int, int], None]


class Store(TenantRows, ScheduleRows, StoreReports, LedgerRows, GenerationRows):
    """Tenants, API keys, jobs, partitions, usage, the job ledger and schedules in one DuckDB
    file."""

    def __init__(self, path: str | Path) -> None:
        super().__init__(path)
        self._cache = JobCache()
        # Ended jobs as listings show them (their inline texts counted), read from the file for
        # a page: an ended job never changes, so a page of old jobs is parsed once, not at
        # each listing (a spec with 10,000 texts is megabytes of JSON for DuckDB to read).
        self._listed = JobCache(LISTED_CAPACITY)
        # What /metrics reports about jobs, moved on by every job written
        # (jobs/store/job_figures.py).
        self.figures = JobFigures()
        self.figures.load(*self.figures_from_file())
        self._inserts: list[_Insert] = []  # jobs waiting for the next group commit
        self._inserts_lock = threading.Lock()
        self._usage: dict[tuple[str, date], tuple[int, int]] = {}  # charged, by tenant and day
        # Chunks promised to queued and running jobs, by tenant: what admission counts beside
        # the usage (jobs/store/promises.py); moved on with every job written, under the lock.
        self._promises = Promises()
        with self._lock:
            self._promises.load(self._con.execute(PROMISES_SELECT).fetchall())

    def _reopened(self) -> None:
        """After an outage (jobs/store/guard.py) memory may be behind the file: a commit whose
        error came late (a checkpoint that failed after the WAL was written) is in it all the
        same. The next reads fill the caches again; the figures are read again now."""
        self._cache = JobCache(self._cache.capacity)
        self._listed = JobCache(LISTED_CAPACITY)
        self._usage.clear()
        self._forget_active()  # table generations (jobs/store/generations.py)
        self.figures.load(*self._figures_from_file())
        self._promises.load(self._con.execute(PROMISES_SELECT).fetchall())

    # --- jobs -----------------------------------------------------------------------------

    def insert_job(
        self, job: JobRecord, partitions: Sequence[Partition], admit: Admit | None = None
    ) -> None:
        """A new job and its planned partitions, in one transaction. `admit(used, promised)`,
        given, decides in that transaction (under the store's lock) whether the job may be
        inserted: it is called with the tenant's chunks charged today and those promised to
        its queued and running jobs (the jobs of the same group commit before it included),
        and raises (QuotaExceededError) to refuse the job, which then is not written.

        Group commit: a DuckDB commit costs ~3 ms here whatever it holds, and submissions
        arrive from many request threads at once. Each caller queues its job; whoever holds
        the store's lock next writes every queued job in one transaction, so a burst of N
        submissions costs about one commit instead of N."""
        request = _Insert(job, partitions, admit)
        with self._inserts_lock:
            self._inserts.append(request)
        with self._lock:
            if not request.done:
                with self._inserts_lock:
                    batch, self._inserts = self._inserts, []
                self._insert_jobs(batch)
        if request.error is not None:
            raise request.error

    def _insert_jobs(self, batch: list[_Insert]) -> None:
        batch = self._admitted(batch)
        if not batch:
            return
        now = utcnow()
        try:
            with self._tx() as con:
                con.executemany(
                    f"INSERT INTO jobs ({', '.join(JOB_COLUMNS)}) VALUES "
                    f"({', '.join('?' for _ in JOB_COLUMNS)})",
                    [job_values(r.job) for r in batch],
                )
                rows = [
                    [r.job.id, p.index, partition_to_json(p), p.size_bytes, now]
                    for r in batch
                    for p in r.partitions
                ]
                if rows:
                    con.executemany(
                        "INSERT INTO job_partitions (job_id, partition, items, size_bytes, "
                        "status, updated_at) VALUES (?, ?, ?, ?, 'pending', ?)",
                        rows,
                    )
        except Exception as exc:  # nothing of the batch was written: each caller is told
            for r in batch:
                r.error, r.done = exc, True
            return
        for r in batch:
            self._cache.put(r.job)
            r.done = True
        self._promises.follow(r.job for r in batch)
        self._figures_follow(self.figures.added, [r.job for r in batch])

    def _admitted(self, batch: list[_Insert]) -> list[_Insert]:
        """The jobs of `batch` their admission lets in, in order; each refused one is done,
        with its error. The caller holds the lock, so no other insert or charge comes in
        between the check and the write."""
        admitted: list[_Insert] = []
        ahead: dict[str, int] = {}  # chunks promised by jobs admitted earlier in this batch
        for r in batch:
            tenant = r.job.tenant
            if r.admit is not None:
                try:
                    r.admit(self.usage(tenant)[0], self._promises.of(tenant) + ahead.get(tenant, 0))
                except Exception as exc:
                    r.error, r.done = exc, True
                    continue
            ahead[tenant] = ahead.get(tenant, 0) + promised_chunks(
                r.job.status, r.job.estimated_chunks, r.job.chunks_done
            )
            admitted.append(r)
        return admitted

    def promised(self, tenant: str) -> int:
        """Chunks promised to the tenant's queued and running jobs: their estimates less what
        they have charged (jobs/store/promises.py)."""
        with self._lock:
            return self._promises.of(tenant)

    def get_job(self, job_id: str, tenant: str | None = None) -> JobRecord:
        """A job by id; with `tenant`, only that tenant's (others' jobs are not found).
        Recently written jobs come from memory (JobCache), without a DuckDB round trip."""
        record = self._cache.get(job_id)
        if record is None:
            with self._lock:
                record = self._get_job(self._con, job_id)
                self._cache.put(record)  # under the lock: no write can come in between
        if tenant is not None and record.tenant != tenant:
            raise NotFoundError(f"no job '{job_id}'")
        return record

    @staticmethod
    def _get_job(
        con: duckdb.DuckDBPyConnection, job_id: str, tenant: str | None = None
    ) -> JobRecord:
        row = con.execute(
            f"{JOB_SELECT} WHERE id = ?" + (" AND tenant = ?" if tenant is not None else ""),
            [job_id] + ([tenant] if tenant is not None else []),
        ).fetchone()
        if row is None:
            raise NotFoundError(f"no job '{job_id}'")
        return job_from_row(row)

    def list_jobs(
        self,
        tenant: str | None = None,
        status: str | None = None,
        table: str | None = None,
        limit: int = 50,
        before: tuple[datetime, str] | None = None,
        schedule_id: str | None = None,
        kind: str | None = None,
    ) -> list[JobRecord]:
        """Jobs newest first, for listings; `before` is the (created_at, id) of the last job
        of a page; `schedule_id`: only the runs of that schedule; `kind`: only jobs of that
        kind (embed, maintenance). A record read for a listing may carry its spec as shown
        (inline texts counted: jobs.store.records.shown_spec)."""
        where: list[str] = ["1=1"]
        args: list[Any] = []
        for column, value in (
            ("tenant", tenant),
            ("status", status),
            ("table_name", table),
            ("schedule_id", schedule_id),
            ("kind", kind),
        ):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(before)
        # The page's ids first, from a few narrow columns: the lock is held for as little as
        # possible and no spec is read for the sort. The records then come from memory where
        # JobCache has them, and the rest in one read of their listing columns (a job's
        # inline texts counted in DuckDB, never carried into Python: see JOB_LIST_SELECT).
        with self._lock:
            ids = [
                row[0]
                for row in self._con.execute(
                    f"SELECT id FROM jobs WHERE {' AND '.join(where)} "
                    "ORDER BY created_at DESC, id DESC LIMIT ?",
                    args + [limit],
                ).fetchall()
            ]
        found = {
            job_id: record
            for job_id in ids
            if (record := self._cache.get(job_id) or self._listed.get(job_id)) is not None
        }
        missing = [job_id for job_id in ids if job_id not in found]
        if missing:
            with self._lock:
                rows = self._con.execute(
                    f"{JOB_LIST_SELECT} WHERE id IN ({', '.join('?' for _ in missing)})", missing
                ).fetchall()
                for record in map(job_from_row, rows):
                    found[record.id] = record
                    if record.status in TERMINAL:  # under the lock: no write in between
                        self._listed.put(record)
        return [found[job_id] for job_id in ids if job_id in found]

    def unfinished_jobs(self, kind: str | Sequence[str] = RUNNER_KINDS) -> list[JobRecord]:
        """Jobs of `kind` (one or several) not yet ended, oldest first: what the runner
        resumes (embed and migration jobs) or ends as interrupted (maintenance runs a stopped
        process left)."""
        kinds = [kind] if isinstance(kind, str) else list(kind)
        with self._lock:
            rows = self._con.execute(
                f"{JOB_SELECT} WHERE kind IN ({', '.join('?' for _ in kinds)}) AND status IN "
                f"({', '.join('?' for _ in UNFINISHED)}) ORDER BY created_at",
                [*kinds, *(str(s) for s in UNFINISHED)],
            ).fetchall()
        return [job_from_row(r) for r in rows]

    def active_job_counts(self) -> dict[str, int]:
        """Jobs holding a concurrency slot (the ACTIVE statuses), by tenant. Maintenance
        runs hold none: they are the service's, not the tenant's (a migration job is the
        tenant's: it holds one)."""
        with self._lock:
            return dict(
                self._con.execute(
                    "SELECT tenant, count(*) FROM jobs WHERE kind IN ('embed', 'migration') AND "
                    f"status IN "
                    f"({', '.join('?' for _ in ACTIVE)}) GROUP BY tenant",
                    [str(s) for s in ACTIVE],
                ).fetchall()
            )

    def set_status(self, job_id: str, new: JobStatus, **fields: Any) -> JobRecord:
        """Move a job to `new` (checked against the transition table) and set other fields."""
        with self._lock:
            with self._tx() as con:
                record = self._move(con, self._latest(con, job_id), new, **fields)
            self._written([record])  # after the commit, before the lock goes
            return record

    def _written(self, records: Collection[JobRecord]) -> None:
        """Jobs just committed: their latest records kept in JobCache, and the figures moved
        on (the caller holds the lock, so both follow the file's order of commits)."""
        for record in records:
            self._cache.put(record)
            self._listed.drop(record.id)  # an ended job is never written again; if it were
        self._promises.follow(records)
        self._figures_follow(self.figures.changed, records)

    @staticmethod
    def _figures_follow(
        move: Callable[[Iterable[JobRecord]], None], records: Iterable[JobRecord]
    ) -> None:
        """Move the figures of /metrics on: a report, which must never fail a write that is
        committed already."""
        try:
            move(records)
        except Exception:
            log.exception("the job figures of /metrics could not follow a write")

    def _latest(self, con: duckdb.DuckDBPyConnection, job_id: str) -> JobRecord:
        """A job's latest record inside a transaction: the cache holds the file's latest
        record of every job written lately (all writes go through it under the lock)."""
        return self._cache.get(job_id) or self._get_job(con, job_id)

    def start_jobs(self, job_ids: Sequence[str]) -> list[JobRecord]:
        """Move the queued jobs among `job_ids` to running, in one transaction; returns their
        records (a job cancelled while it waited is left as it is and not returned)."""
        started = []
        with self._lock:
            with self._tx() as con:
                for job_id in job_ids:
                    job = self._latest(con, job_id)
                    if job.status == JobStatus.QUEUED:
                        pinned = self._pinned_generation(con, job)
                        started.append(self._move(con, job, JobStatus.RUNNING, **pinned))
            self._written(started)
        return started

    @staticmethod
    def _pinned_generation(con: duckdb.DuckDBPyConnection, job: JobRecord) -> dict[str, Any]:
        """The details that record the generation a job of the runner writes, the active one,
        for a job that does not name one yet (a migration job names the one it builds). Set
        in the transaction that starts it, which a switch's check of running jobs also reads
        (Store.switch_generation): a switch comes before the job starts or after it ends,
        never while it writes. Its resume, undo and ledger reach that generation."""
        if job.kind not in RUNNER_KINDS or "physical" in (job.details or {}):
            return {}
        return {"details": {**(job.details or {}), "physical": active_folder(con, job)}}

    def pin_generation(self, job_id: str) -> JobRecord:
        """Record the active generation in the details of a job started before jobs recorded
        theirs (an embedscale of before the generations); a job that names one already is
        returned as it is. A running job kept the table's active generation all along: a
        switch waits for it."""
        with self._lock:
            with self._tx() as con:
                job = self._latest(con, job_id)
                pinned = self._pinned_generation(con, job)
                if not pinned:
                    return job
                con.execute(
                    "UPDATE jobs SET details = ? WHERE id = ?",
                    [stored(pinned)["details"], job_id],
                )
                record = dataclasses.replace(job, **pinned)
            self._written([record])
            return record

    def merge_details(self, job_id: str, entries: dict[str, Any]) -> JobRecord:
        """Add `entries` to a job's details (replacing those of the same names), in one
        transaction with a read of the latest ones, so no other entry is lost."""
        with self._lock:
            with self._tx() as con:
                job = self._latest(con, job_id)
                details = {**(job.details or {}), **entries}
                con.execute(
                    "UPDATE jobs SET details = ? WHERE id = ?",
                    [stored({"details": details})["details"], job_id],
                )
                record = dataclasses.replace(job, details=details)
            self._written([record])
            return record

    def finish(self, job_id: str, new: JobStatus, **fields: Any) -> JobRecord | None:
        """End a running job as `new`, in one transaction with the check that no cancel came
        first: None (and nothing written) when the job is cancelling or already ended."""
        with self._lock:
            with self._tx() as con:
                job = self._latest(con, job_id)
                if job.status != JobStatus.RUNNING:
                    return None
                # Success is the store's word: written only if every partition is done.
                condition = (
                    ALL_PARTITIONS_DONE.format(job="jobs.id")
                    if new == JobStatus.SUCCEEDED
                    else None
                )
                record = self._transition(con, job, new, condition, **fields)
                if record is None:
                    raise PartitionsNotDoneError(job_id)
            self._written([record])
            return record

    @classmethod
    def _move(
        cls, con: duckdb.DuckDBPyConnection, job: JobRecord, new: JobStatus, **fields: Any
    ) -> JobRecord:
        """`_transition` without a condition: the job was just read under the lock, so its
        row is there to move."""
        record = cls._transition(con, job, new, **fields)
        if record is None:
            raise RuntimeError(f"job {job.id} left the store while its lock was held")
        return record

    @staticmethod
    def _transition(
        con: duckdb.DuckDBPyConnection,
        job: JobRecord,
        new: JobStatus,
        condition: str | None = None,
        **fields: Any,
    ) -> JobRecord | None:
        """Write `job`'s move to `new`; with `condition` (SQL on `jobs`) only where it holds
        (None when it does not)."""
        check_transition(job.id, job.status, new, job.history)
        changes = transition_changes(job, new, utcnow(), **fields)
        values = stored(changes)
        where = f"id = ? AND {condition}" if condition else "id = ?"
        moved = con.execute(
            f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in values)} WHERE {where} RETURNING id",
            [*values.values(), job.id],
        ).fetchall()
        return dataclasses.replace(job, **changes) if moved else None

    def drop_inline_texts(self, before: datetime, since: datetime | None = None) -> set[str]:
        """Remove the inline texts (and their metadata) of the jobs that ended before `before`
        (and, given `since`, not before `since`), keeping each document's id: the ids of the
        jobs changed (jobs/store/retention.py). One transaction."""
        ended = ENDED_BEFORE.format(since="AND finished_at >= ?" if since is not None else "")
        args = [before] + ([since] if since is not None else [])
        with self._lock:
            with self._tx() as con:
                pruned = {
                    row[0]
                    for row in con.execute(PRUNE_PARTITIONS.format(ended=ended), args).fetchall()
                }
                pruned |= {
                    row[0] for row in con.execute(PRUNE_SPECS.format(ended=ended), args).fetchall()
                }
            for job_id in pruned:  # after the write, under the lock
                self._cache.drop(job_id)
                self._listed.drop(job_id)
        return pruned

    # --- partitions, progress and usage ---------------------------------------------------

    def partitions(self, job_id: str) -> list[StoredPartition]:
        with self._lock:
            rows = self._con.execute(
                "SELECT partition, items, status, attempts, chunks, error FROM job_partitions "
                "WHERE job_id = ? ORDER BY partition",
                [job_id],
            ).fetchall()
        return [
            StoredPartition(partition_from_json(p, items), status, attempts, chunks, error)
            for p, items, status, attempts, chunks, error in rows
        ]

    def partitions_left(self, job_id: str) -> int:
        """How many planned partitions of a job the store does not show done."""
        with self._lock:
            return scalar(
                self._con.execute(
                    "SELECT count(*) FROM job_partitions WHERE job_id = ? AND status <> 'done'",
                    [job_id],
                )
            )

    def record_attempt_failed(
        self, job_id: str, partition: int, attempts: int, error: str, final: bool
    ) -> None:
        with self._tx() as con:
            con.execute(
                "UPDATE job_partitions SET attempts = ?, error = ?, status = ?, "
                "updated_at = ? WHERE job_id = ? AND partition = ?",
                [attempts, error, "failed" if final else "pending", utcnow(), job_id, partition],
            )

    def record_partition_done(
        self,
        job_id: str,
        tenant: str,
        partition: int,
        counts: dict[str, int],
        skipped: Sequence[Skipped] = (),
        day: date | None = None,
    ) -> JobRecord:
        """Record one committed partition (see record_partitions_done)."""
        done = PartitionDone(job_id, tenant, partition, counts, tuple(skipped))
        return self.record_partitions_done([done], day=day)[job_id]

    def record_partitions_done(
        self,
        done: Sequence[PartitionDone],
        succeeded: Collection[str] = (),
        day: date | None = None,
    ) -> dict[str, JobRecord]:
        """Mark committed partitions done, add their counts to their jobs, charge their chunks
        to their tenants' usage for `day` (UTC today), and move the jobs in `succeeded` (all
        their partitions done) to succeeded: all in one transaction. A partition already done
        is left alone, so recording twice never charges twice. Returns the jobs' records."""
        day = day or utcnow().date()
        now = utcnow()
        with self._lock:
            with self._tx() as con:
                records, charged = record_done(con, done, succeeded, day, now)
            self._written(records.values())
            for tenant, (chunks, tokens) in charged.items():  # after the commit, under the lock
                if (tenant, day) in self._usage:
                    old_chunks, old_tokens = self._usage[(tenant, day)]
                    self._usage[(tenant, day)] = (old_chunks + chunks, old_tokens + tokens)
            return records

    def add_skipped(self, job_id: str, skipped: Sequence[Skipped]) -> None:
        """Skipped documents found while planning (before any partition ran). Their sources
        go to the job ledger in full (job_skipped keeps MAX_SKIPPED_STORED): a sync keeps the
        documents of every source it could not read."""
        if not skipped:
            return
        with self._lock:
            with self._tx() as con:
                insert_skipped(con, job_id, None, skipped)
                insert_ledger(
                    con, [LedgerRow(job_id, SKIPPED, None, None, seen=[s.source for s in skipped])]
                )
                con.execute(
                    "UPDATE jobs SET skipped_count = skipped_count + ? WHERE id = ?",
                    [len(skipped), job_id],
                )
            self._cache.drop(job_id)

    def skipped(self, job_id: str) -> list[Skipped]:
        with self._lock:
            rows = self._con.execute(
                "SELECT source, reason FROM job_skipped WHERE job_id = ? "
                "ORDER BY partition NULLS FIRST, source",
                [job_id],
            ).fetchall()
        return [Skipped(*r) for r in rows]

    def usage(self, tenant: str, day: date | None = None) -> tuple[int, int]:
        """(chunks, tokens) charged to `tenant` on `day` (UTC today). Asked on every
        submission and commit: kept in memory once read, and moved on by every charge."""
        key = (tenant, day or utcnow().date())
        found = self._usage.get(key)
        if found is not None:
            return found
        with self._lock:
            row = self._con.execute(
                "SELECT chunks, tokens FROM usage WHERE tenant = ? AND day = ?", list(key)
            ).fetchone()
            found = self._usage[key] = (row[0], row[1]) if row else (0, 0)
        return found

    def charge_usage(
        self,
        tenant: str,
        chunks: int,
        tokens: int,
        limit: int | None = None,
        day: date | None = None,
    ) -> tuple[int, int] | None:
        """Add `chunks` and `tokens` (negative: a refund) to the tenant's usage of `day` (UTC
        today), unless its chunks, with those promised to its queued and running jobs
        (jobs/store/promises.py), would then pass `limit` (None: no limit): the new (chunks,
        tokens), or None when nothing was charged. The check and the charge are one
        transaction under the store's lock, so requests charged at once never overshoot, nor
        take what a job admitted before them was promised."""
        key = (tenant, day or utcnow().date())
        with self._lock:
            with self._tx() as con:
                row = con.execute(
                    "SELECT chunks, tokens FROM usage WHERE tenant = ? AND day = ?", list(key)
                ).fetchone()
                used = (row[0], row[1]) if row else (0, 0)
                promised = self._promises.of(tenant)
                if limit is not None and chunks > 0 and used[0] + promised + chunks > limit:
                    return None
                new = (max(0, used[0] + chunks), max(0, used[1] + tokens))
                con.execute(
                    "INSERT INTO usage (tenant, day, chunks, tokens) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant, day) DO UPDATE SET chunks = excluded.chunks, "
                    "tokens = excluded.tokens",
                    [*key, *new],
                )
            self._usage[key] = new  # after the commit, under the lock
            return new


@dataclass(slots=True)
class _Insert:
    """A job waiting to be written by the next group commit."""

    job: JobRecord
    partitions: Sequence[Partition]
    admit: Admit | None = None
    done: bool = False
    error: Exception | None = None
