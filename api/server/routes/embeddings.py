"""POST /v1/embeddings: OpenAI's embeddings API, served by the cluster's warm models.

`OpenAI(base_url=<server>/v1, api_key=<tenant key>).embeddings.create(model=..., input=...)`
works unchanged. Requests that arrive together share model calls on the workers
(jobs.embeddings.batcher); each input is one chunk of the tenant's daily quota, and the request
counts against the tenant's rate limit. Errors come in OpenAI's shape (api/server/openai_errors.py).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
from typing import Annotated

import numpy as np
from fastapi import APIRouter, Depends
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from embedscale.api.server.deps import ServiceDep, rate_limit
from embedscale.api.server.embedding_schemas import EmbeddingCreate, EmbeddingList, OpenAIError
from embedscale.api.server.openai_errors import OpenAIRoute, openai_error
from embedscale.api.server.ratelimit import EMBEDDINGS
from embedscale.api.server.schemas import error_responses
from embedscale.jobs.embeddings.requests import PendingEmbedding

router = APIRouter(prefix="/v1", tags=["embeddings"], route_class=OpenAIRoute)
# A request whose task has not come back by then is answered 503 (its chunks are settled when
# the task ends: charged if it embedded, refunded if not).
REQUEST_TIMEOUT_S = 300.0
_ERRORS = error_responses(400, 401, 404, 429, 503, model=OpenAIError)


@router.post("/embeddings", response_model=EmbeddingList, responses=_ERRORS)
async def create_embeddings(
    body: EmbeddingCreate,
    service: ServiceDep,
    tenant: Annotated[str, Depends(rate_limit(EMBEDDINGS))],
) -> JSONResponse:
    """One vector per input, in order, with the tokens the model read."""
    pending = await run_in_threadpool(
        service.embed, tenant, body.model, body.texts(), body.dimensions
    )
    try:
        # Waits without holding a thread: the batcher resolves the request's future.
        await asyncio.wait_for(
            asyncio.shield(asyncio.wrap_future(pending.ready)), REQUEST_TIMEOUT_S
        )
    except TimeoutError:
        _settle_later(pending)
        return openai_error(
            503,
            f"the cluster did not embed the request within "
            f"{REQUEST_TIMEOUT_S:.0f} s; try again later",
            "server_error",
        )
    except asyncio.CancelledError:  # the client went away: settle its charge all the same
        _settle_later(pending)
        raise
    result = await run_in_threadpool(pending.result)
    vectors = np.ascontiguousarray(result.vectors, dtype="<f4")
    if body.encoding_format == "base64":  # as OpenAI: little-endian float32 bytes
        embeddings = [base64.b64encode(v.tobytes()).decode("ascii") for v in vectors]
    else:
        embeddings = vectors.tolist()
    # Built as plain JSON: validating hundreds of floats per input would only cost time.
    return JSONResponse(
        {
            "object": "list",
            "data": [
                {"object": "embedding", "index": i, "embedding": e}
                for i, e in enumerate(embeddings)
            ],
            "model": result.model,
            "usage": {"prompt_tokens": result.tokens, "total_tokens": result.tokens},
        }
    )


def _settle_later(pending: PendingEmbedding) -> None:
    """Charge or refund a request nobody waits for any more, once its task is back."""

    def settle() -> None:
        with contextlib.suppress(Exception):  # its error had nobody to go to
            pending.result()

    asyncio.get_running_loop().run_in_executor(None, settle)
