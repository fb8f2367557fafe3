"""The job ledger in the store: what each commit of a job did to its table.

One row per committed partition, written in the transaction that marks the partition done
(jobs/store/progress.py): the table version the commit made and the one it read, the documents
a sync partition read (`seen`: what the end of the sync keeps) and the documents whose rows the
commit deleted (`replaced`: what a cancel puts back, from the version read). Besides: the
overwrite that emptied a table for a job (written before that commit, with its version after),
the deletion that ended a sync, and the sources a sync's planner skipped. Sync, undo and resume
read these rows, not the table's recent commits, which a busy table passes in minutes; the
table's own commit properties settle only a crash between a commit and its row (jobs/ledger.py).

A table's generations (jobs/generations.py) are physical tables of one name, each with its own
versions: a row's table is its job's generation, the `physical` folder its details name (pinned as
the job starts, Store.start_jobs); a job without one (made before the generations) wrote
generation 1. The queries that compare versions take the generation and compare its own only.

Rows go in as one Arrow table per batch: the runner records hundreds of small partitions at
once, and an Arrow insert of 300 rows took 5 ms here where a VALUES list took 45 and
executemany 250 (measured, commit included).
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from dataclasses import dataclass, field

import duckdb
import pyarrow as pa

from embedscale.jobs.states import TERMINAL
from embedscale.jobs.store.connection import Connected

PARTITION, OVERWRITE, SYNC_DELETED, SKIPPED = "partition", "overwrite", "sync_deleted", "skipped"
# Rows the runner's thread writes just after its commits: the newest of them bounds what a crash
# can have left unrecorded. (An overwrite is committed on a preparing thread, and recorded before
# and after its commit instead.)
_BOUNDING = (PARTITION, SYNC_DELETED)
# The generation a job `j` writes: the folder of its physical table ('' for generation 1).
JOB_GENERATION = "coalesce(json_extract_string(j.details, '$.physical'), '')"
_COLUMNS = pa.schema(
    [
        ("job_id", pa.string()),
        ("kind", pa.string()),
        ("partition", pa.int32()),
        ("version", pa.int64()),
        ("read_version", pa.int64()),
        ("seen", pa.list_(pa.string())),
        ("replaced", pa.list_(pa.string())),
    ]
)


@dataclass(frozen=True, slots=True)
class LedgerRow:
    """One row of the ledger (see the module docstring); its table is its job's."""

    job_id: str
    kind: str
    version: int | None
    read_version: int | None
    partition: int | None = None
    seen: Sequence[str] | None = None
    replaced: Sequence[str] = ()


@dataclass(slots=True)
class StoredLedger:
    """What the ledger records of one job."""

    seen: set[str] = field(default_factory=set)  # documents and sources a sync read
    # (version, read version, doc ids) of each commit that deleted rows, oldest first
    replaced: list[tuple[int, int, list[str]]] = field(default_factory=list)
    overwrite: tuple[int, int | None] | None = None  # (read version, version made or None)
    sync_deleted: int | None = None  # documents the end of a sync deleted (None: not yet)
    versions: set[int] = field(default_factory=set)  # the versions its commits made


def insert_ledger(con: duckdb.DuckDBPyConnection, rows: Sequence[LedgerRow]) -> None:
    """Insert `rows` in one statement, inside the caller's transaction."""
    if not rows:
        return
    ledger_batch = pa.Table.from_arrays(  # noqa: F841 (read by name in the INSERT below)
        [
            [r.job_id for r in rows],
            [r.kind for r in rows],
            [r.partition for r in rows],
            [r.version for r in rows],
            [r.read_version for r in rows],
            [list(r.seen) if r.seen is not None else None for r in rows],
            [list(r.replaced) or None for r in rows],
        ],
        schema=_COLUMNS,
    )
    # Read by name from this frame (DuckDB's replacement scan): con.register and from_arrow
    # refuse a connection whose caller left a result unfinished (a fetchone) in the same
    # transaction, as insert_skipped does; execute finishes it first.
    con.execute("INSERT INTO ledger_commits BY NAME SELECT * FROM ledger_batch")


class LedgerRows(Connected):
    """The ledger_commits table."""

    def newest_recorded(
        self, tenant: str, table: str, at_most: int, physical: str = ""
    ) -> tuple[int, set[str]] | None:
        """The newest version of the tenant's table, not past `at_most`, that the runner
        recorded a commit of, with the jobs recorded there (None: none). Of the generation in
        `physical` ('' for generation 1) only: another generation's versions are numbers of
        another physical table."""
        kinds = ", ".join(f"'{k}'" for k in _BOUNDING)
        with self._lock:
            row = self._con.execute(
                "SELECT l.version, list(DISTINCT l.job_id) FROM ledger_commits l JOIN jobs j ON "
                f"j.id = l.job_id WHERE j.tenant = ? AND j.table_name = ? AND {JOB_GENERATION} = ?"
                f" AND l.kind IN ({kinds}) AND l.version <= ? GROUP BY l.version "
                "ORDER BY l.version DESC LIMIT 1",
                [tenant, table, physical, at_most],
            ).fetchone()
        return (row[0], set(row[1])) if row else None

    def oldest_read_by_unfinished(self, tenant: str, table: str, physical: str = "") -> int | None:
        """The oldest version any commit of a job of the tenant's table not yet ended read
        (None: none): the rows its undo would bring back, or its resume and sync read, are
        in that version and those after it. Of the generation in `physical` only."""
        with self._lock:
            row = self._con.execute(
                "SELECT min(l.read_version) FROM ledger_commits l JOIN jobs j ON j.id = "
                f"l.job_id WHERE j.tenant = ? AND j.table_name = ? AND {JOB_GENERATION} = ? "
                f"AND j.status NOT IN ({', '.join('?' for _ in TERMINAL)})",
                [tenant, table, physical, *(str(s) for s in TERMINAL)],
            ).fetchone()
        return row[0] if row else None

    def job_ledger(self, job_id: str) -> StoredLedger:
        """What the ledger records of `job_id`."""
        found = StoredLedger()
        with self._lock:
            seen = self._con.execute(
                "SELECT DISTINCT unnest(seen) FROM ledger_commits WHERE job_id = ? "
                "AND seen IS NOT NULL",
                [job_id],
            ).fetchall()
            rows = self._con.execute(
                "SELECT kind, version, read_version, replaced FROM ledger_commits "
                "WHERE job_id = ? AND kind <> ? ORDER BY version NULLS LAST",
                [job_id, SKIPPED],
            ).fetchall()
        found.seen = {doc_id for (doc_id,) in seen}
        for kind, version, read_version, replaced in rows:
            if version is not None:
                found.versions.add(version)
            if kind == OVERWRITE:
                found.overwrite = (read_version, version)
                continue
            if kind == SYNC_DELETED:
                found.sync_deleted = len(replaced or ())
            if replaced:
                found.replaced.append((version, read_version, list(replaced)))
        return found

    def recorded_commits(self, job_ids: Collection[str]) -> set[tuple[str, int, int]]:
        """(job, partition, version) of the partition commits the ledger records of
        `job_ids`."""
        if not job_ids:
            return set()
        ids = sorted(job_ids)
        with self._lock:
            rows = self._con.execute(
                "SELECT job_id, partition, version FROM ledger_commits WHERE kind = ? AND "
                f"job_id IN ({', '.join('?' for _ in ids)})",
                [PARTITION, *ids],
            ).fetchall()
        return set(rows)

    def add_ledger_rows(self, rows: Sequence[LedgerRow]) -> None:
        """Rows of commits whose partitions were recorded done without them (by an
        embedscale of before the ledger)."""
        with self._tx() as con:
            insert_ledger(con, rows)

    def record_overwrite(self, job_id: str, read_version: int, version: int | None) -> None:
        """Record the overwrite that empties the job's table: before its commit (`version`
        None: a crash in between is settled from the table's commits after `read_version`),
        and again once it is made."""
        with self._tx() as con:
            con.execute(
                "DELETE FROM ledger_commits WHERE job_id = ? AND kind = ?", [job_id, OVERWRITE]
            )
            insert_ledger(con, [LedgerRow(job_id, OVERWRITE, version, read_version)])

    def forget_overwrite(self, job_id: str) -> None:
        """The job's overwrite emptied nothing (it created its table)."""
        with self._tx() as con:
            con.execute(
                "DELETE FROM ledger_commits WHERE job_id = ? AND kind = ?", [job_id, OVERWRITE]
            )

    def record_sync_deleted(
        self, job_id: str, read_version: int, version: int, gone: Sequence[str]
    ) -> None:
        """Record the deletion that ends a sync job. The documents its partitions read are
        not needed any more (they decided what was gone): dropped in the same transaction."""
        with self._tx() as con:
            if con.execute(
                "SELECT 1 FROM ledger_commits WHERE job_id = ? AND kind = ?", [job_id, SYNC_DELETED]
            ).fetchone():
                return  # recorded already (from the table's commits, after a crash)
            insert_ledger(
                con, [LedgerRow(job_id, SYNC_DELETED, version, read_version, replaced=gone)]
            )
            con.execute(
                "UPDATE ledger_commits SET seen = NULL WHERE job_id = ? AND seen IS NOT NULL",
                [job_id],
            )
