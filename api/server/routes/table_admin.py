"""/v1/admin/tables: any tenant's tables as the operator keeps them (admin key only): list,
show, history, optimize, restore, drop; what `embedscale tables ...` does on a data dir no
server owns."""

from __future__ import annotations

from dataclasses import asdict
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response

from embedscale.api.server.deps import ServiceDep, require_admin
from embedscale.api.server.schemas import TableList, TableOut, error_responses
from embedscale.api.server.table_schemas import (
    HistoryOut,
    OptimizeOut,
    RestoredOut,
    RestoreIn,
    TableDetailOut,
    VersionOut,
)
from embedscale.engine.sink.lance_sink import TABLE_NAME_PATTERN
from embedscale.engine.tables.versions import HISTORY_LIMIT, VersionInfo
from embedscale.jobs.service import JobService
from embedscale.jobs.tenants.accounts import LOCAL_TENANT, TENANT_NAME_PATTERN

router = APIRouter(
    prefix="/v1/admin/tables",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401, 404),
)
TableName = Annotated[str, Path(min_length=1, max_length=128, pattern=TABLE_NAME_PATTERN)]
MAX_HISTORY = 1000  # versions a page lists at most


def _tenant(
    service: ServiceDep,
    tenant: Annotated[
        str, Query(max_length=64, pattern=TENANT_NAME_PATTERN, description="whose tables")
    ] = LOCAL_TENANT,
) -> str:
    service.get_tenant(tenant)  # 404 for a tenant that does not exist
    return tenant


Tenant = Annotated[str, Depends(_tenant)]


@router.get("", response_model=TableList)
def list_tables(service: ServiceDep, tenant: Tenant) -> TableList:
    """The tenant's tables with their rows, model and dimension."""
    return TableList(tables=[TableOut(**asdict(t)) for t in service.tables(tenant)])


@router.get("/{name}", response_model=TableDetailOut)
def show_table(name: TableName, service: ServiceDep, tenant: Tenant) -> TableDetailOut:
    """One table in full: rows, fragments, versions kept, bytes and indexes."""
    return TableDetailOut(**service.table_details(tenant, name).to_dict())


@router.get("/{name}/history", response_model=HistoryOut, responses=error_responses(422))
def table_history(
    name: TableName,
    service: ServiceDep,
    tenant: Tenant,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = HISTORY_LIMIT,
    before: Annotated[int | None, Query(ge=1, description="only versions older than this")] = None,
) -> HistoryOut:
    """The table's versions, newest first, with the jobs that made each."""
    return history_page(service, tenant, name, limit, before)


@router.post(
    "/{name}/optimize",
    status_code=202,
    response_model=OptimizeOut,
    responses=error_responses(409),
)
def optimize_table(name: TableName, service: ServiceDep, tenant: Tenant) -> OptimizeOut:
    """Compact the table, bring its indexes up to date and remove the versions past the
    retention window that no unfinished job needs: on the service's maintenance thread (a job
    of kind maintenance in the job list). 409 while a job of the table is unfinished, a run of
    it is under way or it is being dropped."""
    record = service.optimize_table(tenant, name)
    if record is None:
        return OptimizeOut(started=True)
    return OptimizeOut(
        started=True,
        job_id=record.id,
        status=str(record.status),
        details=record.details,
        error=record.error,
    )


@router.post("/{name}/restore", response_model=RestoredOut, responses=error_responses(409, 422))
def restore_table(
    name: TableName, body: RestoreIn, service: ServiceDep, tenant: Tenant
) -> RestoredOut:
    """Bring the table back to `version` as a new commit, recorded in the job ledger. 422 for
    a version it does not keep, 409 while a job of the table is unfinished or another action
    holds it; nothing changes then."""
    return RestoredOut(**service.restore_table(tenant, name, body.version).to_dict())


@router.delete("/{name}", status_code=204, responses=error_responses(409))
def drop_table(name: TableName, service: ServiceDep, tenant: Tenant) -> Response:
    """Delete the table with all its rows and versions; 409 while a job of it is unfinished
    or another action holds it."""
    service.drop_table(tenant, name)
    return Response(status_code=204)


def history_page(
    service: JobService, tenant: str, name: str, limit: int, before: int | None
) -> HistoryOut:
    """A page of the table's history (also a tenant's own: /v1/tables/{name}/history)."""
    listed = service.table_history(tenant, name, limit, before)
    older = listed[-1].version if len(listed) == limit and listed[-1].version > 1 else None
    return HistoryOut(versions=[_version(v) for v in listed], next_before=older)


def _version(v: VersionInfo) -> VersionOut:
    return VersionOut(**v.to_dict())
