"""/v1/tables/{name}/migrations: move a table to another model without downtime (a new
generation built by a job of kind migration, compared, switched to in one step, rolled back)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool

from embedscale.api.server.deps import CurrentTenant, ServiceDep, rate_limit
from embedscale.api.server.migration_schemas import (
    CompareRequest,
    ComparisonOut,
    MigrationOut,
    MigrationRequest,
)
from embedscale.api.server.ratelimit import SEARCH
from embedscale.api.server.routes.tables import TableName
from embedscale.api.server.schemas import error_responses

router = APIRouter(prefix="/v1/tables", tags=["migrations"])
_ERRORS = (401, 404, 409, 422)


def _out(view: Any) -> MigrationOut:
    return MigrationOut(**view.to_dict())


@router.post(
    "/{name}/migrations",
    status_code=202,
    response_model=MigrationOut,
    responses=error_responses(*_ERRORS, 429),
)
async def start_migration(
    name: TableName, request: MigrationRequest, service: ServiceDep, tenant: CurrentTenant
) -> MigrationOut:
    """Start building a new generation of the table with `model`, as a job of kind migration
    (its progress: the job's, GET /v1/jobs/{id} and its WebSocket). 409 while another migration
    of the table is under way; 422 naming `model` for a model not offered or the table's own."""
    view = await run_in_threadpool(
        service.migrate,
        tenant,
        name,
        request.model,
        request.provider,
        request.switch,
        request.priority,
        request.provider_url,
        request.precision,
    )
    return _out(view)


@router.get("/{name}/migrations", response_model=MigrationOut, responses=error_responses(401, 404))
def migration_state(name: TableName, service: ServiceDep, tenant: CurrentTenant) -> MigrationOut:
    """The table's generations: the active one, and any building, built or retired."""
    return _out(service.migration(tenant, name))


@router.post(
    "/{name}/migrations/switch", response_model=MigrationOut, responses=error_responses(*_ERRORS)
)
async def switch_migration(
    name: TableName, service: ServiceDep, tenant: CurrentTenant
) -> MigrationOut:
    """Switch the table to its built generation: reconciled with the active one first (what
    jobs changed meanwhile is embedded by a catch-up job), then made active in one step while no
    job writes the table. The answer says whether it is active yet (`active`) or why it waits
    (its `error`). 409 while it is still building, or when there is none."""
    return _out(await run_in_threadpool(service.switch_migration, tenant, name))


@router.post(
    "/{name}/migrations/rollback", response_model=MigrationOut, responses=error_responses(*_ERRORS)
)
async def rollback_migration(
    name: TableName, service: ServiceDep, tenant: CurrentTenant
) -> MigrationOut:
    """Switch the table back to the generation its latest switch retired (kept for the
    service's version retention), reconciled the same way; 409 when there is none."""
    return _out(await run_in_threadpool(service.rollback_migration, tenant, name))


@router.post(
    "/{name}/migrations/compare",
    response_model=ComparisonOut,
    responses=error_responses(*_ERRORS, 429),
)
async def compare_migration(
    name: TableName,
    request: CompareRequest,
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(SEARCH))],
) -> ComparisonOut:
    """The same queries searched in the active generation and in the other one (built, or
    retired by the latest switch): top-k overlap, score spreads and latency of each. 409 when
    the table has no other generation."""
    report = await run_in_threadpool(
        service.compare_migration, tenant, name, request.queries, request.k
    )
    return ComparisonOut(**report.to_dict())
