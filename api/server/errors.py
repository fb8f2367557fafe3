"""Domain errors -> HTTP statuses. The layers below never raise HTTPException; this module is
where their errors become 4xx answers that name the field."""

from __future__ import annotations

import json
import logging
import math
from datetime import UTC, datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from embedscale.engine.errors import (
    ChunkingError,
    EmbedscaleError,
    ModelError,
    ProviderError,
    SourceError,
    TableError,
    TableNotFoundError,
)
from embedscale.engine.storage.errors import StorageError
from embedscale.jobs.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    QuotaExceededError,
    StoreLockedError,
    StoreUnavailableError,
)


class RateLimitedError(EmbedscaleError):
    """Too many requests of one kind from one tenant (or, for requests without a valid key,
    from one client address): the message names the limit."""

    def __init__(
        self,
        tenant: str,
        bucket: str,
        retry_after: float,
        per_minute: int | None = None,
        who: str | None = None,
    ) -> None:
        self.retry_after = retry_after
        limit = f" ({per_minute} a minute)" if per_minute is not None else ""
        super().__init__(
            f"{who or f'tenant {tenant!r}'} is over its rate limit for "
            f"{bucket}{limit}; retry in {max(1, math.ceil(retry_after))} s"
        )


# What an error answer may echo of a request: a 422 for 50,000 texts or a 1 MB query says
# which field was wrong, not the whole input again (FastAPI's own handler echoes every input).
MAX_ERRORS = 20  # errors listed; `errors_total` counts them all
MAX_DETAIL_BYTES = 8_000  # the listed errors, as JSON; the answer stays under 10 KB
log = logging.getLogger(__name__)
MAX_ECHO = 200  # characters of an input value, a message or a loc part


def clip(text: str, limit: int = MAX_ECHO) -> str:
    """`text` cut to `limit` characters (saying how long it was), with any character UTF-8
    cannot encode (a lone surrogate) written as its escape, so the answer can be sent."""
    if len(text) > limit:
        text = f"{text[:limit]}... ({len(text)} characters)"
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def _echo(value: Any, limit: int = MAX_ECHO) -> Any:
    # Scalars only: a list or an object (a whole body, for a missing field) is never echoed.
    if value is None or isinstance(value, bool | int | float):
        return value
    return clip(value, limit) if isinstance(value, str) else None


def _summarize(error: dict[str, Any], short: bool = False) -> dict[str, Any]:
    # short: the bare minimum, for an error whose full summary alone is over the budget.
    part = 32 if short else 64
    out: dict[str, Any] = {
        "loc": [p if isinstance(p, int) else clip(str(p), part) for p in error.get("loc", ())[:8]],
        "msg": clip(str(error.get("msg", "")), 100 if short else 300),
        "type": clip(str(error.get("type", "")), 64),
    }
    if short:
        return out
    if (value := _echo(error.get("input"))) is not None:
        out["input"] = value
    ctx = {clip(str(k), 32): _echo(v, 64) for k, v in list((error.get("ctx") or {}).items())[:4]}
    ctx = {k: v for k, v in ctx.items() if v is not None}
    if ctx:
        out["ctx"] = ctx
    return out


def validation_content(errors: list[dict[str, Any]]) -> dict[str, Any]:
    """A 422's body: the first errors (at most MAX_ERRORS, MAX_DETAIL_BYTES), each with loc, msg
    and type and a short echo; `errors_total` when some were left out."""
    detail: list[dict[str, Any]] = []
    size = 0
    for error in errors[:MAX_ERRORS]:
        item = _summarize(error)
        cost = len(json.dumps(item))  # ASCII-escaped: never fewer bytes than the UTF-8 sent
        if not detail and cost > MAX_DETAIL_BYTES:
            item = _summarize(error, short=True)  # at most ~4 KB, escapes and all
            cost = len(json.dumps(item))
        if size + cost > MAX_DETAIL_BYTES:
            break
        detail.append(item)
        size += cost
    content: dict[str, Any] = {"detail": detail}
    if len(detail) < len(errors):
        content["errors_total"] = len(errors)
    return content


def _text(exc: Exception) -> str:
    # Domain messages quote request values (a job id from the path, a source): capped too.
    return clip(str(exc), 1000)


def _field_error(field: str, message: str, location: str = "body") -> JSONResponse:
    # A dotted field is nested: 'template.source' is loc [body, template, source].
    return JSONResponse(
        status_code=422,
        content={
            "detail": [
                {
                    "loc": [location, *field.split(".")],
                    "msg": clip(message, 1000),
                    "type": "value_error",
                }
            ]
        },
    )


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on `app`."""

    @app.exception_handler(RequestValidationError)
    async def _request(_: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content=validation_content(list(exc.errors())))

    @app.exception_handler(InvalidFieldError)
    async def _validation(_: Request, exc: InvalidFieldError) -> JSONResponse:
        return _field_error(exc.field, str(exc), exc.location)

    @app.exception_handler(NotFoundError)
    @app.exception_handler(TableNotFoundError)  # a TableError, yet 404: the closest class wins
    async def _not_found(_: Request, exc: Exception) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": _text(exc)})

    @app.exception_handler(ConflictError)  # an illegal status transition is one too
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": _text(exc)})

    @app.exception_handler(QuotaExceededError)
    async def _quota(_: Request, exc: QuotaExceededError) -> JSONResponse:
        wait = max(1, math.ceil((exc.resets_at - datetime.now(UTC)).total_seconds()))
        return JSONResponse(
            status_code=429,
            headers={"Retry-After": str(wait)},
            content={"detail": str(exc), "quota": exc.figures()},
        )

    @app.exception_handler(RateLimitedError)
    async def _rate(_: Request, exc: RateLimitedError) -> JSONResponse:
        return JSONResponse(
            status_code=429,
            content={"detail": str(exc)},
            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))},
        )

    @app.exception_handler(ProviderError)  # a table's embedding endpoint failed a query
    async def _provider(_: Request, exc: ProviderError) -> JSONResponse:
        return JSONResponse(status_code=502, content={"detail": _text(exc)})

    @app.exception_handler(StoreLockedError)
    async def _locked(_: Request, exc: StoreLockedError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    @app.exception_handler(StoreUnavailableError)  # the data dir's disk is full, say
    async def _store_out(_: Request, exc: StoreUnavailableError) -> JSONResponse:
        # The operator's log (and /readyz) has the file and what to do; a tenant learns the
        # cause and to come back: the store reopens by itself (jobs/store/guard.py).
        log.error("%s", exc)
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "5"},
            content={"detail": f"the job store is unavailable ({exc.reason}); try again later"},
        )

    @app.exception_handler(StorageError)  # the tables' object store is down or refuses us
    async def _storage(_: Request, exc: StorageError) -> JSONResponse:
        # The operator's log has the store's endpoint and what to fix; a tenant learns only
        # that it is the service's side, and to come back.
        log.error("object store error: %s", exc)
        return JSONResponse(
            status_code=503,
            headers={"Retry-After": "30"},
            content={"detail": "the table store is unavailable; try again later"},
        )

    # Engine errors that reach the API come from a request's own values.
    for error, field in (
        (TableError, "table"),
        (ChunkingError, "chunk_tokens"),
        (ModelError, "model"),
        (SourceError, "source"),
    ):

        def handler(_: Request, exc: Exception, field: str = field) -> JSONResponse:
            return _field_error(field, str(exc))

        app.add_exception_handler(error, handler)
