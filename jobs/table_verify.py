"""`embedscale verify`: one table held against the job ledger in DuckDB.

The table's own checks (ids unique, vectors of its dimension and finite, one model) are
engine/tables/verify.py's; here each job's rows, counted in the same pass, are held against what the
ledger records that job committed (its partitions marked done, with their chunks):

- every committed row is there: a job has as many rows as its done partitions hold chunks,
  unless a later job could have replaced them (an overwrite, upsert or sync of the table) or
  the table was made again after them (dropped, then written anew);
- no row of a cancelled job; a failed job keeps what it committed (a retry does only the rest),
  and no job has more rows than its ledger records, which would be a partition committed twice
  or a commit never recorded. An unfinished job may be ahead of its ledger (a Lance commit is
  recorded just after it lands; `jobs resume` records what a crash cut off): that is a warning
  when the table's own commits after the newest the ledger recorded account for the rows;
- rows of a job the ledger does not know (a table written from another data dir): a warning.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.verify import (
    ERROR,
    EXAMPLES,
    WARNING,
    Problem,
    TableScan,
    scan_table,
)
from embedscale.jobs.ledger import unrecorded_chunks
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.reports import LedgerJob

REPLACING_MODES = frozenset({"overwrite", "upsert", "sync"})  # they remove others' rows
_FED = frozenset({JobStatus.QUEUED, JobStatus.RUNNING})  # their partitions may be committing


@dataclass(slots=True)
class VerifyReport:
    """What `embedscale verify` found in one table: its size and model, the ledger's jobs of
    it, and the problems (ok: no error among them; warnings are worth a look)."""

    table: str
    tenant: str
    rows: int
    model: str | None
    dimension: int | None
    jobs: int  # jobs the ledger records for this table
    problems: list[Problem] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not any(p.severity == ERROR for p in self.problems)

    def to_dict(self) -> dict:
        return {
            "table": self.table,
            "tenant": self.tenant,
            "ok": self.ok,
            "rows": self.rows,
            "model": self.model,
            "dimension": self.dimension,
            "jobs": self.jobs,
            "problems": [{**asdict(p), "examples": list(p.examples)} for p in self.problems],
        }

    def lines(self) -> list[str]:
        """One line per problem, errors first: what is wrong, and a few ids to look up."""
        ordered = sorted(self.problems, key=lambda p: p.severity != ERROR)
        return [
            f"{p.severity}: table '{self.table}' of tenant '{self.tenant}': {p.kind}: "
            f"{p.message}{_examples(p)}"
            for p in ordered
        ]


def _examples(problem: Problem) -> str:
    """A few ids to look up, unless the message names them already (the jobs concerned)."""
    if not problem.examples or all(e in problem.message for e in problem.examples):
        return ""
    return f" (e.g. {', '.join(problem.examples)})"


def verify_table(store: Store, table: ChunkTable, tenant: str, physical: str = "") -> VerifyReport:
    """Check `table` (of `tenant`; the generation in `physical`, '' for generation 1) against
    itself and against the ledger in `store`: the jobs that wrote this generation, its
    restores. A replacing job of another generation of the table still excuses rows missing
    here: a switch or rollback reconciles the generations, carrying what it replaced across
    (jobs/migrations/driver.py)."""
    scan = scan_table(table)
    every = store.table_ledger(tenant, table.name)
    ledger = [job for job in every if job.physical == physical]
    restores = store.table_restores(tenant, table.name, physical)
    problems = list(scan.problems) + ledger_problems(
        table,
        scan,
        ledger,
        lambda job_id: unrecorded_chunks(store, tenant, table, job_id, physical),
        [Restore(r.at, r.restored) for r in restores],
        lambda job_id: store.job_ledger(job_id).versions,
        replacing=every,
    )
    return VerifyReport(
        table.name, tenant, scan.rows, scan.model, scan.dimension, len(ledger), problems
    )


def ledger_problems(
    table: ChunkTable,
    scan: TableScan,
    ledger: list[LedgerJob],
    unrecorded: Callable[[str], int],
    restores: Sequence[Restore] = (),
    committed: Callable[[str], set[int]] = lambda job_id: set(),
    replacing: Sequence[LedgerJob] | None = None,
) -> list[Problem]:
    """Each job's rows in the table held against what the ledger records it committed;
    `unrecorded(job_id)`: the job's chunks the table's commits hold and the ledger does not
    record yet; `restores`: the table's restores to older versions (jobs.table_admin), which
    take away the rows of the jobs committed after the version brought back and may bring back
    rows of a job cancelled since; `committed(job_id)`: the versions its commits made, as the
    ledger records them (read only for the jobs a restore came after); `replacing`: the jobs
    whose replacements may have removed rows of the table (default: `ledger`'s)."""
    found: dict[str, list[str]] = {}  # kind -> one description per job
    counts: dict[str, int] = {}  # kind -> rows concerned
    created = _Created(table)

    def add(kind: str, job: LedgerJob, rows: int, text: str) -> None:
        found.setdefault(kind, []).append(f"{job.id} ({job.status}) {text}")
        counts[kind] = counts.get(kind, 0) + rows

    for job in ledger:
        rows = scan.rows_by_job.get(job.id, 0)
        recorded = f"{job.partitions_done} partitions, {job.chunks_done} chunks"
        later = [r for r in restores if job.first_done_at and r.at > job.first_done_at]
        versions = committed(job.id) if later else set()
        if job.status == JobStatus.CANCELLED:
            if rows:
                back = any(_brought_back(r, versions) for r in later)
                add(
                    "restored_cancelled_rows" if back else "cancelled_job_rows",
                    job,
                    rows,
                    f"has {rows} rows",
                )
            continue
        if job.status == JobStatus.CANCELLING:
            if rows:
                add("cancelling_job_rows", job, rows, f"has {rows} rows its cancel removes")
            continue
        if rows > job.chunks_done:
            kind = "unrecorded_rows"
            if job.status in _FED and rows <= job.chunks_done + unrecorded(job.id):
                kind = "rows_ahead_of_ledger"
            add(
                kind, job, rows - job.chunks_done, f"has {rows} rows; its ledger records {recorded}"
            )
        elif (
            rows < job.chunks_done
            and not any(_taken_away(r, versions) for r in later)
            and not _replaceable(job, ledger if replacing is None else replacing, created)
        ):
            add(
                "missing_rows",
                job,
                job.chunks_done - rows,
                f"has {rows} rows; its ledger records {recorded} committed",
            )
    known = {job.id for job in ledger}
    unknown = {j: n for j, n in scan.rows_by_job.items() if j not in known}
    problems = [_problem(kind, found[kind], counts[kind]) for kind in _KINDS if kind in found]
    if unknown:
        problems.append(
            Problem(
                "unknown_job_rows",
                f"{sum(unknown.values())} rows of {_jobs(len(unknown))} this data "
                "dir's ledger does not know for this table (written from another data dir?)",
                sum(unknown.values()),
                tuple(sorted(unknown)[:EXAMPLES]),
                WARNING,
            )
        )
    return problems


# kind -> (severity, what it means and what to do)
_KINDS: dict[str, tuple[str, str]] = {
    "missing_rows": (ERROR, "rows the ledger records committed are not in the table"),
    "unrecorded_rows": (
        ERROR,
        "more rows than the ledger records committed (a partition "
        "committed twice, or rows of a failed commit)",
    ),
    "cancelled_job_rows": (ERROR, "rows of cancelled jobs are still in the table"),
    "restored_cancelled_rows": (
        WARNING,
        "rows of cancelled jobs brought back by a restore to a version before their cancel "
        "(`embedscale tables history` shows it; upsert or delete their documents if unwanted)",
    ),
    "cancelling_job_rows": (
        WARNING,
        "rows of jobs being cancelled (their cancel removes "
        "them; `embedscale jobs resume` after a crash)",
    ),
    "rows_ahead_of_ledger": (
        WARNING,
        "rows of running jobs committed but not yet recorded "
        "(recorded next, or by `embedscale jobs resume`)",
    ),
}


def _problem(kind: str, jobs: list[str], rows: int) -> Problem:
    severity, meaning = _KINDS[kind]
    shown = "; ".join(jobs[:EXAMPLES]) + (
        f"; ... {len(jobs)} jobs in all" if len(jobs) > EXAMPLES else ""
    )
    return Problem(
        kind,
        f"{meaning}: {rows} rows of {_jobs(len(jobs))}: job {shown}",
        rows,
        tuple(j.split(" ", 1)[0] for j in jobs[:EXAMPLES]),
        severity,
    )


def _jobs(n: int) -> str:
    return f"{n} job" if n == 1 else f"{n} jobs"


@dataclass(frozen=True, slots=True)
class Restore:
    """A restore of the table: when it began, and the version it brought back (None: unknown,
    taken to be older than every commit)."""

    at: datetime
    version: int | None


def _taken_away(restore: Restore, versions: set[int]) -> bool:
    """Whether a restore that began after a job's first commit may have taken rows of it away:
    it brought back a version older than one of the job's commits. (No job runs during a
    restore: it is refused while one of the table is unfinished.)"""
    if restore.version is None or not versions:
        return True  # what it brought back, or where the job's rows were, is not known
    return max(versions) > restore.version


def _brought_back(restore: Restore, versions: set[int]) -> bool:
    """Whether a restore after a job's cancel may have brought its rows back: it brought back
    a version made after one of the job's commits."""
    if restore.version is None or not versions:
        return True
    return restore.version >= min(versions)


def _replaceable(job: LedgerJob, ledger: Sequence[LedgerJob], created: _Created) -> bool:
    """Whether the job's rows may rightly be fewer than it committed: another job that
    removes rows (overwrite, upsert, sync; not one cancelled, whose removal was undone) was
    still running after the job's first commit, or the table was made after it."""
    if job.first_done_at is None:
        return True
    for other in ledger:
        if (
            other.id != job.id
            and other.mode in REPLACING_MODES
            and other.started_at is not None
            and other.status != JobStatus.CANCELLED
            and (other.finished_at is None or other.finished_at >= job.first_done_at)
        ):
            return True
    made = created.at()
    return made is not None and job.last_done_at is not None and job.last_done_at < made


class _Created:
    """When the table was made, from its oldest version (read only when needed: listing a
    long history costs a read per version). None where it cannot tell."""

    def __init__(self, table: ChunkTable) -> None:
        self.table = table
        self._at: datetime | None = None
        self._read = False

    def at(self) -> datetime | None:
        if not self._read:
            self._read = True
            versions = self.table.dataset().versions()
            if versions:
                stamp = min(versions, key=lambda v: v["version"])["timestamp"]
                if isinstance(stamp, datetime):
                    # Lance gives local wall-clock time without a zone.
                    self._at = stamp.astimezone(UTC) if stamp.tzinfo is None else stamp
        return self._at
