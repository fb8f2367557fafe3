"""Dependencies of the routes: the service, the calling tenant, the admin check, rate limits."""
from __future__ import annotations

from typing import Annotated

from fastapi import Depends, HTTPException, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from api.errors import RateLimitedError
from api.ratelimit import RateLimiter
from jobs.keys import same_key
from jobs.log_context import add_log_fields
from jobs.service import JobService

_bearer = HTTPBearer(auto_error=False, description="a tenant's API key")
_admin_bearer = HTTPBearer(auto_error=False, scheme_name="AdminKey",
                           description="the service's admin key (EMBEDSCALE_ADMIN_KEY)")
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


def get_service(request: Request) -> JobService:
    return request.app.state.service


ServiceDep = Annotated[JobService, Depends(get_service)]
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def tenant_for(service: JobService, key: str | None) -> str:
    """The tenant a key belongs to; 401 for a missing or unknown key."""
    if not key:
        raise HTTPException(401, "missing API key: send 'Authorization: Bearer <key>'",
                            headers=_UNAUTHORIZED)
    tenant = service.tenant_for_key(key)
    if tenant is None:
        raise HTTPException(401, "invalid API key", headers=_UNAUTHORIZED)
    add_log_fields(tenant=tenant)  # the request's scope (api/request_observer.py)
    return tenant


def get_tenant(service: ServiceDep, credentials: Credentials) -> str:
    return tenant_for(service, credentials.credentials if credentials else None)


CurrentTenant = Annotated[str, Depends(get_tenant)]


def require_admin(request: Request, credentials: Annotated[
        HTTPAuthorizationCredentials | None, Depends(_admin_bearer)]) -> None:
    expected = request.app.state.admin_key
    if credentials is None or not same_key(credentials.credentials, expected):
        raise HTTPException(401, "admin key required", headers=_UNAUTHORIZED)


def rate_limit(bucket: str):
    """A dependency that spends one of the tenant's `bucket` tokens, or answers 429."""

    def check(request: Request, service: ServiceDep, tenant: CurrentTenant) -> str:
        limiter: RateLimiter = request.app.state.limiter
        retry_after = limiter.acquire(tenant, bucket, service.tier_of(tenant).requests_per_minute)
        if retry_after is not None:
            request.app.state.metrics.rate_limited.labels(tenant, bucket).inc()
            raise RateLimitedError(tenant, bucket, retry_after)
        return tenant

    return check
