"""POST /v1/embeddings in the control plane: the model checked against the operator's list, the
inputs charged to the tenant's daily chunk quota (one chunk each) before they are embedded, the
texts embedded by the cluster (jobs.embeddings.batcher), then the tokens the model read charged
too, as a job's partitions charge theirs (jobs.store.progress).

The chunks are reserved first, in one transaction with the check (Store.charge_usage), so
requests sent at once can never pass the quota together; a request that then fails (an input
too long, a task that failed) gets its chunks back.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import date

import numpy as np

from embedscale.engine.errors import ModelError
from embedscale.engine.models.limits import model_limits
from embedscale.engine.models.registry import ModelSpec, resolve_model
from embedscale.engine.tasks.request_embedding import RequestEmbedded, RequestTooLong
from embedscale.jobs.embeddings.batcher import EmbeddingBatcher
from embedscale.jobs.errors import InvalidFieldError, QuotaExceededError
from embedscale.jobs.spec import check_model_allowed
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.tenants.quotas import remaining_today, resets_at
from embedscale.jobs.tenants.tiers import Tier


@dataclass(frozen=True, slots=True)
class Embeddings:
    """A request's answer: the model's canonical name, one vector per input, tokens read."""

    model: str
    vectors: np.ndarray
    tokens: int


class PendingEmbedding:
    """A request charged and sent to the cluster. `ready` completes (with None, never an error)
    once its task is back; `result()` then charges the tokens or refunds the chunks, once."""

    def __init__(
        self,
        store: Store,
        tenant: str,
        day: date,
        chunks: int,
        spec: ModelSpec,
        dimensions: int | None,
        future: Future,
    ) -> None:
        self._store, self._tenant, self._day, self._chunks = store, tenant, day, chunks
        self._spec, self._dimensions, self._future = spec, dimensions, future
        self._lock = threading.Lock()
        self._settled: Embeddings | BaseException | None = None
        self.ready: Future = Future()
        future.add_done_callback(lambda _: self.ready.set_result(None))

    def result(self) -> Embeddings:
        """The vectors (blocks until the task is back); InvalidFieldError of `input` for an
        input over the model's limit, or of `dimensions`; the task's own error otherwise."""
        with self._lock:
            if self._settled is None:
                try:
                    self._settled = self._settle()
                except BaseException as exc:
                    self._store.charge_usage(self._tenant, -self._chunks, 0, day=self._day)
                    self._settled = exc
        if isinstance(self._settled, BaseException):
            raise self._settled
        return self._settled

    def _settle(self) -> Embeddings:
        outcome = self._future.result()
        if isinstance(outcome, RequestTooLong):
            raise InvalidFieldError(
                "input",
                (
                    f"input[{outcome.index}] is {outcome.tokens} tokens long (special tokens "
                    f"included); model '{self._spec.name}' reads at most {outcome.max_tokens}: "
                    "shorten or split it (nothing is truncated)"
                ),
            )
        embedded: RequestEmbedded = outcome
        dimension = embedded.vectors.shape[1]
        if self._dimensions is not None and self._dimensions != dimension:  # limits unknown
            raise dimensions_error(self._spec, self._dimensions, dimension)
        self._store.charge_usage(self._tenant, 0, embedded.tokens, day=self._day)
        return Embeddings(self._spec.name, embedded.vectors, embedded.tokens)


def dimensions_error(spec: ModelSpec, asked: int, dimension: int) -> InvalidFieldError:
    """Why `dimensions` other than the model's own are refused: shortening a vector is sound
    only for models trained for it (Matryoshka), which the default model is not."""
    return InvalidFieldError(
        "dimensions",
        (
            f"dimensions={asked}: model '{spec.name}' makes vectors of {dimension} dimensions "
            f"only; omit the field or send {dimension}"
        ),
    )


class EmbeddingRequests:
    """Checks, charges and sends embedding requests for the tenants of one store."""

    def __init__(
        self,
        store: Store,
        tier_of: Callable[[str], Tier],
        allowed_models: list[str] | None,
        batcher: EmbeddingBatcher,
    ) -> None:
        self.store, self.tier_of, self.allowed_models = store, tier_of, allowed_models
        self.batcher = batcher

    def start(
        self, tenant: str, model: str, texts: list[str], dimensions: int | None = None
    ) -> PendingEmbedding:
        """Check the model and `dimensions`, charge one chunk per text (QuotaExceededError
        when they do not fit what the tenant has left today) and send the texts."""
        check_model_allowed(model, self.allowed_models)
        try:
            spec = resolve_model(model)
        except ModelError as exc:  # only where any name is allowed: the CLI's local folders
            raise InvalidFieldError("model", str(exc)) from None
        limits = model_limits(spec)  # None where only loading the model tells (a hub id)
        if dimensions is not None and limits is not None and dimensions != limits.dimension:
            raise dimensions_error(spec, dimensions, limits.dimension)
        day = utcnow().date()
        limit = self.tier_of(tenant).daily_chunks
        if self.store.charge_usage(tenant, len(texts), 0, limit, day) is None:
            used, promised = self.store.usage(tenant, day)[0], self.store.promised(tenant)
            raise QuotaExceededError(
                tenant,
                len(texts),
                remaining_today(self.tier_of(tenant), used + promised) or 0,
                limit or 0,
                resets_at(),
                promised,
            )
        try:
            future = self.batcher.submit(spec, texts, tenant, self.tier_of(tenant).weight)
        except BaseException:
            self.store.charge_usage(tenant, -len(texts), 0, day=day)
            raise
        return PendingEmbedding(self.store, tenant, day, len(texts), spec, dimensions, future)

    def close(self) -> None:
        """Stop taking requests (see EmbeddingBatcher.close)."""
        self.batcher.close()
