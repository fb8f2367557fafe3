"""What ending a job does to its table: a cancelled job is undone (its rows go and the rows it
replaced come back, engine/tables/undo.py); a sync job whose partitions are all done deletes the
documents gone from its source before it succeeds (engine/tables/sync.py). What the job did to the
table (the documents it read, the rows it replaced, the version before its overwrite) is the
job ledger's word (jobs/ledger.py)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embedscale.engine.errors import error_line
from embedscale.engine.storage.locations import Location
from embedscale.engine.tables.sync import delete_gone
from embedscale.engine.tables.undo import undo_job
from embedscale.jobs.errors import PartitionsNotDoneError, StoreUnavailableError
from embedscale.jobs.generations import job_physical, job_table
from embedscale.jobs.ledger import job_ledger
from embedscale.jobs.runner.preparation import RunningJob
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import JobRecord


def remove_job_rows(store: Store, data_dir: Path | Location, record: JobRecord) -> None:
    """Undo a cancelled job in one commit: its rows go, the rows it replaced come back."""
    table = job_table(store, data_dir, record)
    if not table.exists():
        return
    ledger = job_ledger(store, record.tenant, table, record.id, job_physical(store, record))
    undo_job(table, record.id, ledger.replaced, ledger.overwritten_before)


def completion(store: Store, job: RunningJob) -> tuple[JobStatus, dict[str, Any]]:
    """The status and fields a job whose partitions are all done ends with: succeeded, once a
    sync job has deleted what its source no longer has (keeping the documents of sources
    skipped as unreadable) and the ledger has recorded that deletion; failed if that deletion
    fails. A deletion done already (before a crash) is not done again."""
    if job.config.mode != "sync":
        return JobStatus.SUCCEEDED, {}
    record = job.record
    # Deleting what the source no longer has takes the documents the partitions read as the
    # source's whole: with one of them not recorded done, its documents would go.
    if store.partitions_left(record.id):
        raise PartitionsNotDoneError(record.id)
    try:
        ledger = job_ledger(store, record.tenant, job.table, record.id, job_physical(store, record))
        if ledger.sync_deleted is None:
            kept = {s.source for s in store.skipped(record.id)}  # a store of before the ledger
            deletion = delete_gone(job.table, record.id, ledger.seen, kept)
            store.record_sync_deleted(
                record.id, deletion.commit.read_version, deletion.commit.version, deletion.gone
            )
            ledger.sync_deleted = len(deletion.gone)
    except StoreUnavailableError:  # the runner's to handle: the job is not what failed
        raise
    except Exception as exc:  # the table vanished or its disk failed
        return JobStatus.FAILED, {
            "error_reason": "commit_failed",
            "error": f"deleting documents gone from the source failed: {error_line(exc)}",
        }
    return JobStatus.SUCCEEDED, {"documents_deleted": ledger.sync_deleted}
