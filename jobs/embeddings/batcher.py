"""Requests to POST /v1/embeddings, gathered into shared model calls on the cluster.

A request is cut into pieces of at most `max_chars` characters of text (a second or so of model
time), so that a big request never holds a worker long. A piece waits at most `max_wait`
seconds for others to join it (or until `max_inputs` inputs are waiting); then pieces of one
model go out together as one Dask task (engine.tasks.request_embedding), which embeds them with the
worker's warm model. At most one task per worker thread is in flight: while they all run,
arriving pieces queue and leave together in the next task, so under load the batches grow
instead of the queue of tasks. Each request's future is resolved once all its pieces are back;
the model never runs in the API's process.

Tenants share fairly, as jobs do (jobs.policies.scheduling): a task is filled from the tenant with
the
fewest pieces in flight for its tier's weight first, and its Dask priority is the fair
priority of that share, so one tenant's 2,048-input requests neither go ahead of another
tenant's small request nor ahead of its small jobs' tasks on the workers.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
from distributed import Client
from distributed import Future as DaskFuture

from embedscale.engine.errors import error_line
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.tasks.request_embedding import (
    RequestEmbedded,
    RequestOutcome,
    RequestTooLong,
    embed_request_texts,
)
from embedscale.jobs.policies.scheduling import JobView, dask_priority

log = logging.getLogger(__name__)

# A few milliseconds cost a lone request little and let requests sent together meet.
DEFAULT_MAX_WAIT_S = 0.005
# Inputs per task: about 8 CPU forward passes of short inputs at the default token budget.
DEFAULT_MAX_INPUTS = 512
# Characters of text per piece and per task: about 4k tokens, a second or so of a CPU worker,
# what a small job waits behind a big job's slice too (engine.tasks.slices).
DEFAULT_MAX_CHARS = 16 * 1024


@dataclass(slots=True)
class _Request:
    spec: ModelSpec
    texts: list[str]
    tenant: str = ""
    weight: float = 1.0
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)
    # Each piece's outcome, by its first input, as the pieces come back.
    parts: dict[int, RequestOutcome] = field(default_factory=dict)
    pieces: int = 0

    def piece_done(self, start: int, outcome: RequestOutcome) -> None:
        """Record a piece's outcome; resolve the request once every piece is in."""
        self.parts[start] = outcome
        if len(self.parts) < self.pieces or self.future.done():
            return
        ordered = [self.parts[s] for s in sorted(self.parts)]
        embedded = [o for o in ordered if isinstance(o, RequestEmbedded)]
        refused = [(s, o) for s, o in sorted(self.parts.items()) if isinstance(o, RequestTooLong)]
        if refused:
            start, first = refused[0]
            self.future.set_result(
                RequestTooLong(start + first.index, first.tokens, first.max_tokens)
            )
        else:
            self.future.set_result(
                RequestEmbedded(
                    np.concatenate([o.vectors for o in embedded]), sum(o.tokens for o in embedded)
                )
            )


@dataclass(slots=True)
class _Piece:
    """Inputs [start, stop) of a request: what one task carries of it."""

    request: _Request
    start: int
    stop: int

    @property
    def texts(self) -> list[str]:
        return self.request.texts[self.start : self.stop]

    @property
    def chars(self) -> int:
        return sum(len(t) for t in self.texts)


def cut(request: _Request, max_chars: int, max_inputs: int) -> list[_Piece]:
    """The request's inputs in pieces of at most `max_chars` characters and `max_inputs`
    inputs (a single longer input is a piece of its own)."""
    pieces: list[_Piece] = []
    start = chars = 0
    for i, text in enumerate(request.texts):
        if i > start and (chars + len(text) > max_chars or i - start >= max_inputs):
            pieces.append(_Piece(request, start, i))
            start, chars = i, 0
        chars += len(text)
    pieces.append(_Piece(request, start, len(request.texts)))
    return pieces


@dataclass
class BatcherCounts:
    """What the batcher has done since it started: requests, their inputs, and the tasks (shared
    model calls) that carried them."""

    requests: int = 0
    inputs: int = 0
    tasks: int = 0


class EmbeddingBatcher:
    """Gathers requests and submits them in shared tasks through `client()`; `slots()` is how
    many tasks may be in flight (the cluster's worker threads)."""

    def __init__(
        self,
        client: Callable[[], Client],
        slots: Callable[[], int],
        max_wait: float = DEFAULT_MAX_WAIT_S,
        max_inputs: int = DEFAULT_MAX_INPUTS,
        max_chars: int = DEFAULT_MAX_CHARS,
    ) -> None:
        self._client, self._slots = client, slots
        self.max_wait, self.max_inputs, self.max_chars = max_wait, max_inputs, max_chars
        self.counts = BatcherCounts()
        self._waiting: list[_Piece] = []
        self._in_flight = 0
        self._tenant_in_flight: dict[str, int] = {}  # pieces out, per tenant
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="embedding-batcher", daemon=True)
        self._thread.start()

    def submit(
        self, spec: ModelSpec, texts: list[str], tenant: str = "", weight: float = 1.0
    ) -> Future:
        """A future of the request's RequestOutcome (or the exception a task of it raised);
        `tenant` and its tier's `weight` decide its share of the cluster."""
        request = _Request(spec, list(texts), tenant, weight)
        pieces = cut(request, self.max_chars, self.max_inputs)
        request.pieces = len(pieces)
        with self._cond:
            if self._closed:
                raise RuntimeError("the service is stopping: no embedding requests are taken")
            self._waiting.extend(pieces)
            self.counts.requests += 1
            self.counts.inputs += len(request.texts)
            self._cond.notify_all()
        return request.future

    def close(self) -> None:
        """Stop taking requests; those still waiting fail (those in flight finish)."""
        with self._cond:
            self._closed = True
            waiting, self._waiting = self._waiting, []
            self._cond.notify_all()
        for piece in waiting:
            if not piece.request.future.done():
                piece.request.future.set_exception(
                    RuntimeError(
                        "the service stopped before the request was embedded; send it again"
                    )
                )
        self._thread.join(timeout=5)

    # --- the gathering thread -------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            with self._cond:
                batch = self._next_batch()
                if batch is None:
                    return
                self._in_flight += 1
                self.counts.tasks += 1
                priority = self._priority(batch)
                for piece in batch:
                    tenant = piece.request.tenant
                    self._tenant_in_flight[tenant] = self._tenant_in_flight.get(tenant, 0) + 1
            self._send(batch, priority)

    def _next_batch(self) -> list[_Piece] | None:
        """Under the lock: wait for a free slot and a piece, linger for company, then take
        pieces of the first one's model, fairly across tenants, up to max_inputs inputs and
        max_chars characters (at least one piece)."""
        while not self._closed and (not self._waiting or self._in_flight >= max(1, self._slots())):
            self._cond.wait(timeout=0.5)  # slots may grow without a notification
        if self._closed:
            return None
        deadline = self._waiting[0].request.arrived + self.max_wait
        while (
            not self._closed
            and sum(p.stop - p.start for p in self._waiting) < self.max_inputs
            and (left := deadline - time.monotonic()) > 0
        ):
            self._cond.wait(timeout=left)
        if self._closed:
            return None
        load = dict(self._tenant_in_flight)
        by_tenant: dict[str, list[_Piece]] = {}
        for piece in self._waiting:  # arrival order within each tenant
            by_tenant.setdefault(piece.request.tenant, []).append(piece)
        first = min(by_tenant.values(), key=lambda ps: self._turn(ps[0], load))[0]
        spec = first.request.spec
        batch: list[_Piece] = []
        inputs = chars = 0
        while True:
            ready = [ps for ps in by_tenant.values() if ps and ps[0].request.spec == spec]
            if not ready:
                break
            piece = min(ready, key=lambda ps: self._turn(ps[0], load))[0]
            size = piece.stop - piece.start
            if batch and (inputs + size > self.max_inputs or chars + piece.chars > self.max_chars):
                break
            by_tenant[piece.request.tenant].pop(0)
            self._waiting.remove(piece)
            batch.append(piece)
            inputs, chars = inputs + size, chars + piece.chars
            load[piece.request.tenant] = load.get(piece.request.tenant, 0) + 1
        return batch

    @staticmethod
    def _turn(piece: _Piece, load: dict[str, int]) -> tuple[float, float]:
        """Fair order: the tenant with the fewest pieces out for its weight, then the oldest."""
        request = piece.request
        return load.get(request.tenant, 0) / request.weight, request.arrived

    def _priority(self, batch: list[_Piece]) -> int:
        """Under the lock: the task's Dask priority, the fair priority of its most deserving
        piece (jobs.policies.scheduling.dask_priority, as a normal job of the tenant's tier)."""
        now = time.monotonic()
        return max(
            dask_priority(
                JobView(
                    "", p.request.tenant, "normal", p.request.weight, p.request.arrived, 1, 0, now
                ),
                now,
                self._tenant_in_flight.get(p.request.tenant, 0),
            )
            for p in batch
        )

    def _send(self, batch: list[_Piece], priority: int) -> None:
        try:
            future = self._client().submit(
                embed_request_texts,
                batch[0].request.spec,
                [p.texts for p in batch],
                pure=False,
                key=f"embed-requests-{uuid.uuid4().hex}",
                priority=priority,
            )
        except Exception as exc:  # the scheduler is out of reach
            self._finished(batch, None, exc)
            return
        future.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(
        self, batch: list[_Piece], future: DaskFuture | None, error: BaseException | None = None
    ) -> None:
        """Resolve the requests of a finished task's pieces (on Dask's callback thread: cheap
        work only; the requests' owners charge and answer in their own threads)."""
        try:
            if future is not None:
                if future.status == "finished":
                    outcomes: list[RequestOutcome] = future.result()
                    for piece, outcome in zip(batch, outcomes):
                        piece.request.piece_done(piece.start, outcome)
                    return
                error = (
                    future.exception()
                    if future.status == "error"
                    else RuntimeError(f"the embedding task was {future.status}")
                )
            for piece in batch:
                if not piece.request.future.done():
                    piece.request.future.set_exception(error)
        except Exception as exc:  # fetching the result failed: the requests fail, not the loop
            log.warning("embedding task %s: %s", getattr(future, "key", "?"), error_line(exc))
            for piece in batch:
                if not piece.request.future.done():
                    piece.request.future.set_exception(exc)
        finally:
            if future is not None:
                future.release()
            with self._cond:
                self._in_flight -= 1
                for piece in batch:
                    tenant = piece.request.tenant
                    self._tenant_in_flight[tenant] -= 1
                    if not self._tenant_in_flight[tenant]:
                        del self._tenant_in_flight[tenant]
                self._cond.notify_all()
