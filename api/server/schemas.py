"""Response schemas of the HTTP API (requests are jobs.spec.JobSpec and the models below)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationInfo, field_validator

from embedscale.engine.tables.search import Hit
from embedscale.engine.tables.search_options import (
    DEFAULT_MODE,
    DEFAULT_NPROBES,
    DEFAULT_REFINE,
    MAX_NPROBES,
    MAX_REFINE,
    SearchMode,
)
from embedscale.jobs.tenants.accounts import TENANT_NAME_PATTERN
from embedscale.jobs.textcheck import NameStr, Utf8Str


class Progress(BaseModel):
    partitions: list[int] = Field(description="[done, total]")
    documents: int
    chunks: int
    tokens: int
    skipped: int


class SkippedOut(BaseModel):
    source: str
    reason: str


class JobOut(BaseModel):
    """A job: what was asked, where it is, what it did."""

    id: str
    tenant: str
    status: str
    priority: str
    table: str
    spec: dict[str, Any]
    history: list[list[str]]
    created_at: str
    updated_at: str
    started_at: str | None
    finished_at: str | None
    estimated_chunks: int
    partitions_total: int
    partitions_done: int
    documents_done: int
    documents_unchanged: int
    documents_changed: int = Field(
        0, description="of documents_done, those that replaced older content (upsert, sync)"
    )
    documents_deleted: int = Field(
        0, description="sync: documents gone from the source, deleted from the table"
    )
    chunks_done: int
    tokens_done: int
    skipped_count: int
    progress: Progress
    seconds: float | None
    chunks_per_s: float = Field(description="chunks embedded per second of run time")
    tokens_per_s: float = Field(description="tokens embedded per second of run time")
    eta_seconds: float | None = Field(
        description="seconds left at the rate so far, from the chunks still expected; null "
        "unless running with chunks done and chunks known to remain"
    )
    expected_chunks: int | None = Field(
        description="the chunks the job will make in all: estimated_chunks until the job "
        "outgrows it, then extrapolated from its finished partitions; once every "
        "partition is in, chunks_done"
    )
    error: str | None
    error_reason: str | None
    dashboard_link: str | None
    schedule_id: str | None = Field(None, description="the schedule whose run this job is")
    kind: Literal["embed", "maintenance", "migration"] = Field(
        "embed",
        description="embed (documents embedded into the table), maintenance (the table "
        "compacted, its indexes refreshed, its old versions removed) or migration (the table's "
        "documents embedded with another model into a new generation of it)",
    )
    details: dict[str, Any] | None = Field(
        None,
        description="maintenance: what each step did (fragments, indexes, versions, bytes); "
        "migration: the generation it builds and whether the chunks were reused; embed and "
        "migration: model_precision, the precision the job asked for and the forms its model "
        "runs in on the workers (form, precision, min_cosine and speedup against fp32 where "
        "measured, workers)",
    )
    gpu_busy_percent: float | None = Field(
        None,
        description="how busy the GPUs were while the job's partitions ran on them "
        "(NVML, sampled on the workers); null off GPUs",
    )
    gpu_peak_memory_bytes: int | None = Field(
        None, description="the most GPU memory a worker running the job held; null off GPUs"
    )
    skipped: list[SkippedOut] | None = None


class JobList(BaseModel):
    jobs: list[JobOut]
    next_cursor: str | None = Field(description="pass as ?cursor= for the next page")


class TableOut(BaseModel):
    name: str
    rows: int
    model: str | None
    dimension: int | None


class TableList(BaseModel):
    tables: list[TableOut]


_MODE_HELP = (
    "vector (nearest by meaning), text (BM25 over the words) or hybrid (both, fused by "
    "reciprocal rank)"
)
_FILTER_HELP = "one SQL condition on the table's columns, e.g. source = 'a.md'"
_NPROBES_HELP = (
    f"vector index partitions searched (default {DEFAULT_NPROBES}); more finds more, slower"
)
_REFINE_HELP = (
    f"k x refine candidates re-ranked by exact distance (default {DEFAULT_REFINE}); used "
    "where the table has a vector index"
)


class SearchRequest(BaseModel):
    # UTF-8 text only (a lone surrogate is a 422 here, not a 500 in the tokenizer); k strict.
    query: Utf8Str = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=1000, strict=True)
    mode: SearchMode = Field(DEFAULT_MODE, description=_MODE_HELP)
    filter: NameStr | None = Field(None, max_length=2000, description=_FILTER_HELP)
    where: NameStr | None = Field(
        None, max_length=2000, description="the same as `filter` (give one of the two)"
    )
    nprobes: int | None = Field(None, ge=1, le=MAX_NPROBES, strict=True, description=_NPROBES_HELP)
    refine: int | None = Field(None, ge=1, le=MAX_REFINE, strict=True, description=_REFINE_HELP)

    @field_validator("where")
    @classmethod
    def _one_filter(cls, where: str | None, info: ValidationInfo) -> str | None:
        if where is not None and info.data.get("filter") is not None:
            raise ValueError("give the filter as `filter` or as `where`, not both")
        return where

    @property
    def condition(self) -> str | None:
        """The filter, whichever name it came by."""
        return self.filter if self.filter is not None else self.where


class SearchQuery(BaseModel):
    """GET /v1/tables/{name}/search: the parameters of a SearchRequest in the query string
    (the filter as `where`)."""

    query: Utf8Str = Field(min_length=1, max_length=10_000)
    k: int = Field(10, ge=1, le=1000)
    mode: SearchMode = Field(DEFAULT_MODE, description=_MODE_HELP)
    where: NameStr | None = Field(None, max_length=2000, description=_FILTER_HELP)
    nprobes: int | None = Field(None, ge=1, le=MAX_NPROBES, description=_NPROBES_HELP)
    refine: int | None = Field(None, ge=1, le=MAX_REFINE, description=_REFINE_HELP)


class SearchResponse(BaseModel):
    hits: list[Hit]  # the engine's own record of a hit: doc_id, score, text, metadata, ...


class ProblemOut(BaseModel):
    kind: str = Field(description="a stable name: duplicate_ids, missing_rows, ...")
    message: str
    count: int = Field(description="rows (or ids) concerned")
    examples: list[str] = Field(description="a few of the row ids or job ids concerned")
    severity: str = Field(description="error (the table is not sound) or warning")


class VerifyOut(BaseModel):
    """A table checked against itself and the job ledger (`embedscale verify`)."""

    table: str
    tenant: str
    ok: bool = Field(description="no error among the problems")
    rows: int
    model: str | None
    dimension: int | None
    jobs: int = Field(description="jobs the ledger records for this table")
    problems: list[ProblemOut]


class TenantCreate(BaseModel):
    name: str = Field(min_length=1, max_length=64, pattern=TENANT_NAME_PATTERN)
    tier: NameStr = Field(min_length=1, max_length=64)


class TenantUpdate(BaseModel):
    tier: NameStr | None = Field(None, min_length=1, max_length=64)
    daily_chunks: int | None = Field(
        None, ge=0, strict=True, description="override of the tier's quota"
    )
    max_concurrent_jobs: int | None = Field(None, ge=0, strict=True)


class TenantOut(BaseModel):
    name: str
    tier: str
    daily_chunks: int | None
    max_concurrent_jobs: int | None
    created_at: str


class TenantCreated(TenantOut):
    api_key: str = Field(description="shown once: only its hash is stored")


class TenantKey(BaseModel):
    name: str
    api_key: str = Field(description="shown once; the tenant's older keys are revoked")


class ClusterOut(BaseModel):
    scheduler: str | None = Field(description="null unless the operator exposes the dashboard")
    dashboard_link: str | None = Field(description="null unless the operator exposes it")
    workers: int
    threads: int


class ErrorOut(BaseModel):
    detail: Any


def error_responses(*statuses: int, model: type[BaseModel] = ErrorOut) -> dict[int | str, Any]:
    """A route's documented error statuses, each with the body its errors have (OpenAPI)."""
    return {status: {"model": model} for status in statuses}
