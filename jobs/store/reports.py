"""What the store reports for health checks and metrics: cheap aggregate reads."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

from embedscale.jobs.states import UNFINISHED, JobStatus
from embedscale.jobs.store.connection import Connected
from embedscale.jobs.store.job_figures import JobShare
from embedscale.jobs.store.ledger import JOB_GENERATION
from embedscale.jobs.store.rows import scalar

# Jobs whose pending partitions are work waiting (a cancelling job's never run).
_WAITING = (JobStatus.QUEUED, JobStatus.RUNNING)
_JOB_COUNTS = "SELECT status, count(*) FROM jobs GROUP BY status"
# Each job of a tenant's table with what the ledger records it committed there (its partitions
# marked done) and the generation it wrote, for `embedscale verify` (jobs/table_verify.py).
_TABLE_LEDGER = (
    "SELECT j.id, j.status, coalesce(json_extract_string(j.spec, '$.mode'), 'append') AS mode, "
    "j.created_at, j.started_at, j.finished_at, count(p.partition) AS partitions_done, "
    "coalesce(sum(p.chunks), 0) AS chunks_done, min(p.updated_at) AS first_done_at, "
    f"max(p.updated_at) AS last_done_at, {JOB_GENERATION} AS physical "
    "FROM jobs j LEFT JOIN job_partitions p "
    "ON p.job_id = j.id AND p.status = 'done' WHERE j.tenant = ? AND j.table_name = ? "
    "GROUP BY ALL ORDER BY j.created_at, j.id"
)
# The ledger rows of restores (jobs.table_admin): when each restore of a generation of a
# tenant's table began.
RESTORE = "restore"
_TABLE_RESTORES = (
    "SELECT l.job_id, coalesce(l.version, TRY_CAST(json_extract_string(j.details, "
    "'$.restore.made') AS BIGINT)) AS version, l.read_version, j.created_at AS at, "
    "TRY_CAST(json_extract_string(j.details, '$.restore.version') AS BIGINT) AS restored "
    "FROM ledger_commits l JOIN jobs j ON j.id = l.job_id WHERE j.tenant = ? AND "
    f"j.table_name = ? AND {JOB_GENERATION} = ? AND l.kind = '{RESTORE}' AND "
    "coalesce(j.error_reason, '') <> "
    "'restore_failed' ORDER BY j.created_at"
)
_EMBEDDED = (
    "SELECT tenant, json_extract_string(spec, '$.model'), sum(chunks_done), "
    "sum(tokens_done) FROM jobs GROUP BY ALL"
)


@dataclass(frozen=True, slots=True)
class LedgerJob:
    """A job of a table as the ledger records it: its status and write mode, when it ran, and
    the partitions it committed (marked done) with their chunks, and when they were recorded
    (None: none was)."""

    id: str
    status: str
    mode: str
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    partitions_done: int
    chunks_done: int
    first_done_at: datetime | None
    last_done_at: datetime | None
    physical: str = ""  # the generation it wrote (jobs/generations.py): '' for generation 1


@dataclass(frozen=True, slots=True)
class RestoreRow:
    """A restore of a table as the ledger records it (a failed one left out): the job recording
    it, the version its commit made (None: not known, a crash came between them) and the one it
    read, when it began, and the version it brought back (None where its job does not say)."""

    job_id: str
    version: int | None
    read_version: int
    at: datetime
    restored: int | None


class StoreReports(Connected):
    """Counts over jobs and partitions."""

    def ping(self) -> None:
        """Raise if the database cannot answer, or its disk is full: a store that would fail
        its next write is not ready (StoreUnavailableError, until the disk takes writes)."""
        with self._lock:
            self._lock.check_space()
            self._con.execute("SELECT 1").fetchone()

    def figures_from_file(self) -> tuple[dict[str, int], list[tuple], list[tuple[str, JobShare]]]:
        """What jobs.store.job_figures.JobFigures starts from: jobs by status, the embedded sums by
        tenant and model, and the share of each unfinished job. Read when the store opens
        (and reopens); /metrics then reads the figures kept in memory."""
        with self._lock:
            return self._figures_from_file()

    def _figures_from_file(self) -> tuple[dict[str, int], list[tuple], list[tuple[str, JobShare]]]:
        # The caller holds the lock, or is the guard reopening the file (which holds it).
        con = self._con
        unfinished = con.execute(
            "SELECT id, status, tenant, json_extract_string(spec, '$.model'), chunks_done, "
            "tokens_done, partitions_total, partitions_done FROM jobs WHERE status IN "
            f"({', '.join('?' for _ in UNFINISHED)})",
            [str(s) for s in UNFINISHED],
        ).fetchall()
        return (
            dict(con.execute(_JOB_COUNTS).fetchall()),
            con.execute(_EMBEDDED).fetchall(),
            [(row[0], JobShare.of(*row[1:])) for row in unfinished],
        )

    def job_counts(self) -> dict[str, int]:
        """Jobs by status, as the file holds them (/metrics reads JobFigures)."""
        with self._lock:
            return dict(self._con.execute(_JOB_COUNTS).fetchall())

    def embedded_totals(self) -> list[tuple[str, str, int, int]]:
        """(tenant, model, chunks, tokens) embedded by every job ever, as the file holds them:
        a scan of every job (/metrics reads JobFigures)."""
        with self._lock:
            return self._con.execute(_EMBEDDED).fetchall()

    def pending_partitions(self) -> int:
        """Partitions of queued and running jobs not yet done: the work waiting, as the file
        holds it (/metrics reads JobFigures)."""
        with self._lock:
            return scalar(
                self._con.execute(
                    "SELECT count(*) FROM job_partitions p JOIN jobs j ON p.job_id = j.id "
                    f"WHERE j.status IN ({', '.join('?' for _ in _WAITING)}) AND "
                    "p.status != 'done'",
                    [str(s) for s in _WAITING],
                )
            )

    def table_ledger(self, tenant: str, table: str) -> list[LedgerJob]:
        """Every job of `tenant` that wrote (or was to write) `table`, oldest first, with
        what the ledger records it committed there and the generation it wrote (each job
        writes one: jobs/generations.py)."""
        with self._lock:
            cursor = self._con.execute(_TABLE_LEDGER, [tenant, table])
            names = [d[0] for d in cursor.description]
            return [LedgerJob(**dict(zip(names, row))) for row in cursor.fetchall()]

    def table_restores(self, tenant: str, table: str, physical: str = "") -> list[RestoreRow]:
        """The restores of the tenant's table that the ledger records, oldest first: of the
        generation in `physical` ('' for generation 1; its versions are its own)."""
        with self._lock:
            rows = self._con.execute(_TABLE_RESTORES, [tenant, table, physical]).fetchall()
        return [RestoreRow(*row) for row in rows]
