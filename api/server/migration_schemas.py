"""Request and response schemas of a table's migrations (/v1/tables/{name}/migrations): a new
generation of the table built with another model, the switch, the rollback and the comparison."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from embedscale.jobs.spec import Precision, Priority, Provider
from embedscale.jobs.textcheck import NameStr, Utf8Str

MAX_COMPARE_QUERIES = 1000  # jobs.migrations.compare.MAX_QUERIES


class MigrationRequest(BaseModel):
    """Move a table to another model: its documents embedded again into a new generation, in
    the background, while searches keep answering from the current one."""

    model_config = ConfigDict(extra="forbid")

    model: NameStr = Field(
        min_length=1,
        max_length=512,
        description="the new model: the service's default or one its operator allows",
    )
    provider: Provider | None = Field(
        None, description="where its vectors come from (default: the table's)"
    )
    provider_url: NameStr | None = Field(
        None,
        max_length=2048,
        description="provider openai: the endpoint's base URL (default: the table's)",
    )
    switch: Literal["auto", "manual"] = Field(
        "manual",
        description=(
            "auto: switch to the new generation as soon as it is built; manual (default): wait "
            "for POST .../migrations/switch, after comparing (POST .../migrations/compare)"
        ),
    )
    priority: Priority = Field("normal", description="the migration job's priority")
    precision: Precision = Field(
        "auto", description="the number format the new model runs in (a job's precision)"
    )


class GenerationOut(BaseModel):
    """One generation of a table: a physical copy of its rows embedded with one model."""

    generation: int
    model: str
    provider: str
    state: str = Field(description="building, built, active, retired, failed or removed")
    job_id: str | None = Field(description="the migration job that built it")
    catch_up_job: str | None = Field(
        description="the latest job that embedded what changed in the active generation meanwhile"
    )
    switch_requested: bool = Field(description="a switch to it waits for its reconciliation")
    switch_mode: str
    reuse_chunks: bool = Field(description="the chunks kept as they were (the same tokenizer)")
    error: str | None = Field(description="why it failed, or why a switch to it waits")
    created_at: str
    activated_at: str | None
    retired_at: str | None


class MigrationOut(BaseModel):
    """A table's generations: which one answers searches, and each one's state."""

    table: str
    active: int = Field(description="the generation searches and jobs reach")
    generations: list[GenerationOut]


class CompareRequest(BaseModel):
    """Queries to search in both generations of a table."""

    model_config = ConfigDict(extra="forbid")

    queries: list[Utf8Str] = Field(min_length=1, max_length=MAX_COMPARE_QUERIES)
    k: int = Field(10, ge=1, le=1000, strict=True, description="results per query")


class SpreadOut(BaseModel):
    min: float | None
    median: float | None
    max: float | None


class SideOut(BaseModel):
    """One generation's figures over the queries."""

    generation: int
    model: str
    top1_score: SpreadOut
    topk_score: SpreadOut
    latency_ms_p50: float
    latency_ms_p95: float


class ComparisonOut(BaseModel):
    """Both generations on the same queries: how much their top k agree, their scores, their
    latency."""

    table: str
    queries: int
    k: int
    chunk_overlap: float = Field(description="mean share of top-k chunks both return (1: same)")
    document_overlap: float = Field(description="the same, counting documents")
    active: SideOut
    candidate: SideOut
