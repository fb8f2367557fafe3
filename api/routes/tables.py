"""/v1/tables: the tenant's tables, their size and model, search, and deletion."""
from __future__ import annotations

from typing import Annotated

import lance
from fastapi import APIRouter, Depends, Path, Response
from fastapi.concurrency import run_in_threadpool

from api.deps import CurrentTenant, ServiceDep, rate_limit
from api.schemas import ErrorOut, SearchRequest, SearchResponse, TableList, TableOut
from engine.errors import TableError
from engine.schema import table_model
from engine.search import search
from engine.sink import TABLE_NAME_PATTERN, ChunkTable, lancedb_dir
from jobs.errors import NotFoundError, ValidationError
from jobs.service import JobService

router = APIRouter(prefix="/v1/tables", tags=["tables"])
TableName = Annotated[str, Path(min_length=1, max_length=128, pattern=TABLE_NAME_PATTERN)]
_ERRORS = {401: {"model": ErrorOut}, 404: {"model": ErrorOut}}


def _table(service: JobService, tenant: str, name: str) -> ChunkTable:
    table = ChunkTable(service.tenant_data_dir(tenant), name)
    if not table.exists():
        raise NotFoundError(f"no table '{name}'")
    return table


def _describe(table: ChunkTable) -> TableOut:
    ds = lance.dataset(table.uri)
    model, dimension = table_model(ds.schema)
    return TableOut(name=table.name, rows=ds.count_rows(), model=model, dimension=dimension)


@router.get("", response_model=TableList, responses=_ERRORS)
def list_tables(service: ServiceDep, tenant: CurrentTenant) -> TableList:
    root = lancedb_dir(service.tenant_data_dir(tenant))
    names = sorted(p.stem for p in root.glob("*.lance")) if root.is_dir() else []
    tables = [ChunkTable(service.tenant_data_dir(tenant), n) for n in names]
    return TableList(tables=[_describe(t) for t in tables if t.exists()])


@router.get("/{name}", response_model=TableOut, responses=_ERRORS)
def get_table(name: TableName, service: ServiceDep, tenant: CurrentTenant) -> TableOut:
    return _describe(_table(service, tenant, name))


@router.post("/{name}/search", response_model=SearchResponse,
             responses={**_ERRORS, 429: {"model": ErrorOut}})
async def search_table(name: TableName, request: SearchRequest, service: ServiceDep,
                       tenant: Annotated[str, Depends(rate_limit("search"))]) -> SearchResponse:
    """The `k` chunks nearest to `query`, embedded with the table's own model."""
    table = await run_in_threadpool(_table, service, tenant, name)
    try:
        hits = await run_in_threadpool(search, service.tenant_data_dir(tenant), table.name,
                                       request.query, request.k, request.filter)
    except TableError as exc:
        raise ValidationError("filter", str(exc)) from None
    return SearchResponse(hits=hits)


@router.delete("/{name}", status_code=204, responses={**_ERRORS, 409: {"model": ErrorOut}})
def delete_table(name: TableName, service: ServiceDep, tenant: CurrentTenant) -> Response:
    """Drop a table with all its rows; 409 while a job of the tenant still writes to it."""
    service.drop_table(tenant, name)
    return Response(status_code=204)
