"""Request and response schemas of /v1/schedules (the job template is a jobs.spec.JobSpec,
validated exactly as the body of POST /v1/jobs)."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from embedscale.jobs.policies.schedules import MAX_CRON_LENGTH, MAX_TIMEZONE_LENGTH
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.textcheck import NameStr


class ScheduleCreate(BaseModel):
    """A cron expression in a time zone, and the job each of its runs submits."""

    model_config = ConfigDict(extra="forbid")

    cron: NameStr = Field(
        max_length=MAX_CRON_LENGTH,
        examples=["0 2 * * *"],
        description="five fields (minute hour day-of-month month "
        "day-of-week) or an alias such as @daily",
    )
    timezone: NameStr = Field(
        "UTC",
        max_length=MAX_TIMEZONE_LENGTH,
        description="IANA time zone the cron expression is read in",
    )
    template: JobSpec = Field(description="the job each run submits: a POST /v1/jobs body")
    enabled: bool = Field(True, description="false: created paused")


class ScheduleOut(BaseModel):
    """A schedule: when it fires, what it submits, and what its runs did."""

    id: str
    tenant: str
    cron: str
    timezone: str
    template: dict[str, Any] = Field(description="the job template (inline texts counted)")
    enabled: bool
    created_at: str
    updated_at: str | None
    next_run_at: str | None = Field(description="the next slot, in UTC; null while paused")
    last_run_at: str | None = Field(description="when the latest run's job was submitted")
    last_job_id: str | None
    last_outcome: str | None = Field(
        description="of the latest due slot: fired, skipped (the previous run was still "
        "active), refused (see last_error) or claimed (being submitted)"
    )
    last_outcome_at: str | None
    last_error: str | None = Field(description="why the latest run was refused")
    runs_fired: int
    runs_skipped: int
    runs_refused: int


class ScheduleList(BaseModel):
    schedules: list[ScheduleOut]
