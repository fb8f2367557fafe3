"""Recording committed partitions in DuckDB: their rows marked done, their counts added to their
jobs, their chunks charged to their tenants, what their commits did written to the job ledger
(jobs/store/ledger.py), and the jobs they finish moved to succeeded, all in one transaction and
in a fixed handful of statements whatever the batch holds.

Why batched: the runner commits up to a few hundred small partitions at once, and per-partition
statements (three or four each, ~0.3 ms apiece) were about half of the API process's CPU on
benchmarks/bench_api_load.py, where that process was the bottleneck.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any

import duckdb

from embedscale.engine.sources.documents import Skipped
from embedscale.jobs.states import JobStatus, check_transition
from embedscale.jobs.store.ledger import LedgerRow, insert_ledger
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.store.rows import JOB_SELECT, job_from_row, scalar, stored, transition_changes

MAX_SKIPPED_STORED = 1000  # per job; the count is kept in full
# The condition a job's success is written under: every partition it planned is done.
ALL_PARTITIONS_DONE = (
    "NOT EXISTS (SELECT 1 FROM job_partitions p WHERE p.job_id = {job} AND p.status <> 'done')"
)


@dataclass(frozen=True, slots=True)
class PartitionDone:
    """A committed partition to record: its job, tenant, counts and skipped documents, and
    what its commit did to the table (None: there was nothing to commit)."""

    job_id: str
    tenant: str
    partition: int
    counts: Mapping[str, float]  # chunks, tokens, ... (ints); GPU seconds are fractional
    skipped: tuple[Skipped, ...] = ()
    ledger: LedgerRow | None = None


Charged = dict[str, tuple[int, int]]  # tenant -> (chunks, tokens)


def record_done(
    con: duckdb.DuckDBPyConnection,
    done: Sequence[PartitionDone],
    succeeded: Collection[str],
    day: date,
    now: datetime,
) -> tuple[dict[str, JobRecord], Charged]:
    """Inside the caller's transaction: record `done` (a partition already done is left
    alone, so recording twice never charges twice) and move the jobs in `succeeded` that are
    still running to succeeded. Returns the jobs' records and what was charged."""
    fresh = _mark_done(con, done, now)
    insert_ledger(con, [d.ledger for d in fresh if d.ledger is not None])
    jobs: dict[str, list[float]] = {}
    charged: Charged = {}
    for d in fresh:
        c = d.counts
        sums = jobs.setdefault(d.job_id, [0] * 10)
        for i, n in enumerate(
            (
                1,
                c["documents"],
                c.get("unchanged", 0),
                c["chunks"],
                c["tokens"],
                c.get("skipped", len(d.skipped)),
                c.get("changed", 0),
                c.get("gpu_seconds", 0.0),
                c.get("gpu_busy_seconds", 0.0),
            )
        ):
            sums[i] += n
        sums[9] = max(sums[9], c.get("gpu_peak_bytes", 0))  # a peak, not a sum
        chunks, tokens = charged.get(d.tenant, (0, 0))
        charged[d.tenant] = (chunks + int(c["chunks"]), tokens + int(c["tokens"]))
        if d.skipped:
            insert_skipped(con, d.job_id, d.partition, d.skipped)
    if jobs:
        _execute_values(
            con,
            "UPDATE jobs AS j SET partitions_done = j.partitions_done + v.parts, "
            "documents_done = j.documents_done + v.documents, documents_unchanged = "
            "j.documents_unchanged + v.unchanged, chunks_done = j.chunks_done + v.chunks, "
            "tokens_done = j.tokens_done + v.tokens, skipped_count = j.skipped_count + "
            "v.skipped, documents_changed = j.documents_changed + v.changed, gpu_seconds = "
            "j.gpu_seconds + v.gpu_seconds, gpu_busy_seconds = j.gpu_busy_seconds + "
            "v.gpu_busy_seconds, gpu_peak_bytes = greatest(j.gpu_peak_bytes, v.gpu_peak), "
            "updated_at = ? FROM ({values}) v(id, parts, documents, unchanged, chunks, tokens, "
            "skipped, changed, gpu_seconds, gpu_busy_seconds, gpu_peak) WHERE j.id = v.id",
            [[job_id, *sums] for job_id, sums in jobs.items()],
            before=[now],
        )
    if charged:
        _execute_values(
            con,
            "INSERT INTO usage (tenant, day, chunks, tokens) {values} "
            "ON CONFLICT (tenant, day) DO UPDATE SET chunks = usage.chunks + excluded.chunks, "
            "tokens = usage.tokens + excluded.tokens",
            [[tenant, day, chunks, tokens] for tenant, (chunks, tokens) in charged.items()],
        )
    records = _read_jobs(con, {d.job_id for d in done} | set(succeeded))
    _succeed(con, records, succeeded, now)
    return records, charged


def _mark_done(
    con: duckdb.DuckDBPyConnection, done: Sequence[PartitionDone], now: datetime
) -> list[PartitionDone]:
    """Mark the partitions done; those that were not done already, in order."""
    first: dict[tuple[str, int], PartitionDone] = {}
    for d in done:
        first.setdefault((d.job_id, d.partition), d)
    unique = list(first.values())
    if not unique:
        return []
    updated = set(
        _execute_values(
            con,
            "UPDATE job_partitions AS p SET status = 'done', documents = v.documents, "
            "chunks = v.chunks, tokens = v.tokens, error = NULL, updated_at = ? FROM ({values}) "
            "v(job_id, partition, documents, chunks, tokens) WHERE p.job_id = v.job_id AND "
            "p.partition = v.partition AND p.status != 'done' RETURNING p.job_id, p.partition",
            [
                [
                    d.job_id,
                    d.partition,
                    d.counts["documents"],
                    d.counts["chunks"],
                    d.counts["tokens"],
                ]
                for d in unique
            ],
            before=[now],
        ).fetchall()
    )
    return [d for d in unique if (d.job_id, d.partition) in updated]


def _read_jobs(con: duckdb.DuckDBPyConnection, job_ids: Collection[str]) -> dict[str, JobRecord]:
    if not job_ids:
        return {}
    ids = sorted(job_ids)
    rows = con.execute(f"{JOB_SELECT} WHERE id IN ({', '.join('?' for _ in ids)})", ids).fetchall()
    return {record.id: record for record in map(job_from_row, rows)}


def _succeed(
    con: duckdb.DuckDBPyConnection,
    records: dict[str, JobRecord],
    succeeded: Collection[str],
    now: datetime,
) -> None:
    """Move the jobs of `succeeded` still running (a cancel may have come first) and with
    every partition recorded done to succeeded, in one statement; `records` are updated to
    match (a job not moved keeps its running record)."""
    rows = []
    before = dict(records)
    for job_id in succeeded:
        job = records[job_id]
        if job.status != JobStatus.RUNNING:
            continue
        check_transition(job.id, job.status, JobStatus.SUCCEEDED, job.history)
        changes = transition_changes(job, JobStatus.SUCCEEDED, now)
        values = stored(changes)
        rows.append([job_id, values["status"], values["history"]])
        records[job_id] = dataclasses.replace(job, **changes)
    if not rows:
        return
    # Whether a job is done is the store's word, not the runner's: one that still has a
    # partition not recorded done stays running (and its record unchanged).
    moved = {
        job_id
        for (job_id,) in _execute_values(
            con,
            "UPDATE jobs AS j SET status = v.status, history = v.history, updated_at = ?, "
            "finished_at = ? FROM ({values}) v(id, status, history) WHERE j.id = v.id AND "
            f"j.status = 'running' AND {ALL_PARTITIONS_DONE.format(job='j.id')} RETURNING j.id",
            rows,
            before=[now, now],
        ).fetchall()
    }
    for job_id, *_ in rows:
        if job_id not in moved:
            records[job_id] = before[job_id]


def insert_skipped(
    con: duckdb.DuckDBPyConnection, job_id: str, partition: int | None, skipped: Sequence[Skipped]
) -> None:
    """Store a job's skipped documents, up to MAX_SKIPPED_STORED of them."""
    stored_count = scalar(
        con.execute("SELECT count(*) FROM job_skipped WHERE job_id = ?", [job_id])
    )
    room = max(0, MAX_SKIPPED_STORED - stored_count)
    if skipped[:room]:
        con.executemany(
            "INSERT INTO job_skipped (job_id, partition, source, reason) VALUES (?, ?, ?, ?)",
            [[job_id, partition, s.source, s.reason] for s in skipped[:room]],
        )


def _execute_values(
    con: duckdb.DuckDBPyConnection, sql: str, rows: list[list[Any]], before: Sequence[Any] = ()
) -> duckdb.DuckDBPyConnection:
    """Run `sql` with `{values}` replaced by a VALUES list of `rows` (parameters after
    `before`, the parameters that come first in the text)."""
    values = "VALUES " + ", ".join("(" + ", ".join("?" for _ in rows[0]) + ")" for _ in rows)
    return con.execute(sql.format(values=values), [*before, *(v for r in rows for v in r)])
