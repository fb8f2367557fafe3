"""Requests to POST /v1/embeddings, gathered into shared model calls on the cluster.

A request waits at most `max_wait` seconds for others to join it (or until `max_inputs` inputs
are waiting); then the requests of one model go out together as one Dask task
(engine.request_embedding), which embeds them with the worker's warm model. At most one task per
worker thread is in flight: while they all run, arriving requests queue and leave together in
the next task, so under load the batches grow instead of the queue of tasks. Each request's
future is resolved from its task's result; the model never runs in the API's process.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field

from distributed import Client
from distributed import Future as DaskFuture

from engine.models.registry import ModelSpec
from engine.request_embedding import RequestOutcome, embed_request_texts

log = logging.getLogger(__name__)

# Above any job partition's (jobs.scheduling.dask_priority: effective priority x 100): a request
# someone waits on goes ahead of a batch job's queued partitions.
REQUEST_PRIORITY = 1_000_000
# A few milliseconds cost a lone request little and let requests sent together meet.
DEFAULT_MAX_WAIT_S = 0.005
# Inputs per task: about 8 CPU forward passes of short inputs at the default token budget.
DEFAULT_MAX_INPUTS = 512


@dataclass(slots=True)
class _Request:
    spec: ModelSpec
    texts: list[str]
    future: Future = field(default_factory=Future)
    arrived: float = field(default_factory=time.monotonic)


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

    def __init__(self, client: Callable[[], Client], slots: Callable[[], int],
                 max_wait: float = DEFAULT_MAX_WAIT_S,
                 max_inputs: int = DEFAULT_MAX_INPUTS) -> None:
        self._client, self._slots = client, slots
        self.max_wait, self.max_inputs = max_wait, max_inputs
        self.counts = BatcherCounts()
        self._waiting: list[_Request] = []
        self._in_flight = 0
        self._closed = False
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._loop, name="embedding-batcher", daemon=True)
        self._thread.start()

    def submit(self, spec: ModelSpec, texts: list[str]) -> Future:
        """A future of the request's RequestOutcome (or the exception its task raised)."""
        request = _Request(spec, list(texts))
        with self._cond:
            if self._closed:
                raise RuntimeError("the service is stopping: no embedding requests are taken")
            self._waiting.append(request)
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
        for request in waiting:
            request.future.set_exception(RuntimeError("the service stopped before the request "
                                                      "was embedded; send it again"))
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
            self._send(batch)

    def _next_batch(self) -> list[_Request] | None:
        """Under the lock: wait for a free slot and a request, linger for company, then take
        the requests of the first one's model, up to max_inputs inputs (at least one request)."""
        while not self._closed and (not self._waiting
                                    or self._in_flight >= max(1, self._slots())):
            self._cond.wait(timeout=0.5)  # slots may grow without a notification
        if self._closed:
            return None
        deadline = self._waiting[0].arrived + self.max_wait
        while (not self._closed and sum(len(r.texts) for r in self._waiting) < self.max_inputs
               and (left := deadline - time.monotonic()) > 0):
            self._cond.wait(timeout=left)
        if self._closed:
            return None
        spec = self._waiting[0].spec
        batch: list[_Request] = []
        inputs = 0
        for request in list(self._waiting):
            if request.spec != spec:
                continue
            if batch and inputs + len(request.texts) > self.max_inputs:
                break
            batch.append(request)
            inputs += len(request.texts)
            self._waiting.remove(request)
        return batch

    def _send(self, batch: list[_Request]) -> None:
        try:
            future = self._client().submit(
                embed_request_texts, batch[0].spec, [r.texts for r in batch], pure=False,
                key=f"embed-requests-{uuid.uuid4().hex}", priority=REQUEST_PRIORITY)
        except Exception as exc:  # the scheduler is out of reach
            self._finished(batch, None, exc)
            return
        future.add_done_callback(lambda f: self._finished(batch, f))

    def _finished(self, batch: list[_Request], future: DaskFuture | None,
                  error: BaseException | None = None) -> None:
        """Resolve each request of a finished task (on Dask's callback thread: cheap work only;
        the requests' owners charge and answer in their own threads)."""
        try:
            if future is not None:
                if future.status == "finished":
                    outcomes: list[RequestOutcome] = future.result()
                    for request, outcome in zip(batch, outcomes):
                        request.future.set_result(outcome)
                    return
                error = future.exception() if future.status == "error" else RuntimeError(
                    f"the embedding task was {future.status}")
            for request in batch:
                request.future.set_exception(error)
        except Exception as exc:  # fetching the result failed: the requests fail, not the loop
            log.warning("embedding task %s: %s", getattr(future, "key", "?"), exc)
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(exc)
        finally:
            if future is not None:
                future.release()
            with self._cond:
                self._in_flight -= 1
                self._cond.notify_all()
