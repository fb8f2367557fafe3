"""Maintenance runs as jobs: each one a row of `jobs` of kind `maintenance`, so operators and
tenants see it where they see every job (the job list, `embedscale jobs show`, /metrics' jobs by
status), with what it did as its details. It holds no concurrency slot and charges no quota
(Store.active_job_counts counts embed jobs only), and cannot be cancelled; one a stopped
process left unfinished is ended as failed when the runner starts again (`end_interrupted`)."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import MAINTENANCE, JobRecord
from embedscale.jobs.store.rows import utcnow

INTERRUPTED = "interrupted: the process running it stopped; the next run starts over"


def maintenance_record(
    tenant: str, table_name: str, details: dict[str, Any] | None = None, **spec: Any
) -> JobRecord:
    """A new maintenance job of the tenant's table (queued; the caller starts it): a run, or
    an operator's restore (`spec` says which, `details` what it is about to do)."""
    now = utcnow()
    return JobRecord(
        id=uuid.uuid4().hex,
        tenant=tenant,
        spec={"kind": MAINTENANCE, "table": table_name, **spec},
        status=JobStatus.QUEUED,
        priority="normal",
        table_name=table_name,
        history=[(str(JobStatus.QUEUED), now.isoformat())],
        created_at=now,
        updated_at=now,
        kind=MAINTENANCE,
        details=details,
    )


class StoredMaintenanceRuns:
    """Records the runs of TableMaintenance in the store; `publish` tells watchers (the API's
    WebSockets and the job list's caches) of each change, as the runner does for jobs."""

    def __init__(self, store: Store, publish: Callable[[JobRecord], None]) -> None:
        self.store, self.publish = store, publish

    def started(self, tenant: str, table_name: str) -> str:
        record = maintenance_record(tenant, table_name)
        self.store.insert_job(record, [])
        for running in self.store.start_jobs([record.id]):
            self.publish(running)
        return record.id

    def ended(self, run_id: str, details: dict[str, Any], error: str | None) -> None:
        status = JobStatus.FAILED if error else JobStatus.SUCCEEDED
        fields: dict[str, Any] = {"details": details}
        if error:
            fields.update(error=error, error_reason="maintenance_failed")
        record = self.store.finish(run_id, status, **fields)
        if record is not None:
            self.publish(record)

    def end_interrupted(self) -> list[JobRecord]:
        """End the runs a stopped process left unfinished (failed, as interrupted)."""
        ended = []
        for run in self.store.unfinished_jobs(kind=MAINTENANCE):
            status = JobStatus.FAILED
            if run.status == JobStatus.QUEUED:
                self.store.start_jobs([run.id])
            record = self.store.finish(
                run.id, status, error=INTERRUPTED, error_reason="maintenance_interrupted"
            )
            if record is not None:
                ended.append(record)
        return ended
