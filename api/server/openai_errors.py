"""Errors of the OpenAI-compatible routes in OpenAI's own shape.

OpenAI's clients read `{"error": {"message", "type", "param", "code"}}` (the official `openai`
package puts it on the exception it raises); the rest of the API keeps its FastAPI shape
(`{"detail": ...}`, api/server/errors.py). Routes of a router made with `route_class=OpenAIRoute`
answer every error, from authentication and body validation to the domain's, in this shape.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from fastapi import HTTPException, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute

from embedscale.api.server.errors import RateLimitedError, clip
from embedscale.engine.errors import ModelError
from embedscale.jobs.errors import InvalidFieldError, QuotaExceededError, StoreLockedError

log = logging.getLogger(__name__)


def openai_error(
    status: int,
    message: str,
    kind: str = "invalid_request_error",
    param: str | None = None,
    code: str | None = None,
    headers: dict[str, str] | None = None,
) -> JSONResponse:
    """An error answer as OpenAI writes one."""
    return JSONResponse(
        status_code=status,
        headers=headers,
        content={
            "error": {"message": clip(message, 1000), "type": kind, "param": param, "code": code}
        },
    )


def _validation(exc: RequestValidationError) -> JSONResponse:
    errors = list(exc.errors())
    first = errors[0] if errors else {}
    loc = [p for p in first.get("loc", ()) if p != "body"]
    where = ".".join(str(p) for p in loc)
    param = str(loc[0]) if loc and first.get("type") != "json_invalid" else None
    # Pydantic prefixes a validator's own message; the message alone says it.
    message = clip(str(first.get("msg", "invalid request")).removeprefix("Value error, "), 300)
    more = f" (and {len(errors) - 1} more errors)" if len(errors) > 1 else ""
    return openai_error(
        400,
        f"{where}: {message}{more}" if where else message,
        param=param,
        code="invalid_value" if param else "invalid_json",
    )


def _quota(exc: QuotaExceededError) -> JSONResponse:
    wait = max(1, math.ceil((exc.resets_at - datetime.now(UTC)).total_seconds()))
    # x-should-retry: the openai client would otherwise retry at once, which cannot help today.
    owed = (
        f", counting the {exc.promised} promised to its queued and running jobs"
        if exc.promised
        else ""
    )
    return openai_error(
        429,
        (
            f"tenant '{exc.tenant}' has {exc.remaining} of {exc.limit} chunks left today{owed}; "
            f"this request needs {exc.needed} (one per input); the quota resets at "
            f"{exc.resets_at.isoformat()}"
        ),
        "insufficient_quota",
        code="insufficient_quota",
        headers={"Retry-After": str(wait), "x-should-retry": "false"},
    )


def error_response(exc: Exception) -> JSONResponse | None:
    """The OpenAI-shaped answer to `exc`; None for an error this module does not know."""
    if isinstance(exc, RequestValidationError):
        return _validation(exc)
    if isinstance(exc, HTTPException):
        kind, code = (
            ("invalid_request_error", "invalid_api_key")
            if exc.status_code == 401
            else ("invalid_request_error", None)
        )
        return openai_error(
            exc.status_code, str(exc.detail), kind, code=code, headers=dict(exc.headers or {})
        )
    if isinstance(exc, InvalidFieldError):
        if exc.field == "model":  # as OpenAI answers for a model it does not offer
            return openai_error(404, str(exc), param="model", code="model_not_found")
        return openai_error(400, str(exc), param=exc.field, code="invalid_value")
    if isinstance(exc, ModelError):
        return openai_error(400, str(exc), param="model", code="invalid_value")
    if isinstance(exc, QuotaExceededError):
        return _quota(exc)
    if isinstance(exc, RateLimitedError):
        return openai_error(
            429,
            str(exc),
            "requests",
            code="rate_limit_exceeded",
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )
    if isinstance(exc, StoreLockedError):
        return openai_error(503, str(exc), "server_error")
    return None


class OpenAIRoute(APIRoute):
    """A route whose errors, its dependencies' included, are answered in OpenAI's shape."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def answer(request: Request) -> Response:
            try:
                return await handler(request)
            except Exception as exc:
                response = error_response(exc)
                if response is not None:
                    return response
                log.exception("%s %s failed", request.method, request.url.path)
                return openai_error(500, f"the server failed: {type(exc).__name__}", "server_error")

        return answer
