"""The door every request passes before FastAPI reads its body: the key, the client's address,
the tenant's allowance and the body's size, checked from memory wherever memory can tell.

Why a door ahead of the routes: FastAPI reads and parses a request's whole body before it runs
a route's dependencies, so a wrong key or a tenant over its limit was only refused after up to
megabytes of JSON were parsed; and every bad key cost a DuckDB read under the store's one lock
(measured: a flood of bad-key requests cut other tenants' small jobs by about 75%). Here, in
order, for /v1/ requests:

1. The admin key passes. A tenant key is looked up in memory (jobs/tenants/key_cache.py: keys found,
   and briefly keys missing); only an unknown one reaches the store, and not when its client
   address is over its allowance of requests without a valid key already
   (Settings.unauthenticated_per_minute): that is a 429 before any read. A missing or wrong
   key is a 401 here and spends the address's allowance; a valid key never does, so a tenant
   sharing an address with a key-guessing loop is not locked out.
2. A tenant's submission (a body-carrying route with its own bucket) is refused with a 429
   here when the tenant's bucket is empty, before its body is read; the route takes the token.
3. The body (of any request): a Content-Length over Settings.max_request_bytes is a 413 before
   a byte of it is read; without one, the body is counted as it comes and the 413 raised once
   it is over.

/metrics needs no key and spends no allowance: it is served from a page made at most once a
second (api/server/metrics_page.py), which costs no more to send than a 429 would.

Refusals of /v1/embeddings come in OpenAI's error shape, as that route's own do.
"""

from __future__ import annotations

import math
import re
from typing import Any
from urllib.parse import parse_qs

from fastapi import HTTPException
from fastapi.concurrency import run_in_threadpool
from fastapi.routing import APIRoute, APIWebSocketRoute
from starlette.responses import JSONResponse
from starlette.routing import Match

from embedscale.api.server.errors import RateLimitedError
from embedscale.api.server.openai_errors import openai_error
from embedscale.api.server.ratelimit import (
    EMBEDDINGS,
    JOB_CREATION,
    SCHEDULE_CREATION,
    SEARCH,
    UNAUTHENTICATED,
)
from embedscale.api.settings import Settings
from embedscale.jobs.log_context import add_log_fields
from embedscale.jobs.tenants.keys import same_key

TENANT_SCOPE_KEY = "embedscale.tenant"  # the tenant the door found, for api/server/deps.py
OPENAI_PREFIX = "/v1/embeddings"
# Routes whose body is a submission with a bucket of its own (api/server/routes/*: the same names).
BODY_BUCKETS: list[tuple[str, re.Pattern[str], str]] = [
    ("POST", re.compile(r"/v1/jobs"), JOB_CREATION),
    ("POST", re.compile(r"/v1/embeddings"), EMBEDDINGS),
    ("POST", re.compile(r"/v1/tables/[^/]+/search"), SEARCH),
    ("POST", re.compile(r"/v1/schedules"), SCHEDULE_CREATION),
]
_UNAUTHORIZED = {"WWW-Authenticate": "Bearer"}


class Refusal(Exception):
    """An answer the door gives instead of the route: status, message, headers, the reason
    counted in /metrics, and the OpenAI error code for /v1/embeddings."""

    def __init__(
        self,
        status: int,
        message: str,
        reason: str,
        headers: dict[str, str] | None = None,
        code: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.message, self.reason = status, message, reason
        self.headers, self.code = headers or {}, code


class RequestGate:
    """ASGI middleware: the checks above, then the app with the body counted as it comes."""

    def __init__(self, app: Any, settings: Settings) -> None:
        self.app = app
        self.max_body = settings.max_request_bytes
        self.unauthenticated_per_minute = settings.unauthenticated_per_minute

    async def __call__(self, scope: dict, receive: Any, send: Any) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        try:
            await self._admit(scope)
            if scope["type"] == "http":
                self._check_length(scope)
                receive = self._counting(scope, receive)
        except Refusal as refusal:
            await self._refuse(scope, receive, send, refusal)
            return
        await self.app(scope, receive, send)

    # --- keys and addresses ---------------------------------------------------------------

    async def _admit(self, scope: dict) -> None:
        if not scope["path"].startswith("/v1/"):
            return
        app = scope["app"]
        key = _key(scope)
        admin_key = app.state.admin_key
        if key and admin_key and same_key(key, admin_key):
            return  # the admin routes check it again; tenant routes refuse it
        if not key:
            self._spend_unauthenticated(scope)
            raise Refusal(
                401,
                "missing API key: send 'Authorization: Bearer <key>'",
                "missing_key",
                _UNAUTHORIZED,
                "invalid_api_key",
            )
        tenants = app.state.service.tenants
        known, tenant = tenants.cached_tenant_for_key(key)
        if not known:
            self._check_unauthenticated(scope)  # an address over its allowance reads nothing
            tenant = await run_in_threadpool(tenants.tenant_for_key, key)
        if tenant is None:
            self._spend_unauthenticated(scope)
            raise Refusal(401, "invalid API key", "invalid_key", _UNAUTHORIZED, "invalid_api_key")
        scope[TENANT_SCOPE_KEY] = tenant
        add_log_fields(tenant=tenant)  # the request's scope (api/server/request_observer.py)
        await self._check_bucket(scope, tenant)

    def _spend_unauthenticated(self, scope: dict) -> None:
        self._address_limit(scope, take=True)

    def _check_unauthenticated(self, scope: dict) -> None:
        self._address_limit(scope, take=False)

    def _address_limit(self, scope: dict, take: bool) -> None:
        limiter = scope["app"].state.limiter
        address = _address(scope)
        per_minute = self.unauthenticated_per_minute
        spend = limiter.acquire if take else limiter.check
        wait = spend(address, UNAUTHENTICATED, per_minute)
        if wait is not None:
            error = RateLimitedError(
                address, UNAUTHENTICATED, wait, per_minute, who=f"client {address}"
            )
            raise Refusal(
                429, str(error), "address_rate_limited", _retry_after(wait), "rate_limit_exceeded"
            )

    async def _check_bucket(self, scope: dict, tenant: str) -> None:
        """A submission whose bucket is empty is refused before its body is read."""
        if scope["type"] != "http":
            return
        bucket = next(
            (
                name
                for method, pattern, name in BODY_BUCKETS
                if scope["method"] == method and pattern.fullmatch(scope["path"])
            ),
            None,
        )
        if bucket is None:
            return
        app = scope["app"]
        service = app.state.service
        tier = service.tenants.cached_tier(tenant) or await run_in_threadpool(
            service.tier_of, tenant
        )
        wait = app.state.limiter.check(tenant, bucket, tier.requests_per_minute)
        if wait is not None:
            app.state.metrics.rate_limited.labels(tenant, bucket).inc()
            error = RateLimitedError(tenant, bucket, wait, tier.requests_per_minute)
            raise Refusal(
                429, str(error), "tenant_rate_limited", _retry_after(wait), "rate_limit_exceeded"
            )

    # --- the body -------------------------------------------------------------------------

    def _check_length(self, scope: dict) -> None:
        length = _header(scope, b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_body:
            raise Refusal(413, self._too_large(int(length)), "body_too_large")

    def _counting(self, scope: dict, receive: Any) -> Any:
        """`receive`, raising a 413 (as the routes raise their errors) once the body has
        passed the limit: for a body sent without a Content-Length."""
        received = 0

        async def counted() -> dict:
            nonlocal received
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    _count(scope, "body_too_large")
                    raise HTTPException(413, self._too_large(None))
            return message

        return counted

    def _too_large(self, length: int | None) -> str:
        size = f" of {length} bytes" if length is not None else ""
        return (
            f"the request body{size} is over the limit of {self.max_body} bytes "
            f"({self.max_body / 2**20:.4g} MiB, max_request_bytes): send fewer or "
            "shorter texts a request, or give a job a server-side source"
        )

    # --- answers --------------------------------------------------------------------------

    async def _refuse(self, scope: dict, receive: Any, send: Any, refusal: Refusal) -> None:
        _count(scope, refusal.reason)
        route = _route_of(scope)
        if route is not None:  # labelled by its route in /metrics, as the routes' answers are
            scope["route"] = route
        if scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1008, "reason": refusal.message[:120]})
            return
        if scope["path"].startswith(OPENAI_PREFIX):
            kind = "requests" if refusal.status == 429 else "invalid_request_error"
            response = openai_error(
                refusal.status, refusal.message, kind, code=refusal.code, headers=refusal.headers
            )
        else:
            response = JSONResponse(
                status_code=refusal.status,
                headers=refusal.headers,
                content={"detail": refusal.message},
            )
        await response(scope, receive, send)


def _header(scope: dict, name: bytes) -> str | None:
    for key, value in scope.get("headers", ()):
        if key.lower() == name:
            return value.decode("latin-1").strip()
    return None


def _key(scope: dict) -> str | None:
    """The bearer key of a request (as the routes' HTTPBearer reads it); a WebSocket may give
    it as ?token= instead, where a browser cannot set headers."""
    header = _header(scope, b"authorization") or ""
    scheme, _, credentials = header.partition(" ")
    if scheme.lower() == "bearer" and credentials.strip():
        return credentials.strip()
    if scope["type"] == "websocket":
        tokens = parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token")
        return tokens[0] if tokens else None
    return None


def _address(scope: dict) -> str:
    client = scope.get("client")
    return client[0] if client else "unknown"


def _retry_after(wait: float) -> dict[str, str]:
    return {"Retry-After": str(max(1, math.ceil(wait)))}


def _count(scope: dict, reason: str) -> None:
    metrics = getattr(scope["app"].state, "metrics", None)  # None before start-up finished
    if metrics is not None:
        metrics.gate_refusals.labels(reason).inc()


def _route_of(scope: dict) -> Any:
    """The route that would have served the request (for its label), or None."""
    for route in _routes(scope["app"].router.routes):
        match, _ = route.matches(scope)
        if match == Match.FULL:
            return route
    return None


def _routes(routes: list) -> Any:
    """The app's routes, those of included routers too (FastAPI wraps an included router in
    a route of its own, which holds it as `original_router`)."""
    for route in routes:
        inner = getattr(route, "original_router", None)
        if inner is not None:
            yield from _routes(inner.routes)
        elif isinstance(route, APIRoute | APIWebSocketRoute):
            yield route
