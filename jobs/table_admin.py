"""An operator's actions on a table: show it in full, list its history, restore a version,
optimize it now, drop it; each refused while a job of the table is unfinished, and one at a time
per table (a drop under way refuses the others, and the reverse).

A restore is recorded in the job ledger as a job of kind `maintenance` (visible in the job list)
with one ledger row of kind RESTORE, written before its commit: the version it read; the job's
details say the version it brought back and, once committed, the version it made. `embedscale
verify` reads these rows: a restore takes away the rows of the jobs after the version it brings
back, and can bring back rows of a job cancelled since; neither is a lost commit
(jobs/table_verify.py). The restore's own commit names no job's partition, so a resume finds
nothing of a job in it (jobs/ledger.py).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

from embedscale.engine.errors import TableError, TableNotFoundError, error_line
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.storage.locations import Location
from embedscale.engine.tables.catalog import TableInfo, describe_table
from embedscale.engine.tables.indexes import IndexInfo, index_state
from embedscale.engine.tables.versions import TableDetails, describe, require_version, restore
from embedscale.jobs.errors import ConflictError, InvalidFieldError
from embedscale.jobs.ledger import versions_needed_from
from embedscale.jobs.runner.maintenance_runs import StoredMaintenanceRuns, maintenance_record
from embedscale.jobs.runner.table_maintenance import RETENTION, TableMaintenance, Target
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.ledger import LedgerRow
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.store.reports import RESTORE


@dataclass(frozen=True, slots=True)
class TableView:
    """A table in full, for `embedscale tables show`: its name, model and rows (catalog), its
    storage (fragments, versions, bytes) and its indexes with the rows they do not cover yet."""

    info: TableInfo
    details: TableDetails
    indexes: list[IndexInfo] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.info.name,
            "model": self.info.model,
            "dimension": self.info.dimension,
            **self.details.to_dict(),
            "indexes": [
                {
                    "name": i.name,
                    "kind": i.kind,
                    "column": i.column,
                    "indexed_rows": i.indexed_rows,
                    "unindexed_rows": i.unindexed_rows,
                }
                for i in self.indexes
            ],
        }


@dataclass(frozen=True, slots=True)
class Restored:
    """What a restore did: the version it brought back, the version its commit made (the
    latest, unchanged, when `version` was the latest already) and the job recording it (None:
    nothing to record)."""

    table: str
    version: int
    made: int
    job_id: str | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "table": self.table,
            "version": self.version,
            "made": self.made,
            "job_id": self.job_id,
        }


class TableActions:
    """Which tables an operator's action holds now: one action at a time per table, so a
    maintenance run never meets a drop halfway through, nor two restores each other."""

    def __init__(self) -> None:
        self._held: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()

    @contextmanager
    def hold(self, tenant: str, name: str, action: str) -> Iterator[None]:
        """Hold the tenant's table `name` for `action` ("dropped", "optimized", "restored");
        ConflictError, nothing done, while another action holds it."""
        key = (tenant, name)
        with self._lock:
            if key in self._held:
                raise ConflictError(
                    f"table '{name}' is being {self._held[key]}; try again once that is done"
                )
            self._held[key] = action
        try:
            yield
        finally:
            with self._lock:
                del self._held[key]


def refuse_while_written(store: Store, tenant: str, name: str, action: str) -> None:
    """ConflictError while a job of the tenant still writes to its table `name`: `action`
    ("drop", "restore", "optimize") would change what the job's undo, resume or sync reads."""
    busy = [j.id for j in store.unfinished_jobs() if j.tenant == tenant and j.table_name == name]
    if busy:
        raise ConflictError(
            f"table '{name}' is being written by job(s) {', '.join(busy)}; {action} it once "
            "they end, or cancel them first"
        )


def show(data_dir: Path | Location, name: str) -> TableView:
    """The table `name` of a data dir in full (TableNotFoundError if there is none)."""
    info = describe_table(data_dir, name)
    table = ChunkTable(data_dir, name)
    return TableView(
        info, describe(table.uri, table.storage), index_state(table.uri, table.storage)
    )


def restore_version(
    store: Store, tenant: str, table: ChunkTable, version: int, physical: str = ""
) -> Restored:
    """Bring the tenant's `table` (the generation in `physical`, '' for generation 1) back to
    `version` as a new commit, recorded in the ledger (see the module docstring). The job and
    its ledger row are recorded before the commit, so a crash in between leaves a run the
    runner ends as interrupted and a restore verify allows for, not a commit nobody knows."""
    try:
        latest = require_version(table.uri, table.storage, version)
    except TableNotFoundError:
        raise
    except TableError as exc:  # the request's version, not the table, is wrong
        raise InvalidFieldError("version", str(exc)) from None
    if version == latest:
        return Restored(table.name, version, latest, None)
    # The generation it restores, read with its ledger row (absent: generation 1, as the
    # restores of before the generations).
    where = {"physical": physical} if physical else {}
    record = maintenance_record(
        tenant,
        table.name,
        details={"restore": {"version": version, "read_version": latest}, **where},
        restore=version,
    )
    store.insert_job(record, [])
    store.start_jobs([record.id])
    # Recorded before the commit (the version it makes not known yet): a crash between the
    # two leaves a restore that verify allows for, never a commit the ledger does not know.
    store.add_ledger_rows([LedgerRow(record.id, RESTORE, None, latest)])
    try:
        made = restore(table.uri, table.storage, version)
    except Exception as exc:
        store.finish(
            record.id,
            JobStatus.FAILED,
            error=error_line(exc),
            error_reason="restore_failed",
            details={"restore": {"version": version, "read_version": latest}, **where},
        )
        raise
    store.finish(
        record.id,
        JobStatus.SUCCEEDED,
        details={"restore": {"version": version, "read_version": latest, "made": made}, **where},
    )
    return Restored(table.name, version, made, record.id)


def optimize_now(
    store: Store,
    tenant: str,
    table: ChunkTable,
    retention: timedelta = RETENTION,
    publish: Callable[[JobRecord], None] = lambda record: None,
    physical: str = "",
) -> JobRecord | None:
    """One maintenance run of the table in this thread (no runner in this process: the CLI):
    compaction, index refresh, cleanup of the versions older than `retention` that no job not
    yet ended needs (jobs.ledger.versions_needed_from, of the generation in `physical`);
    recorded as a job of kind `maintenance`, returned once it ended (None: the store did not
    record it)."""
    maintenance = TableMaintenance(
        lambda: None,
        after_fragments=None,
        runs=StoredMaintenanceRuns(store, publish),
        keep_from=lambda target: versions_needed_from(
            store, target.tenant, target.table, target.physical
        ),
        retention=retention,
        sweep_every_s=None,
    )
    try:
        run_id = maintenance.maintain_now(Target(table, tenant, table.name, physical))
    finally:
        maintenance.close()  # waits for the run
    return store.get_job(run_id) if run_id else None
