"""One job from Python, without a service: `run_embedding(request, cluster)`.

A thin wrapper over the control plane, not a second driver loop: it opens a JobService on the
request's data dir (its DuckDB file beside the tables) in this process, submits the job as the
local tenant, and waits for the runner, the same loop that serves the API and the CLI. So every
guarantee (exactly once, retries, resume after a crash with `embedscale jobs resume`, row-id
uniqueness) holds here because it is proven there.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Annotated, Any

from pydantic import BeforeValidator, Field

from embedscale.engine.cluster.start import Cluster
from embedscale.engine.errors import EmbedscaleError
from embedscale.engine.sources.documents import Skipped
from embedscale.engine.storage.locations import check_reachable, resolve_storage_options
from embedscale.jobs.runner.loop import RunnerConfig
from embedscale.jobs.service import JobService
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.states import JobStatus
from embedscale.jobs.tenants.accounts import LOCAL_TENANT


class JobFailedError(EmbedscaleError):
    """The job ended failed; `summary` says what it did before, `summary.error` why."""

    def __init__(self, summary: RunSummary) -> None:
        super().__init__(f"job {summary.job_id} failed ({summary.error_reason}): {summary.error}")
        self.summary = summary


def _path_text(value: Any) -> Any:
    return os.fspath(value) if isinstance(value, os.PathLike) else value


# A folder given as a str or a Path, kept as a str.
PathText = Annotated[str, BeforeValidator(_path_text)]


class EmbedRequest(JobSpec):
    """One job from Python: the job's fields, as the API and the CLI take them (JobSpec,
    validated when the request is made), and how this process runs it."""

    data_dir: PathText = Field(
        "./embedscale-data", description="tables and the job-state file (embedscale.duckdb)"
    )
    # Job state stays in data_dir; the tables may live on an object store instead.
    tables_uri: str | None = Field(
        None, description="keep tables on an object store instead, e.g. s3://bucket/prefix"
    )
    storage_options: dict[str, Any] | None = Field(
        None, description="the object store's endpoint and credentials (default: AWS_* variables)"
    )
    partition_bytes: int | None = Field(
        None,
        gt=0,
        strict=True,
        description="bytes of documents per task (default: sized for the cluster)",
    )
    token_budget: int | None = Field(
        None, gt=0, strict=True, description="padded tokens per forward pass (default: per device)"
    )
    max_attempts: int = Field(
        3,
        ge=1,
        strict=True,
        description="tries per partition, with exponential backoff between them",
    )

    def spec(self) -> JobSpec:
        """The request as the control plane's job spec: its JobSpec fields, checked again (a
        request is a mutable model)."""
        return JobSpec.model_validate({name: getattr(self, name) for name in JobSpec.model_fields})


@dataclass
class Progress:
    """Counts so far, reported after each commit."""

    partitions_done: int
    partitions_total: int
    documents: int
    unchanged: int
    chunks: int
    tokens: int
    skipped: int
    elapsed: float
    expected_chunks: int | None = None  # in all: the record's estimate (None while unknown)
    eta_seconds: float | None = None  # the job record's: None while it cannot be told

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.elapsed if self.elapsed > 0 else 0.0

    @property
    def tokens_per_s(self) -> float:
        return self.tokens / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunSummary:
    """The result of a job: counts, skipped documents with reasons, where it went."""

    job_id: str
    status: str
    table: str
    table_uri: str
    model: str
    mode: str
    documents: int
    unchanged: int
    chunks: int
    tokens: int
    seconds: float
    partitions: int
    skipped: list[Skipped]
    error: str | None = None
    error_reason: str | None = None
    # The precision the job asked for and the forms its model ran in on the workers, with
    # their measured minimum cosine to fp32 and speed (engine.models.info.precision_forms).
    precision: dict[str, Any] | None = None

    @property
    def chunks_per_s(self) -> float:
        return self.chunks / self.seconds if self.seconds > 0 else 0.0

    @property
    def ok(self) -> bool:
        return self.status == JobStatus.SUCCEEDED

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["skipped"] = [asdict(s) for s in self.skipped]
        data["chunks_per_s"] = round(self.chunks_per_s, 2)
        data["seconds"] = round(self.seconds, 3)
        return data


def run_embedding(
    request: EmbedRequest, cluster: Cluster, on_progress: Callable[[Progress], None] | None = None
) -> RunSummary:
    """Run `request` on `cluster` through the control plane and return its summary. Raises
    JobFailedError when the job fails (the summary is on the error), and the control plane's
    own errors for a request it refuses (a bad field, a missing source)."""
    started = time.perf_counter()
    config = RunnerConfig(token_budget=request.token_budget, max_attempts=request.max_attempts)
    storage = resolve_storage_options(request.storage_options)
    if request.tables_uri:
        check_reachable(request.tables_uri, storage)
    with JobService(
        request.data_dir,
        cluster,
        runner_config=config,
        tables_uri=request.tables_uri,
        storage=storage,
    ) as service:
        service.start()
        record = service.submit(LOCAL_TENANT, request.spec(), request.partition_bytes)
        unsubscribe = service.bus.subscribe(record.id, _reporter(on_progress, started))
        try:
            final = service.wait(record.id)
        finally:
            unsubscribe()
        summary = RunSummary(
            final.id,
            str(final.status),
            final.table_name,
            service.table_uri(LOCAL_TENANT, final.table_name),
            final.spec.get("model", request.model),
            request.mode,
            final.documents_done,
            final.documents_unchanged,
            final.chunks_done,
            final.tokens_done,
            time.perf_counter() - started,
            final.partitions_total,
            service.skipped(final),
            final.error,
            final.error_reason,
            (final.details or {}).get("model_precision"),
        )
    if final.status == JobStatus.FAILED:
        raise JobFailedError(summary)
    return summary


def _reporter(on_progress: Callable[[Progress], None] | None, started: float):
    def report(event: dict[str, Any]) -> None:
        if on_progress is None or event.get("type") != "progress":
            return
        job = event["job"]
        on_progress(
            Progress(
                job["partitions_done"],
                job["partitions_total"],
                job["documents_done"],
                job["documents_unchanged"],
                job["chunks_done"],
                job["tokens_done"],
                job["skipped_count"],
                time.perf_counter() - started,
                job["expected_chunks"],
                job["eta_seconds"],
            )
        )

    return report
