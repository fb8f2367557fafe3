"""/v1/schedules: a tenant's cron-triggered runs; create, list, get, pause, resume, run now and
remove. Each run is an ordinary job carrying the schedule's id (GET /v1/jobs?schedule=ID)."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from embedscale.api.server.deps import CurrentTenant, ServiceDep, rate_limit
from embedscale.api.server.ratelimit import JOB_CREATION, SCHEDULE_CREATION
from embedscale.api.server.routes.jobs import job_out
from embedscale.api.server.schedule_schemas import ScheduleCreate, ScheduleList, ScheduleOut
from embedscale.api.server.schemas import JobOut, error_responses
from embedscale.jobs.policies.schedules import ScheduleRecord

router = APIRouter(prefix="/v1/schedules", tags=["schedules"])
ScheduleId = Annotated[str, Path(min_length=1, max_length=64)]
_ERRORS = (401, 404)  # every route here may answer these
_RESPONSES = error_responses(*_ERRORS)


def schedule_out(record: ScheduleRecord) -> ScheduleOut:
    return ScheduleOut.model_validate(record.to_dict())


@router.post(
    "",
    status_code=201,
    response_model=ScheduleOut,
    responses=error_responses(*_ERRORS, 409, 429),
)
def create_schedule(
    body: ScheduleCreate,
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(SCHEDULE_CREATION))],
) -> ScheduleOut:
    """A new schedule. The cron expression, the time zone and the template (checked as a
    POST /v1/jobs body: allowed roots, allowed models) must all pass: else 422 naming the
    field, and nothing is stored. 409 when the tenant has the most schedules allowed."""
    return schedule_out(
        service.schedules.create(tenant, body.cron, body.template, body.timezone, body.enabled)
    )


@router.get("", response_model=ScheduleList, responses=_RESPONSES)
def list_schedules(service: ServiceDep, tenant: CurrentTenant) -> ScheduleList:
    """The tenant's schedules, oldest first."""
    return ScheduleList(schedules=[schedule_out(s) for s in service.schedules.list(tenant)])


@router.get("/{schedule_id}", response_model=ScheduleOut, responses=_RESPONSES)
def get_schedule(
    schedule_id: ScheduleId, service: ServiceDep, tenant: CurrentTenant
) -> ScheduleOut:
    """A schedule with its next slot and what its latest run did."""
    return schedule_out(service.schedules.get(schedule_id, tenant))


@router.delete("/{schedule_id}", response_model=ScheduleOut, responses=_RESPONSES)
def delete_schedule(
    schedule_id: ScheduleId, service: ServiceDep, tenant: CurrentTenant
) -> ScheduleOut:
    """Remove a schedule (returned as it was). A run already submitted goes on."""
    return schedule_out(service.schedules.delete(schedule_id, tenant))


@router.post(
    "/{schedule_id}/pause", response_model=ScheduleOut, responses=error_responses(*_ERRORS)
)
def pause_schedule(
    schedule_id: ScheduleId, service: ServiceDep, tenant: CurrentTenant
) -> ScheduleOut:
    """Stop firing until resumed."""
    return schedule_out(service.schedules.pause(schedule_id, tenant))


@router.post(
    "/{schedule_id}/resume", response_model=ScheduleOut, responses=error_responses(*_ERRORS)
)
def resume_schedule(
    schedule_id: ScheduleId, service: ServiceDep, tenant: CurrentTenant
) -> ScheduleOut:
    """Fire again from the next slot after now (slots passed while paused are not run)."""
    return schedule_out(service.schedules.resume(schedule_id, tenant))


@router.post(
    "/{schedule_id}/run",
    status_code=201,
    response_model=JobOut,
    responses=error_responses(*_ERRORS, 409, 429),
)
def run_schedule_now(
    schedule_id: ScheduleId,
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(JOB_CREATION))],
) -> JobOut:
    """Submit a run now, besides the schedule's slots: 409 while a run of it is active, and
    the refusals of POST /v1/jobs (429 quota, 422 source)."""
    return job_out(service.schedules.run_now(schedule_id, tenant))
