"""Domain errors -> HTTP statuses. The layers below never raise HTTPException; this module is
where their errors become 4xx answers that name the field."""
from __future__ import annotations

import math
from datetime import UTC, datetime

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from engine.errors import ChunkingError, EmbedscaleError, ModelError, SourceError, TableError
from jobs.errors import (
    ConflictError,
    NotFoundError,
    QuotaExceededError,
    StoreLockedError,
    ValidationError,
)
from jobs.states import IllegalTransitionError


class RateLimitedError(EmbedscaleError):
    """Too many requests of one kind from one tenant."""

    def __init__(self, tenant: str, bucket: str, retry_after: float) -> None:
        self.retry_after = retry_after
        super().__init__(f"tenant '{tenant}' is over its rate limit for {bucket}; retry in "
                         f"{math.ceil(retry_after)} s")


def _field_error(field: str, message: str) -> JSONResponse:
    return JSONResponse(status_code=422, content={"detail": [
        {"loc": ["body", field], "msg": message, "type": "value_error"}]})


def install_error_handlers(app: FastAPI) -> None:
    """Register the mapping on `app`."""

    @app.exception_handler(ValidationError)
    async def _validation(_: Request, exc: ValidationError) -> JSONResponse:
        return _field_error(exc.field, str(exc))

    @app.exception_handler(NotFoundError)
    async def _not_found(_: Request, exc: NotFoundError) -> JSONResponse:
        return JSONResponse(status_code=404, content={"detail": str(exc)})

    @app.exception_handler(ConflictError)
    async def _conflict(_: Request, exc: ConflictError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(IllegalTransitionError)
    async def _transition(_: Request, exc: IllegalTransitionError) -> JSONResponse:
        return JSONResponse(status_code=409, content={"detail": str(exc)})

    @app.exception_handler(QuotaExceededError)
    async def _quota(_: Request, exc: QuotaExceededError) -> JSONResponse:
        wait = max(1, math.ceil((exc.resets_at - datetime.now(UTC)).total_seconds()))
        return JSONResponse(status_code=429, headers={"Retry-After": str(wait)},
                            content={"detail": str(exc), "quota": exc.figures()})

    @app.exception_handler(RateLimitedError)
    async def _rate(_: Request, exc: RateLimitedError) -> JSONResponse:
        return JSONResponse(status_code=429, content={"detail": str(exc)},
                            headers={"Retry-After": str(max(1, math.ceil(exc.retry_after)))})

    @app.exception_handler(StoreLockedError)
    async def _locked(_: Request, exc: StoreLockedError) -> JSONResponse:
        return JSONResponse(status_code=503, content={"detail": str(exc)})

    # Engine errors that reach the API come from a request's own values.
    for error, field in ((TableError, "table"), (ChunkingError, "chunk_tokens"),
                         (ModelError, "model"), (SourceError, "source")):
        def handler(_: Request, exc: Exception, field: str = field) -> JSONResponse:
            return _field_error(field, str(exc))

        app.add_exception_handler(error, handler)
