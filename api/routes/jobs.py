"""/v1/jobs: create, list, get and cancel jobs; watch one over a WebSocket."""
from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Depends, Query, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentTenant, ServiceDep, rate_limit, tenant_for
from api.schemas import ErrorOut, JobList, JobOut
from jobs.errors import InvalidFieldError, NotFoundError
from jobs.events import AsyncSubscription
from jobs.log_context import add_log_fields
from jobs.records import JobRecord
from jobs.spec import JobSpec
from jobs.states import TERMINAL, JobStatus

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# The statuses as a Literal (not the enum itself): the OpenAPI query parameter stays a plain
# list of strings, and the list is jobs.states' own.
StatusFilter = Literal[tuple(s.value for s in JobStatus)]  # type: ignore[valid-type]
_TERMINAL = {s.value for s in TERMINAL}
_ERRORS = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}


def job_out(record: JobRecord, skipped=None) -> JobOut:
    out = JobOut.model_validate(record.to_dict())
    # The dashboard is the operator's (no authentication): a tenant gets its link only from
    # GET /v1/cluster, and only where the operator exposes it.
    out.dashboard_link = None
    if skipped is not None:
        out.skipped = [{"source": s.source, "reason": s.reason} for s in skipped]
    return out


@router.post("", status_code=201, response_model=JobOut,
             responses={**_ERRORS, 429: {"model": ErrorOut}})
def create_job(spec: JobSpec, service: ServiceDep,
               tenant: Annotated[str, Depends(rate_limit("job creation"))]) -> JobOut:
    """Submit a job: a server-side `source` (under the allowed roots) or inline `texts`."""
    record = service.submit(tenant, spec)
    add_log_fields(job_id=record.id)
    return job_out(record)


@router.get("", response_model=JobList, responses=_ERRORS)
def list_jobs(service: ServiceDep, tenant: CurrentTenant,
              status: StatusFilter | None = None,
              table: Annotated[str | None, Query(max_length=128)] = None,
              limit: Annotated[int, Query(ge=1, le=500)] = 50,
              cursor: Annotated[str | None, Query(max_length=64)] = None,
              schedule: Annotated[str | None, Query(max_length=64)] = None) -> JobList:
    """The tenant's jobs, newest first; follow `next_cursor` for older ones. `schedule`:
    only the runs of that schedule."""
    try:
        jobs, next_cursor = service.list(tenant, status, table, limit, cursor, schedule)
    except NotFoundError:
        raise InvalidFieldError("cursor", f"unknown cursor {cursor!r}: use a next_cursor the "
                                          "API returned", location="query") from None
    return JobList(jobs=[job_out(j) for j in jobs], next_cursor=next_cursor)


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS)
def get_job(job_id: str, service: ServiceDep, tenant: CurrentTenant) -> JobOut:
    """A job's status and progress, with its skipped documents and their reasons."""
    record = service.get(job_id, tenant)
    return job_out(record, service.skipped(record))


@router.delete("/{job_id}", status_code=202, response_model=JobOut,
               responses={**_ERRORS, 409: {"model": ErrorOut}})
def cancel_job(job_id: str, service: ServiceDep, tenant: CurrentTenant) -> JobOut:
    """Cancel a queued or running job; its rows are removed. 409 once it has finished."""
    return job_out(service.cancel(job_id, tenant))


@router.websocket("/{job_id}/events")
async def job_events(websocket: WebSocket, job_id: str, token: str | None = None) -> None:
    """Progress events until the job ends. The first message is the job's current state. Send
    the key as 'Authorization: Bearer <key>', or as ?token= where headers cannot be set."""
    service = websocket.app.state.service
    header = websocket.headers.get("authorization", "")
    key = header[7:] if header.lower().startswith("bearer ") else token
    # Subscribed first, then read: no event between the two is lost.
    subscription = AsyncSubscription(service.bus, job_id)
    try:
        try:
            tenant = await run_in_threadpool(tenant_for, service, key)
            current = (await run_in_threadpool(service.get, job_id, tenant)).to_dict()
        except Exception as exc:  # 401 or 404: refuse the handshake
            await websocket.close(code=1008, reason=str(getattr(exc, "detail", exc))[:120])
            return
        await websocket.accept()
        await websocket.send_json({"type": "status", "job": current})
        status = current["status"]
        while status not in _TERMINAL:
            event = await subscription.queue.get()
            await websocket.send_json(event)
            status = event["job"]["status"]
        await websocket.close(code=1000)
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
