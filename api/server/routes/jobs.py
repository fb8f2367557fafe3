"""/v1/jobs: create, list, get and cancel jobs; watch one over a WebSocket."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Annotated, Literal

from fastapi import APIRouter, Depends, Query, Request, Response, WebSocket, WebSocketDisconnect
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel

from embedscale.api.server.deps import (
    AuthenticatedTenant,
    CurrentTenant,
    ServiceDep,
    rate_limit,
    spend,
    tenant_for,
)
from embedscale.api.server.ratelimit import JOB_CREATION, READS
from embedscale.api.server.schemas import JobList, JobOut, SkippedOut, error_responses
from embedscale.api.server.socket_limits import OpenSockets, refuse_over_limit
from embedscale.jobs.errors import InvalidFieldError, NotFoundError
from embedscale.jobs.events import AsyncSubscription
from embedscale.jobs.log_context import add_log_fields
from embedscale.jobs.service import JobService
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.states import TERMINAL, JobStatus
from embedscale.jobs.store.records import JobRecord

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])
# The statuses as a Literal (not the enum itself): the OpenAPI query parameter stays a plain
# list of strings, and the list is jobs.states' own.
# Type checkers see a string: the Literal is built from the enum at run time.
if TYPE_CHECKING:
    StatusFilter = str
else:
    StatusFilter = Literal[tuple(s.value for s in JobStatus)]
_TERMINAL = {s.value for s in TERMINAL}
_ERRORS = (401, 404, 429)
# The most jobs a page holds: a page is read, shown and sent in one request, and a client
# polling a page of 500 took one core of the service (measured: another tenant's small jobs
# fell from 444 to 13.5 a minute). Follow next_cursor for more.
MAX_PAGE = 100
JOBS_PER_READ = 10  # a page costs one read of the tenant's reads bucket per 10 jobs it may hold


def job_out(record: JobRecord, skipped=None) -> JobOut:
    out = JobOut.model_validate(record.to_dict())
    # The dashboard is the operator's (no authentication): a tenant gets its link only from
    # GET /v1/cluster, and only where the operator exposes it.
    out.dashboard_link = None
    if skipped is not None:
        out.skipped = [SkippedOut(source=s.source, reason=s.reason) for s in skipped]
    return out


def as_json(model: BaseModel, status_code: int = 200) -> Response:
    """`model` as a JSON answer, serialised where this is called: a sync route's worker thread,
    not the event loop (FastAPI validates and serialises a returned model again, there)."""
    return Response(model.model_dump_json(), status_code=status_code, media_type="application/json")


@router.post("", status_code=201, response_model=JobOut, responses=error_responses(*_ERRORS))
def create_job(
    spec: JobSpec, service: ServiceDep, tenant: Annotated[str, Depends(rate_limit(JOB_CREATION))]
) -> JobOut:
    """Submit a job: a server-side `source` (under the allowed roots) or inline `texts`."""
    record = service.submit(tenant, spec)
    add_log_fields(job_id=record.id)
    return job_out(record)


@router.get("", response_model=JobList, responses=error_responses(*_ERRORS))
async def list_jobs(
    request: Request,
    service: ServiceDep,
    tenant: AuthenticatedTenant,
    status: StatusFilter | None = None,
    table: Annotated[str | None, Query(max_length=128)] = None,
    # Checked below, for an answer that says what to do; the schema says it.
    limit: Annotated[
        int, Query(ge=1, json_schema_extra={"maximum": MAX_PAGE}, description="jobs a page holds")
    ] = 50,
    cursor: Annotated[str | None, Query(max_length=64)] = None,
    schedule: Annotated[str | None, Query(max_length=64)] = None,
    kind: Literal["embed", "maintenance", "migration"] | None = None,
) -> Response:
    """The tenant's jobs, newest first, at most 100 a page; follow `next_cursor` for older
    ones. `schedule`: only the runs of that schedule; `kind`: only embed jobs or only the
    maintenance runs of the tenant's tables. A page costs one read of the tenant's allowance
    per 10 jobs it may hold."""
    if limit > MAX_PAGE:
        raise InvalidFieldError(
            "limit",
            f"limit={limit} is over the most a page holds "
            f"({MAX_PAGE}): ask for {MAX_PAGE} or fewer and "
            "follow next_cursor for the rest",
            location="query",
        )
    await spend(request.app, tenant, READS, -(-limit // JOBS_PER_READ))
    return await run_in_threadpool(
        _page, service, tenant, status, table, limit, cursor, schedule, kind
    )


def _page(
    service: JobService,
    tenant: str,
    status: str | None,
    table: str | None,
    limit: int,
    cursor: str | None,
    schedule: str | None,
    kind: str | None = None,
) -> Response:
    """A page of jobs, read, shown and serialised in a worker thread."""
    try:
        jobs, next_cursor = service.list(tenant, status, table, limit, cursor, schedule, kind)
    except NotFoundError:
        raise InvalidFieldError(
            "cursor",
            f"unknown cursor {cursor!r}: use a next_cursor the API returned",
            location="query",
        ) from None
    return as_json(JobList(jobs=[job_out(j) for j in jobs], next_cursor=next_cursor))


@router.get("/{job_id}", response_model=JobOut, responses=error_responses(*_ERRORS))
def get_job(job_id: str, service: ServiceDep, tenant: CurrentTenant) -> Response:
    """A job's status and progress, with its skipped documents and their reasons."""
    record = service.get(job_id, tenant)
    return as_json(job_out(record, service.skipped(record)))


@router.delete(
    "/{job_id}",
    status_code=202,
    response_model=JobOut,
    responses=error_responses(*_ERRORS, 409),
)
def cancel_job(job_id: str, service: ServiceDep, tenant: CurrentTenant) -> JobOut:
    """Cancel a queued or running job; its rows are removed. 409 once it has finished."""
    return job_out(service.cancel(job_id, tenant))


@router.websocket("/{job_id}/events")
async def job_events(websocket: WebSocket, job_id: str, token: str | None = None) -> None:
    """Progress events until the job ends. The first message is the job's current state. Send
    the key as 'Authorization: Bearer <key>', or as ?token= where headers cannot be set. A
    tenant holds at most max_websockets_per_tenant of these open; one more is a 429."""
    service = websocket.app.state.service
    sockets: OpenSockets = websocket.app.state.sockets
    header = websocket.headers.get("authorization", "")
    key = header[7:] if header.lower().startswith("bearer ") else token
    # Subscribed first, then read: no event between the two is lost.
    subscription = AsyncSubscription(service.bus, job_id)
    holder: str | None = None  # the tenant whose place this socket holds
    try:
        try:
            tenant = await run_in_threadpool(tenant_for, service, key)
            await spend(websocket.app, tenant, READS)
            current = (await run_in_threadpool(service.get, job_id, tenant)).to_dict()
        except Exception as exc:  # 401, 429 or 404: refuse the handshake
            await websocket.close(code=1008, reason=str(getattr(exc, "detail", exc))[:120])
            return
        if not sockets.take(tenant):
            await refuse_over_limit(websocket, sockets.refusal(tenant))
            return
        holder = tenant
        await websocket.accept()
        await websocket.send_json({"type": "status", "job": current})
        if await _forward(websocket, subscription, current["status"]):
            await websocket.close(code=1000)
    except WebSocketDisconnect:
        pass
    finally:
        subscription.close()
        if holder is not None:
            sockets.give_back(holder)


async def _forward(websocket: WebSocket, subscription: AsyncSubscription, status: str) -> bool:
    """Send the job's events until it ends (True), or until the client goes (False). The
    client is listened to meanwhile: a socket it closed gives back its place at once, not at
    the job's next event (a queued job may have none for hours)."""
    listening = asyncio.ensure_future(websocket.receive())
    event = asyncio.ensure_future(subscription.queue.get())
    try:
        while status not in _TERMINAL:
            await asyncio.wait({event, listening}, return_when=asyncio.FIRST_COMPLETED)
            if listening.done():
                if listening.result()["type"] == "websocket.disconnect":
                    return False
                listening = asyncio.ensure_future(websocket.receive())  # nothing to answer
            if event.done():
                await websocket.send_json(event.result())
                status = event.result()["job"]["status"]
                event = asyncio.ensure_future(subscription.queue.get())
        return True
    finally:
        listening.cancel()
        event.cancel()
