"""How the store's records map to DuckDB rows: columns named, never `SELECT *` by position, so a
migration that adds a column, or a file whose columns lie in another order, reads the same."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.records import EMBED, JobRecord, TenantRecord


def only_row(cursor: Any) -> tuple[Any, ...]:
    """The row of a query that always returns one: an aggregate (count, max, sum), or an
    UPDATE ... RETURNING of a row known to exist under the store's lock. None there would be
    a broken store, not a case to handle."""
    row = cursor.fetchone()
    if row is None:
        raise RuntimeError("a query that always returns a row returned none")
    return row


def scalar(cursor: Any) -> Any:
    """The single value of a query that always returns one row (see `only_row`)."""
    return only_row(cursor)[0]


JOB_COLUMNS = [
    "id",
    "tenant",
    "spec",
    "status",
    "priority",
    "table_name",
    "history",
    "created_at",
    "updated_at",
    "started_at",
    "finished_at",
    "estimated_chunks",
    "partitions_total",
    "partitions_done",
    "documents_done",
    "documents_unchanged",
    "chunks_done",
    "tokens_done",
    "skipped_count",
    "error",
    "error_reason",
    "dashboard_link",
    "documents_changed",
    "documents_deleted",
    "schedule_id",
    "gpu_seconds",
    "gpu_busy_seconds",
    "gpu_peak_bytes",
    "kind",
    "details",
]
JOB_SELECT = f"SELECT {', '.join(JOB_COLUMNS)} FROM jobs"
# A job's spec as listings show it (jobs.store.records.shown_spec), made by DuckDB: inline texts
# (up to the request body limit, 16 MiB) become their count and their ids and metadata are
# left out, so a page of jobs never carries their texts into Python to be parsed and dropped.
_SHOWN_SPEC = (
    "CASE WHEN json_type(spec, '$.texts') = 'ARRAY' THEN json_merge_patch(spec, "
    "json_object('texts', json_array_length(spec, '$.texts'), 'ids', NULL, "
    "'metadata', NULL))::VARCHAR ELSE spec END"
)
JOB_LIST_SELECT = (
    "SELECT " + ", ".join(_SHOWN_SPEC if c == "spec" else c for c in JOB_COLUMNS) + " FROM jobs"
)
TENANT_COLUMNS = [f.name for f in dataclasses.fields(TenantRecord)]
TENANT_SELECT = f"SELECT {', '.join(TENANT_COLUMNS)} FROM tenants"


def utcnow() -> datetime:
    return datetime.now(UTC)


def job_values(job: JobRecord) -> list[Any]:
    """A job's values in JOB_COLUMNS order, as stored."""
    values = []
    for column in JOB_COLUMNS:
        value = getattr(job, column)
        if column == "spec" or (column == "details" and value is not None):
            value = json.dumps(value)
        elif column == "history":
            value = json.dumps([list(h) for h in value])
        elif column == "status":
            value = str(value)
        values.append(value)
    return values


def job_from_row(row: Sequence[Any]) -> JobRecord:
    """A job from a row of JOB_SELECT."""
    data = dict(zip(JOB_COLUMNS, row))
    data["spec"] = json.loads(data["spec"])
    data["kind"] = data["kind"] or EMBED
    data["details"] = json.loads(data["details"]) if data["details"] else None
    data["history"] = [tuple(h) for h in json.loads(data["history"])]
    data["status"] = JobStatus(data["status"])
    return JobRecord(**data)


def tenant_from_row(row: Sequence[Any]) -> TenantRecord:
    """A tenant from a row of TENANT_SELECT."""
    return TenantRecord(**dict(zip(TENANT_COLUMNS, row)))


def transition_changes(
    job: JobRecord, new: JobStatus, now: datetime, **fields: Any
) -> dict[str, Any]:
    """The fields a move of `job` to `new` sets (the caller checks the move is allowed)."""
    changes: dict[str, Any] = dict(
        fields,
        status=JobStatus(new),
        updated_at=now,
        history=job.history + [(str(new), now.isoformat())],
    )
    if new == JobStatus.RUNNING and job.started_at is None:
        changes["started_at"] = now
    if new in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED):
        changes["finished_at"] = now
    return changes


def stored(changes: dict[str, Any]) -> dict[str, Any]:
    """`changes` as their columns hold them."""
    return {
        k: (
            json.dumps(v)
            if k in ("history", "details") and v is not None
            else str(v)
            if k == "status"
            else v
        )
        for k, v in changes.items()
    }
