"""Dependencies of the routes: the service, the calling tenant, the admin check, rate limits.

`CurrentTenant` is the authenticated tenant with one read spent from its reads bucket (every
route of a tenant's that has no bucket of its own); `rate_limit(bucket)` is the tenant with a
token of that bucket spent instead. Both run on the event loop, answered from memory: the key
was checked at the door (api/server/request_gate.py) and the tier is cached; only a miss waits on
the
store, in a worker thread.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from embedscale.api.server.errors import RateLimitedError
from embedscale.api.server.ratelimit import READS, RateLimiter
from embedscale.api.server.request_gate import TENANT_SCOPE_KEY
from embedscale.jobs.log_context import add_log_fields
from embedscale.jobs.service import JobService
from embedscale.jobs.tenants.keys import same_key
from embedscale.jobs.tenants.tiers import Tier

_bearer = HTTPBearer(auto_error=False, description="a tenant's API key")
_admin_bearer = HTTPBearer(
    auto_error=False,
    scheme_name="AdminKey",
    description="the service's admin key (EMBEDSCALE_ADMIN_KEY)",
)
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def get_service(request: Request) -> JobService:
    return request.app.state.service


ServiceDep = Annotated[JobService, Depends(get_service)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def tenant_for(service: JobService, key: str | None) -> str:
    """The tenant a key belongs to; 401 for a missing or unknown key."""
    if not key:
        raise HTTPException(
            401, "missing API key: send 'Authorization: Bearer <key>'", headers=_UNAUTHORIZED
        )
    tenant = service.tenant_for_key(key)
    if tenant is None:
        raise HTTPException(401, "invalid API key", headers=_UNAUTHORIZED)
    add_log_fields(tenant=tenant)  # the request's scope (api/server/request_observer.py)
    return tenant


async def get_tenant(request: Request, service: ServiceDep, credentials: Credentials) -> str:
    """The calling tenant: the one the door found for the request's key, else (a request the
    door did not look at) found here."""
    tenant = request.scope.get(TENANT_SCOPE_KEY)
    if tenant is not None:
        return tenant
    key = credentials.credentials if credentials else None
    return await run_in_threadpool(tenant_for, service, key)


AuthenticatedTenant = Annotated[str, Depends(get_tenant)]


async def tier_of(service: JobService, tenant: str) -> Tier:
    """The tenant's effective tier: from memory, or read in a worker thread."""
    tier = service.tenants.cached_tier(tenant)
    return tier if tier is not None else await run_in_threadpool(service.tier_of, tenant)


async def spend(app: FastAPI, tenant: str, bucket: str, cost: int = 1) -> None:
    """Spend `cost` of the tenant's `bucket` (sized by its tier: reads_per_minute for reads,
    requests_per_minute for the others), or raise the 429."""
    tier = await tier_of(app.state.service, tenant)
    per_minute = tier.reads_per_minute if bucket == READS else tier.requests_per_minute
    limiter: RateLimiter = app.state.limiter
    retry_after = limiter.acquire(tenant, bucket, per_minute, cost)
    if retry_after is not None:
        app.state.metrics.rate_limited.labels(tenant, bucket).inc()
        raise RateLimitedError(tenant, bucket, retry_after, per_minute)


async def reading_tenant(request: Request, tenant: AuthenticatedTenant) -> str:
    await spend(request.app, tenant, READS)
    return tenant


CurrentTenant = Annotated[str, Depends(reading_tenant)]


def require_admin(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    expected = request.app.state.admin_key
    if credentials is None or not same_key(credentials.credentials, expected):
        raise HTTPException(401, "admin key required", headers=_UNAUTHORIZED)


def require_admin_over_tenants(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_admin_bearer)],
) -> None:
    """An admin route among a tenant's routes (GET /v1/tables/{name}/verify): the admin key
    passes, a tenant's key is a 403 (the door answered a missing or wrong key with a 401)."""
    expected = request.app.state.admin_key
    if credentials is None or not expected or not same_key(credentials.credentials, expected):
        raise HTTPException(
            403, "this route needs the service's admin key (EMBEDSCALE_ADMIN_KEY), not a tenant's"
        )


AdminOnly = Annotated[None, Depends(require_admin_over_tenants)]


def rate_limit(bucket: str):
    """A dependency that spends one of the tenant's `bucket` tokens, or answers 429."""

    async def check(request: Request, tenant: AuthenticatedTenant) -> str:
        await spend(request.app, tenant, bucket)
        return tenant

    return check
