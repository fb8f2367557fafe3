"""The DuckDB store: the only code that opens DuckDB. One file, owned by one process.

Every method takes the store's lock: the API's threads and the runner's thread share one
connection, and each operation (a partition's progress, its usage charge and its skipped
documents) is one transaction.
"""
from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import duckdb

from engine.documents import Skipped
from engine.partitions import Partition
from jobs.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    StoreDamagedError,
    StoreLockedError,
    StoreVersionError,
)
from jobs.job_cache import JobCache
from jobs.migrations import LATEST_VERSION, MIGRATIONS
from jobs.records import (
    JobRecord,
    StoredPartition,
    TenantRecord,
    partition_from_json,
    partition_to_json,
)
from jobs.states import ACTIVE, UNFINISHED, JobStatus, check_transition

MAX_SKIPPED_STORED = 1000  # per job; the count is kept in full
_JOB_COLUMNS = [
    "id", "tenant", "spec", "status", "priority", "table_name", "history", "created_at",
    "updated_at", "started_at", "finished_at", "estimated_chunks", "partitions_total",
    "partitions_done", "documents_done", "documents_unchanged", "chunks_done", "tokens_done",
    "skipped_count", "error", "error_reason", "dashboard_link",
]
# Rows are read by column name (SELECT of these, in this order), never by position of `*`: a
# migration that adds a column, or a file whose columns lie in another order, reads the same.
_TENANT_COLUMNS = [f.name for f in dataclasses.fields(TenantRecord)]
_TENANT_SETTABLE = ("tier", "daily_chunks", "max_concurrent_jobs")
# Jobs whose pending partitions are work waiting (a cancelling job's never run).
_WAITING = (JobStatus.QUEUED, JobStatus.RUNNING)


def utcnow() -> datetime:
    return datetime.now(UTC)


class Store:
    """Tenants, API keys, jobs, partitions, usage and schedules in one DuckDB file."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "could not set lock" in str(exc).lower():
                raise StoreLockedError(
                    f"{self.path} is in use by another embedscale process; stop it or use its "
                    "API (one process owns a data directory)") from None
            raise self._damaged(exc) from None
        except duckdb.Error as exc:  # e.g. "Corrupt database file: computed checksum ..."
            raise self._damaged(exc) from None
        self._lock = threading.RLock()
        self._cache = JobCache()
        self._inserts: list[_Insert] = []  # jobs waiting for the next group commit
        self._inserts_lock = threading.Lock()
        self._usage: dict[tuple[str, date], tuple[int, int]] = {}  # charged, by tenant and day
        try:
            self._check_readable()
        except BaseException as exc:
            self._con.close()
            if isinstance(exc, duckdb.Error):
                raise self._damaged(exc) from None
            raise
        self._migrate()

    def _check_readable(self) -> None:
        """Read every stored row once. A truncated file opens and even answers `max(version)`
        from its statistics; the missing blocks only fail the first query that reads them."""
        con = self._con
        # (The file's size against PRAGMA database_size is no test: a healthy file reopened
        # after a clean close can be shorter than its block count says.)
        tables = con.execute("SELECT table_name FROM duckdb_tables() "
                             "WHERE database_name = current_database()").fetchall()
        for (table,) in tables:
            con.execute(f'SELECT count(hash(t)) FROM "{table}" AS t').fetchone()

    def _damaged(self, cause: object) -> StoreDamagedError:
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return StoreDamagedError(
            f"{self.path} is damaged and cannot be opened ({reason}): restore it from a "
            f"backup, or move it aside (mv {self.path} {self.path}.damaged) to start with an "
            "empty control plane (tenants, keys and job history are then lost)")

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
            except BaseException:
                self._con.execute("ROLLBACK")
                raise
            self._con.execute("COMMIT")

    # --- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = con.execute("SELECT max(version) FROM schema_version").fetchone()
            version = row[0] or 0
            if version > LATEST_VERSION:
                raise StoreVersionError(
                    f"{self.path} has schema version {version}, newer than this embedscale's "
                    f"{LATEST_VERSION}: upgrade embedscale to open it")
            for number in range(version + 1, LATEST_VERSION + 1):
                con.execute(MIGRATIONS[number - 1])
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])

    def schema_version(self) -> int:
        with self._lock:
            return self._con.execute("SELECT max(version) FROM schema_version").fetchone()[0]

    # --- tenants and keys -----------------------------------------------------------------

    def create_tenant(self, name: str, tier: str) -> TenantRecord:
        with self._tx() as con:
            if con.execute("SELECT 1 FROM tenants WHERE name = ?", [name]).fetchone():
                raise ConflictError(f"tenant '{name}' already exists")
            con.execute("INSERT INTO tenants (name, tier, created_at) VALUES (?, ?, ?)",
                        [name, tier, utcnow()])
        return self.get_tenant(name)

    def get_tenant(self, name: str) -> TenantRecord:
        with self._lock:
            row = self._con.execute(f"SELECT {', '.join(_TENANT_COLUMNS)} FROM tenants "
                                    "WHERE name = ?", [name]).fetchone()
        if row is None:
            raise NotFoundError(f"no tenant '{name}'")
        return _tenant_from_row(row)

    def list_tenants(self) -> list[TenantRecord]:
        with self._lock:
            rows = self._con.execute(f"SELECT {', '.join(_TENANT_COLUMNS)} FROM tenants "
                                     "ORDER BY name").fetchall()
        return [_tenant_from_row(r) for r in rows]

    def update_tenant(self, name: str, **values: Any) -> TenantRecord:
        """Set `tier`, `daily_chunks` or `max_concurrent_jobs` of a tenant, in one statement
        that also reads the row back (NotFoundError if there is no such tenant)."""
        unknown = sorted(set(values) - set(_TENANT_SETTABLE))
        if unknown:  # the column names go into the SQL text: only the known ones may
            raise InvalidFieldError(unknown[0], f"cannot set tenant field {unknown[0]!r}: "
                                                f"use {', '.join(_TENANT_SETTABLE)}")
        if not values:
            return self.get_tenant(name)
        with self._tx() as con:
            row = con.execute(
                f"UPDATE tenants SET {', '.join(f'{c} = ?' for c in values)} WHERE name = ? "
                f"RETURNING {', '.join(_TENANT_COLUMNS)}", [*values.values(), name]).fetchone()
        if row is None:
            raise NotFoundError(f"no tenant '{name}'")
        return _tenant_from_row(row)

    def add_api_key(self, tenant: str, key_hash: str, prefix: str) -> None:
        with self._tx() as con:
            con.execute("INSERT INTO api_keys (key_hash, tenant, prefix, created_at) "
                        "VALUES (?, ?, ?, ?)",
                        [key_hash, tenant, prefix, utcnow()])

    def revoke_api_keys(self, tenant: str) -> int:
        with self._tx() as con:
            revoked = con.execute(
                "UPDATE api_keys SET revoked_at = ? WHERE tenant = ? AND revoked_at IS NULL "
                "RETURNING key_hash", [utcnow(), tenant]).fetchall()
        return len(revoked)

    def tenant_for_key_hash(self, key_hash: str) -> str | None:
        with self._lock:
            row = self._con.execute(
                "SELECT tenant FROM api_keys WHERE key_hash = ? AND revoked_at IS NULL",
                [key_hash]).fetchone()
        return row[0] if row else None

    # --- jobs -----------------------------------------------------------------------------

    def insert_job(self, job: JobRecord, partitions: Sequence[Partition]) -> None:
        """A new job and its planned partitions, in one transaction.

        Group commit: a DuckDB commit costs ~3 ms here whatever it holds, and submissions
        arrive from many request threads at once. Each caller queues its job; whoever holds
        the store's lock next writes every queued job in one transaction, so a burst of N
        submissions costs about one commit instead of N."""
        request = _Insert(job, partitions)
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
        now = utcnow()
        try:
            with self._tx() as con:
                con.executemany(f"INSERT INTO jobs ({', '.join(_JOB_COLUMNS)}) VALUES "
                                f"({', '.join('?' for _ in _JOB_COLUMNS)})",
                                [_job_values(r.job) for r in batch])
                rows = [[r.job.id, p.index, partition_to_json(p), p.size_bytes, now]
                        for r in batch for p in r.partitions]
                if rows:
                    con.executemany(
                        "INSERT INTO job_partitions (job_id, partition, items, size_bytes, "
                        "status, updated_at) VALUES (?, ?, ?, ?, 'pending', ?)", rows)
        except Exception as exc:  # nothing of the batch was written: each caller is told
            for r in batch:
                r.error, r.done = exc, True
            return
        for r in batch:
            self._cache.put(r.job)
            r.done = True

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
    def _get_job(con: duckdb.DuckDBPyConnection, job_id: str,
                 tenant: str | None = None) -> JobRecord:
        row = con.execute(
            f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE id = ?"
            + (" AND tenant = ?" if tenant is not None else ""),
            [job_id] + ([tenant] if tenant is not None else [])).fetchone()
        if row is None:
            raise NotFoundError(f"no job '{job_id}'")
        return _job_from_row(row)

    def list_jobs(self, tenant: str | None = None, status: str | None = None,
                  table: str | None = None, limit: int = 50,
                  before: tuple[datetime, str] | None = None) -> list[JobRecord]:
        """Jobs newest first; `before` is the (created_at, id) of the last job of a page."""
        where, args = ["1=1"], []
        for column, value in (("tenant", tenant), ("status", status), ("table_name", table)):
            if value is not None:
                where.append(f"{column} = ?")
                args.append(value)
        if before is not None:
            where.append("(created_at, id) < (?, ?)")
            args.extend(before)
        with self._lock:
            rows = self._con.execute(
                f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE {' AND '.join(where)} "
                "ORDER BY created_at DESC, id DESC LIMIT ?", args + [limit]).fetchall()
        return [_job_from_row(r) for r in rows]

    def unfinished_jobs(self) -> list[JobRecord]:
        with self._lock:
            rows = self._con.execute(
                f"SELECT {', '.join(_JOB_COLUMNS)} FROM jobs WHERE status IN "
                f"({', '.join('?' for _ in UNFINISHED)}) ORDER BY created_at",
                [str(s) for s in UNFINISHED]).fetchall()
        return [_job_from_row(r) for r in rows]

    def active_job_counts(self) -> dict[str, int]:
        """Jobs holding a concurrency slot (the ACTIVE statuses), by tenant."""
        with self._lock:
            return dict(self._con.execute(
                f"SELECT tenant, count(*) FROM jobs WHERE status IN "
                f"({', '.join('?' for _ in ACTIVE)}) GROUP BY tenant",
                [str(s) for s in ACTIVE]).fetchall())

    def set_status(self, job_id: str, new: JobStatus, **fields: Any) -> JobRecord:
        """Move a job to `new` (checked against the transition table) and set other fields."""
        with self._lock:
            with self._tx() as con:
                record = self._transition(con, self._latest(con, job_id), new, **fields)
            self._cache.put(record)  # after the commit, before the lock goes
            return record

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
                        started.append(self._transition(con, job, JobStatus.RUNNING))
            for record in started:
                self._cache.put(record)
        return started

    def finish(self, job_id: str, new: JobStatus, **fields: Any) -> JobRecord | None:
        """End a running job as `new`, in one transaction with the check that no cancel came
        first: None (and nothing written) when the job is cancelling or already ended."""
        with self._lock:
            with self._tx() as con:
                job = self._latest(con, job_id)
                if job.status != JobStatus.RUNNING:
                    return None
                record = self._transition(con, job, new, **fields)
            self._cache.put(record)
            return record

    @staticmethod
    def _transition(con: duckdb.DuckDBPyConnection, job: JobRecord, new: JobStatus,
                    **fields: Any) -> JobRecord:
        check_transition(job.id, job.status, new, job.history)
        now = utcnow()
        changes: dict[str, Any] = dict(fields, status=JobStatus(new), updated_at=now,
                                       history=job.history + [(str(new), now.isoformat())])
        if new == JobStatus.RUNNING and job.started_at is None:
            changes["started_at"] = now
        if new in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
            changes["finished_at"] = now
        stored = {k: (json.dumps(v) if k == "history" else str(v) if k == "status" else v)
                  for k, v in changes.items()}
        con.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in stored)} WHERE id = ?",
                    [*stored.values(), job.id])
        return dataclasses.replace(job, **changes)

    # --- partitions, progress and usage ---------------------------------------------------

    def partitions(self, job_id: str) -> list[StoredPartition]:
        with self._lock:
            rows = self._con.execute(
                "SELECT partition, items, status, attempts, chunks, error FROM job_partitions "
                "WHERE job_id = ? ORDER BY partition", [job_id]).fetchall()
        return [StoredPartition(partition_from_json(p, items), status, attempts, chunks, error)
                for p, items, status, attempts, chunks, error in rows]

    def record_attempt_failed(self, job_id: str, partition: int, attempts: int,
                              error: str, final: bool) -> None:
        with self._tx() as con:
            con.execute("UPDATE job_partitions SET attempts = ?, error = ?, status = ?, "
                        "updated_at = ? WHERE job_id = ? AND partition = ?",
                        [attempts, error, "failed" if final else "pending", utcnow(), job_id,
                         partition])

    def record_partition_done(self, job_id: str, tenant: str, partition: int,
                              counts: dict[str, int], skipped: Sequence[Skipped] = (),
                              day: date | None = None) -> JobRecord:
        """Record one committed partition (see record_partitions_done)."""
        done = PartitionDone(job_id, tenant, partition, counts, tuple(skipped))
        return self.record_partitions_done([done], day=day)[job_id]

    def record_partitions_done(self, done: Sequence[PartitionDone],
                               succeeded: Collection[str] = (),
                               day: date | None = None) -> dict[str, JobRecord]:
        """Mark committed partitions done, add their counts to their jobs, charge their chunks
        to their tenants' usage for `day` (UTC today), and move the jobs in `succeeded` (all
        their partitions done) to succeeded: all in one transaction. A partition already done
        is left alone, so recording twice never charges twice. Returns the jobs' records."""
        day = day or utcnow().date()
        now = utcnow()
        charged: dict[str, tuple[int, int]] = {}
        with self._lock:
            records = self._record_partitions_done(done, succeeded, day, now, charged)
            for record in records.values():
                self._cache.put(record)
            for tenant, (chunks, tokens) in charged.items():  # after the commit, under the lock
                if (tenant, day) in self._usage:
                    old_chunks, old_tokens = self._usage[(tenant, day)]
                    self._usage[(tenant, day)] = (old_chunks + chunks, old_tokens + tokens)
            return records

    def _record_partitions_done(self, done: Sequence[PartitionDone], succeeded: Collection[str],
                                day: date, now: datetime,
                                charged: dict[str, tuple[int, int]]) -> dict[str, JobRecord]:
        with self._tx() as con:
            for d in done:
                updated = con.execute(
                    "UPDATE job_partitions SET status = 'done', documents = ?, chunks = ?, "
                    "tokens = ?, error = NULL, updated_at = ? WHERE job_id = ? AND "
                    "partition = ? AND status != 'done' RETURNING partition",
                    [d.counts["documents"], d.counts["chunks"], d.counts["tokens"], now,
                     d.job_id, d.partition]).fetchall()
                if not updated:
                    continue
                con.execute(
                    "UPDATE jobs SET partitions_done = partitions_done + 1, "
                    "documents_done = documents_done + ?, documents_unchanged = "
                    "documents_unchanged + ?, chunks_done = chunks_done + ?, tokens_done = "
                    "tokens_done + ?, skipped_count = skipped_count + ?, updated_at = ? "
                    "WHERE id = ?",
                    [d.counts["documents"], d.counts.get("unchanged", 0), d.counts["chunks"],
                     d.counts["tokens"], d.counts.get("skipped", len(d.skipped)), now, d.job_id])
                con.execute(
                    "INSERT INTO usage (tenant, day, chunks, tokens) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT (tenant, day) DO UPDATE "
                    "SET chunks = usage.chunks + excluded.chunks, "
                    "tokens = usage.tokens + excluded.tokens",
                    [d.tenant, day, d.counts["chunks"], d.counts["tokens"]])
                chunks, tokens = charged.get(d.tenant, (0, 0))
                charged[d.tenant] = (chunks + d.counts["chunks"], tokens + d.counts["tokens"])
                if d.skipped:
                    self._insert_skipped(con, d.job_id, d.partition, d.skipped)
            records = {job_id: self._get_job(con, job_id) for job_id in
                       {d.job_id for d in done} | set(succeeded)}
            for job_id in succeeded:
                if records[job_id].status == JobStatus.RUNNING:  # a cancel may have come first
                    records[job_id] = self._transition(con, records[job_id],
                                                       JobStatus.SUCCEEDED)
        return records

    @staticmethod
    def _insert_skipped(con: duckdb.DuckDBPyConnection, job_id: str, partition: int | None,
                        skipped: Sequence[Skipped]) -> None:
        stored = con.execute("SELECT count(*) FROM job_skipped WHERE job_id = ?",
                             [job_id]).fetchone()[0]
        room = max(0, MAX_SKIPPED_STORED - stored)
        if skipped[:room]:
            con.executemany("INSERT INTO job_skipped (job_id, partition, source, reason) "
                            "VALUES (?, ?, ?, ?)",
                            [[job_id, partition, s.source, s.reason] for s in skipped[:room]])

    def add_skipped(self, job_id: str, skipped: Sequence[Skipped]) -> None:
        """Skipped documents found while planning (before any partition ran)."""
        if not skipped:
            return
        with self._lock:
            with self._tx() as con:
                self._insert_skipped(con, job_id, None, skipped)
                con.execute("UPDATE jobs SET skipped_count = skipped_count + ? WHERE id = ?",
                            [len(skipped), job_id])
            self._cache.drop(job_id)

    def skipped(self, job_id: str) -> list[Skipped]:
        with self._lock:
            rows = self._con.execute("SELECT source, reason FROM job_skipped WHERE job_id = ? "
                                     "ORDER BY partition NULLS FIRST, source", [job_id]).fetchall()
        return [Skipped(*r) for r in rows]

    def ping(self) -> None:
        """Raise if the database cannot answer."""
        with self._lock:
            self._con.execute("SELECT 1").fetchone()

    def job_counts(self) -> dict[str, int]:
        """Jobs by status."""
        with self._lock:
            return dict(self._con.execute("SELECT status, count(*) FROM jobs GROUP BY status")
                        .fetchall())

    def embedded_totals(self) -> list[tuple[str, str, int, int]]:
        """(tenant, model, chunks, tokens) embedded by every job ever, for counters."""
        with self._lock:
            return self._con.execute(
                "SELECT tenant, json_extract_string(spec, '$.model'), sum(chunks_done), "
                "sum(tokens_done) FROM jobs GROUP BY ALL").fetchall()

    def pending_partitions(self) -> int:
        """Partitions of queued and running jobs not yet done: the work waiting."""
        with self._lock:
            return self._con.execute(
                "SELECT count(*) FROM job_partitions p JOIN jobs j ON p.job_id = j.id "
                f"WHERE j.status IN ({', '.join('?' for _ in _WAITING)}) AND "
                "p.status != 'done'", [str(s) for s in _WAITING]).fetchone()[0]

    def usage(self, tenant: str, day: date | None = None) -> tuple[int, int]:
        """(chunks, tokens) charged to `tenant` on `day` (UTC today). Asked on every
        submission and commit: kept in memory once read, and moved on by every charge."""
        key = (tenant, day or utcnow().date())
        found = self._usage.get(key)
        if found is not None:
            return found
        with self._lock:
            row = self._con.execute("SELECT chunks, tokens FROM usage WHERE tenant = ? AND "
                                    "day = ?", list(key)).fetchone()
            found = self._usage[key] = (row[0], row[1]) if row else (0, 0)
        return found


@dataclass(slots=True)
class _Insert:
    """A job waiting to be written by the next group commit."""

    job: JobRecord
    partitions: Sequence[Partition]
    done: bool = False
    error: Exception | None = None


@dataclass(frozen=True, slots=True)
class PartitionDone:
    """A committed partition to record: its job, tenant, counts and skipped documents."""

    job_id: str
    tenant: str
    partition: int
    counts: dict[str, int]
    skipped: tuple[Skipped, ...] = ()


def _job_values(job: JobRecord) -> list[Any]:
    values = []
    for column in _JOB_COLUMNS:
        value = getattr(job, column)
        if column == "spec":
            value = json.dumps(value)
        elif column == "history":
            value = json.dumps([list(h) for h in value])
        elif column == "status":
            value = str(value)
        values.append(value)
    return values


def _tenant_from_row(row: Sequence[Any]) -> TenantRecord:
    return TenantRecord(**dict(zip(_TENANT_COLUMNS, row)))


def _job_from_row(row: Sequence[Any]) -> JobRecord:
    data = dict(zip(_JOB_COLUMNS, row))
    data["spec"] = json.loads(data["spec"])
    data["history"] = [tuple(h) for h in json.loads(data["history"])]
    data["status"] = JobStatus(data["status"])
    return JobRecord(**data)
