"""/v1/tenants and /v1/usage: tenants and keys (admin key only), and a tenant's own usage."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Path

from embedscale.api.server.deps import CurrentTenant, ServiceDep, require_admin
from embedscale.api.server.schemas import (
    TenantCreate,
    TenantCreated,
    TenantKey,
    TenantOut,
    TenantUpdate,
    error_responses,
)
from embedscale.jobs.store.records import TenantRecord
from embedscale.jobs.tenants.accounts import Usage

usage_router = APIRouter(tags=["usage"])
admin_router = APIRouter(
    prefix="/v1/tenants",
    tags=["admin"],
    dependencies=[Depends(require_admin)],
    responses=error_responses(401),
)
TenantName = Annotated[str, Path(min_length=1, max_length=64)]


def tenant_out(t: TenantRecord) -> TenantOut:
    return TenantOut(
        name=t.name,
        tier=t.tier,
        daily_chunks=t.daily_chunks,
        max_concurrent_jobs=t.max_concurrent_jobs,
        created_at=t.created_at.isoformat(),
    )


@usage_router.get("/v1/usage", response_model=Usage, responses=error_responses(401))
def usage(service: ServiceDep, tenant: CurrentTenant) -> Usage:
    """The tenant's quota: used and remaining today, and its concurrent jobs."""
    return service.usage(tenant)


@admin_router.post(
    "", status_code=201, response_model=TenantCreated, responses=error_responses(409)
)
def create_tenant(body: TenantCreate, service: ServiceDep) -> TenantCreated:
    """A new tenant; its API key is in the answer, once."""
    record, key = service.create_tenant(body.name, body.tier)
    return TenantCreated(**tenant_out(record).model_dump(), api_key=key)


@admin_router.get("", response_model=list[TenantOut])
def list_tenants(service: ServiceDep) -> list[TenantOut]:
    """Every tenant with its tier and its own overrides."""
    return [tenant_out(t) for t in service.list_tenants()]


@admin_router.patch("/{name}", response_model=TenantOut, responses=error_responses(404))
def update_tenant(name: TenantName, body: TenantUpdate, service: ServiceDep) -> TenantOut:
    """Change a tenant's tier, or its own quota and concurrency overrides (null: the tier's)."""
    record = service.get_tenant(name)
    if body.tier is not None:
        record = service.set_tier(name, body.tier)
    overrides = body.model_fields_set & {"daily_chunks", "max_concurrent_jobs"}
    if overrides:
        current = {
            "daily_chunks": record.daily_chunks,
            "max_concurrent_jobs": record.max_concurrent_jobs,
        }
        current.update({k: getattr(body, k) for k in overrides})
        record = service.set_limits(name, **current)
    return tenant_out(record)


@admin_router.post(
    "/{name}/keys", status_code=201, response_model=TenantKey, responses=error_responses(404)
)
def rotate_key(name: TenantName, service: ServiceDep) -> TenantKey:
    """Revoke the tenant's keys and issue a new one (shown once)."""
    return TenantKey(name=name, api_key=service.rotate_key(name))
