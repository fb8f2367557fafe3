"""Response and request schemas of the admin's table routes (/v1/admin/tables) and a tenant's
table history: a table in full, its versions, a restore and a maintenance run."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field


class IndexOut(BaseModel):
    """One index of a table, and how many of its rows it covers or not yet."""

    name: str
    kind: str = Field(description="IVF_PQ, BTree, Inverted, ...")
    column: str
    indexed_rows: int
    unindexed_rows: int = Field(description="rows added since it was last brought up to date")


class TableDetailOut(BaseModel):
    """A table in full (`embedscale tables show`)."""

    name: str
    model: str | None
    dimension: int | None
    rows: int
    fragments: int
    version: int = Field(description="the latest")
    versions: int = Field(description="versions kept, the latest included")
    oldest_version: int
    bytes: int = Field(description="every kept version's files")
    indexes: list[IndexOut]


class VersionOut(BaseModel):
    """One version of a table, and what made it."""

    version: int
    timestamp: str
    rows: int
    fragments: int
    operation: str = Field(description="Lance's: Append, Delete, Overwrite, Rewrite, Restore...")
    jobs: list[str] = Field(description="the jobs whose work this version committed")
    undone: str | None = Field(description="the cancelled job whose rows it removed")
    restored: int | None = Field(description="the version a restore brought back")


class HistoryOut(BaseModel):
    """A page of a table's versions, newest first."""

    versions: list[VersionOut]
    next_before: int | None = Field(
        description="pass as `before` for the next page (null: no older version listed)"
    )


class RestoreIn(BaseModel):
    """The version to bring the table back to."""

    model_config = ConfigDict(extra="forbid")

    version: int = Field(ge=1, description="a version the table keeps (GET .../history)")


class RestoredOut(BaseModel):
    """What a restore did."""

    table: str
    version: int = Field(description="the version brought back")
    made: int = Field(description="the new version it made (the latest unchanged: nothing to do)")
    job_id: str | None = Field(description="the maintenance job recording it (null: none)")


class OptimizeOut(BaseModel):
    """A maintenance run of a table: started on the service's maintenance thread (see the job
    list, kind maintenance), or done already, with what it did."""

    started: bool
    job_id: str | None = None
    status: str | None = None
    details: dict[str, Any] | None = None
    error: str | None = None
