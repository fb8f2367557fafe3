"""Rows of the control plane as typed records, and partitions to and from JSON."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from datetime import datetime
from typing import Any

from embedscale.engine.sources.partitions import FileSlice, InlineText, Item, Partition, TableDocs
from embedscale.jobs.policies.rates import job_rates
from embedscale.jobs.states import JobStatus

EMBED, MAINTENANCE, MIGRATION = "embed", "maintenance", "migration"
JOB_KINDS = (EMBED, MAINTENANCE, MIGRATION)  # what a row of `jobs` is: see JobRecord.kind
# The kinds the runner runs on the cluster: a migration job embeds a table's documents again
# with another model into a new generation of the table (jobs/migrations/), as a job of the
# tenant's (its quota, concurrency slot and priority apply).
RUNNER_KINDS = (EMBED, MIGRATION)


@dataclass
class JobRecord:
    """A job as stored: spec, status with history, timestamps, progress, outcome."""

    id: str
    tenant: str
    spec: dict[str, Any]
    status: JobStatus
    priority: str
    table_name: str
    history: list[tuple[str, str]]
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    estimated_chunks: int = 0
    partitions_total: int = 0
    partitions_done: int = 0
    documents_done: int = 0
    documents_unchanged: int = 0
    chunks_done: int = 0
    tokens_done: int = 0
    skipped_count: int = 0
    error: str | None = None
    error_reason: str | None = None
    dashboard_link: str | None = None
    documents_changed: int = 0  # of documents_done, those that replaced older content
    documents_deleted: int = 0  # sync: gone from the source, removed from the table
    schedule_id: str | None = None  # the schedule that started this job, if one did
    # Partition time on GPUs, the part of it a kernel ran (NVML), the most GPU memory held.
    gpu_seconds: float = 0.0
    gpu_busy_seconds: float = 0.0
    gpu_peak_bytes: int = 0
    # `embed`, `maintenance` (a table's compaction, index refresh and version cleanup) or
    # `migration` (a new generation of a table built with another model: jobs/migrations/);
    # `details` is what a maintenance run did (fragments, versions and bytes before and after),
    # or which generation a migration job builds.
    kind: str = EMBED
    details: dict[str, Any] | None = None

    @property
    def gpu_busy_percent(self) -> float | None:
        """How busy the job's GPUs were while its partitions ran; None off GPUs."""
        if not self.gpu_seconds:
            return None
        return round(100.0 * self.gpu_busy_seconds / self.gpu_seconds, 1)

    @property
    def seconds(self) -> float | None:
        """Run time so far (or in all, once finished)."""
        if self.started_at is None:
            return None
        end = self.finished_at or datetime.now(self.started_at.tzinfo)
        return (end - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready view, for the API, the CLI's --json and progress events."""
        # Field by field, not dataclasses.asdict: that deep-copies the spec, every inline
        # text included (measured: 90 ms for 30 jobs of 3,000 texts), only to drop them.
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data["status"] = str(self.status)
        for key in ("created_at", "updated_at", "started_at", "finished_at"):
            data[key] = data[key].isoformat() if data[key] else None
        data["history"] = [list(h) for h in self.history]
        data["table"] = data.pop("table_name")
        seconds = self.seconds
        data["seconds"] = round(seconds, 3) if seconds is not None else None
        rates = job_rates(
            self.chunks_done,
            self.tokens_done,
            seconds,
            running=self.status == JobStatus.RUNNING,
            estimated_chunks=self.estimated_chunks,
            partitions_done=self.partitions_done,
            partitions_total=self.partitions_total,
        )
        data["chunks_per_s"] = round(rates.chunks_per_s, 2)
        data["tokens_per_s"] = round(rates.tokens_per_s, 2)
        data["eta_seconds"] = round(rates.eta_seconds, 1) if rates.eta_seconds is not None else None
        data["expected_chunks"] = rates.expected_chunks
        data["gpu_busy_percent"] = self.gpu_busy_percent
        data["gpu_peak_memory_bytes"] = self.gpu_peak_bytes or None
        data["progress"] = {
            "partitions": [self.partitions_done, self.partitions_total],
            "documents": self.documents_done,
            "chunks": self.chunks_done,
            "tokens": self.tokens_done,
            "skipped": self.skipped_count,
        }
        data["spec"] = shown_spec(self.spec)
        return data


def shown_spec(spec: dict[str, Any]) -> dict[str, Any]:
    """A job's spec as shown to people and clients: inline texts (which can be large) as their
    count, without their ids and metadata. A spec shown already is returned as it is."""
    spec = dict(spec)
    if isinstance(spec.get("texts"), list):
        spec["texts"] = len(spec["texts"])
        spec.pop("metadata", None)
        spec.pop("ids", None)
    return spec


@dataclass(frozen=True)
class TenantRecord:
    """A tenant, its tier and its own overrides of the tier's limits."""

    name: str
    tier: str
    daily_chunks: int | None
    max_concurrent_jobs: int | None
    created_at: datetime


@dataclass
class StoredPartition:
    """A partition of a job as stored: its references, status and attempts."""

    partition: Partition
    status: str = "pending"
    attempts: int = 0
    chunks: int = 0
    error: str | None = None


def partition_to_json(p: Partition) -> str:
    kinds = {FileSlice: "file", InlineText: "inline", TableDocs: "table"}
    return json.dumps([{"kind": kinds[type(i)], **asdict(i)} for i in p.items])


def partition_from_json(index: int, text: str) -> Partition:
    items: list[Item] = []
    for raw in json.loads(text):
        kind = raw.pop("kind")
        if kind == "file":
            items.append(FileSlice(**raw))
        elif kind == "table":  # a migration's documents (jobs/migrations/planning.py)
            items.append(
                TableDocs(raw["uri"], raw["version"], tuple(raw["doc_ids"]), raw["size_bytes"])
            )
        else:  # an ended job's past its retention keeps only the id (jobs/store/retention.py)
            items.append(
                InlineText(raw["doc_id"], raw.get("text", ""), raw.get("metadata_json", "{}"))
            )
    return Partition(index, tuple(items))
