"""/v1/tables: the tenant's tables, their size and model, search, and deletion; and, for the
admin, a table checked against the job ledger."""

from __future__ import annotations

from dataclasses import asdict
from functools import partial
from typing import Annotated

from fastapi import APIRouter, Depends, Path, Query, Response
from fastapi.concurrency import run_in_threadpool

from embedscale.api.server.deps import AdminOnly, CurrentTenant, ServiceDep, rate_limit
from embedscale.api.server.ratelimit import SEARCH
from embedscale.api.server.routes.table_admin import MAX_HISTORY, history_page
from embedscale.api.server.schemas import (
    SearchQuery,
    SearchRequest,
    SearchResponse,
    TableList,
    TableOut,
    VerifyOut,
    error_responses,
)
from embedscale.api.server.table_schemas import HistoryOut
from embedscale.engine.sink.lance_sink import TABLE_NAME_PATTERN
from embedscale.engine.tables.versions import HISTORY_LIMIT
from embedscale.jobs.tenants.accounts import LOCAL_TENANT, TENANT_NAME_PATTERN

router = APIRouter(prefix="/v1/tables", tags=["tables"])
TableName = Annotated[str, Path(min_length=1, max_length=128, pattern=TABLE_NAME_PATTERN)]
_ERRORS = (401, 404)


@router.get("", response_model=TableList, responses=error_responses(*_ERRORS))
def list_tables(service: ServiceDep, tenant: CurrentTenant) -> TableList:
    """The tenant's tables with their rows, model and dimension."""
    return TableList(tables=[TableOut(**asdict(t)) for t in service.tables(tenant)])


@router.get("/{name}", response_model=TableOut, responses=error_responses(*_ERRORS))
def get_table(name: TableName, service: ServiceDep, tenant: CurrentTenant) -> TableOut:
    """One table's rows, model and dimension."""
    return TableOut(**asdict(service.table(tenant, name)))


@router.post(
    "/{name}/search", response_model=SearchResponse, responses=error_responses(*_ERRORS, 429)
)
async def search_table(
    name: TableName,
    request: SearchRequest,
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(SEARCH))],
) -> SearchResponse:
    """The `k` chunks that best match `query` by `mode`: vector (nearest by meaning, embedded
    with the table's own model), text (BM25) or hybrid (both, fused by reciprocal rank)."""
    hits = await run_in_threadpool(
        partial(
            service.search,
            tenant,
            name,
            request.query,
            request.k,
            request.condition,
            mode=request.mode,
            nprobes=request.nprobes,
            refine=request.refine,
            filter_field="filter" if request.filter is not None else "where",
        )
    )
    return SearchResponse(hits=hits)


@router.get(
    "/{name}/search", response_model=SearchResponse, responses=error_responses(*_ERRORS, 429)
)
async def search_table_get(
    name: TableName,
    params: Annotated[SearchQuery, Query()],
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(SEARCH))],
) -> SearchResponse:
    """POST's search with its parameters in the query string (the filter as `where`)."""
    hits = await run_in_threadpool(
        partial(
            service.search,
            tenant,
            name,
            params.query,
            params.k,
            params.where,
            mode=params.mode,
            nprobes=params.nprobes,
            refine=params.refine,
            filter_field="where",
            location="query",
        )
    )
    return SearchResponse(hits=hits)


@router.delete("/{name}", status_code=204, responses=error_responses(*_ERRORS, 409))
def delete_table(name: TableName, service: ServiceDep, tenant: CurrentTenant) -> Response:
    """Drop a table with all its rows; 409 while a job of the tenant still writes to it."""
    service.drop_table(tenant, name)
    return Response(status_code=204)


@router.get("/{name}/history", response_model=HistoryOut, responses=error_responses(*_ERRORS))
def table_history(
    name: TableName,
    service: ServiceDep,
    tenant: CurrentTenant,
    limit: Annotated[int, Query(ge=1, le=MAX_HISTORY)] = HISTORY_LIMIT,
    before: Annotated[int | None, Query(ge=1, description="only versions older than this")] = None,
) -> HistoryOut:
    """The table's versions, newest first, with the jobs that made each (restoring one is
    the admin's: POST /v1/admin/tables/{name}/restore)."""
    return history_page(service, tenant, name, limit, before)


@router.get("/{name}/verify", response_model=VerifyOut, responses=error_responses(*_ERRORS, 403))
def verify_table(
    name: TableName,
    service: ServiceDep,
    _: AdminOnly,
    tenant: Annotated[
        str, Query(max_length=64, pattern=TENANT_NAME_PATTERN, description="whose table")
    ] = LOCAL_TENANT,
) -> VerifyOut:
    """Admin only: the table checked against itself and the job ledger (row ids unique,
    committed rows present, none of cancelled jobs, vectors finite, one model). 200 either
    way, with `ok` and the problems found."""
    return VerifyOut(**service.verify_table(tenant, name).to_dict())
