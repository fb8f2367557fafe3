"""What ending a job does to its table: a cancelled job is undone (its rows go and the rows it
replaced come back, engine/undo.py); a sync job whose partitions are all done deletes the
documents gone from its source before it succeeds (engine/sync.py)."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from engine.errors import error_line
from engine.sink import ChunkTable
from engine.storage import Location
from engine.sync import delete_gone
from engine.undo import undo_job
from jobs.preparation import RunningJob
from jobs.records import JobRecord
from jobs.states import JobStatus
from jobs.store import Store


def remove_job_rows(data_dir: Path | Location, record: JobRecord) -> None:
    """Undo a cancelled job in one commit: its rows go, the rows it replaced come back."""
    undo_job(ChunkTable(data_dir, record.table_name), record.id)


def completion(store: Store, job: RunningJob) -> tuple[JobStatus, dict[str, Any]]:
    """The status and fields a job whose partitions are all done ends with: succeeded, once a
    sync job has deleted what its source no longer has (keeping the documents of sources
    skipped as unreadable); failed if that deletion fails."""
    if job.config.mode != "sync":
        return JobStatus.SUCCEEDED, {}
    kept = {s.source for s in store.skipped(job.record.id)}
    try:
        deleted = delete_gone(job.table, job.record.id, kept)
    except Exception as exc:  # the table vanished or its disk failed
        return JobStatus.FAILED, {
            "error_reason": "commit_failed",
            "error": f"deleting documents gone from the source failed: {error_line(exc)}"}
    return JobStatus.SUCCEEDED, {"documents_deleted": deleted}
