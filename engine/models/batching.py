"""Batches for the model: sorted by length so padding is small, sized by a token budget so a
batch of long inputs is as heavy as one of short inputs, and split in half when it runs out of
memory (as crossfit does) instead of failing the partition."""

from __future__ import annotations

import logging
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeGuard

import numpy as np

from embedscale.engine.models.info import EmbeddingModel, PreparingModel

log = logging.getLogger(__name__)

# Padded tokens per forward pass. On CPU, 4096 (16 inputs of 256) beat 8192 by 14% and 2048 by
# 2% for all-MiniLM-L6-v2 on one thread (benchmarks/bench_throughput.py machine, 2026-11).
# On CUDA the model's own budget (engine.models.memory, from the GPU's free memory) comes first.
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 131072}
MAX_BATCH = 512
MAX_BATCH_ON = {"cuda": 1024}  # inputs per batch: short inputs fill a GPU only in numbers


def length_sorted_batches(
    lengths: np.ndarray, token_budget: int, max_batch: int = MAX_BATCH
) -> list[np.ndarray]:
    """Index arrays of batches, longest inputs first; each batch's padded size fits the budget."""
    plan, batches = BatchPlan(lengths, token_budget, max_batch), []
    while (idx := plan.take()) is not None:
        batches.append(idx)
    return batches


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU or CPU allocation failure in torch."""
    import torch

    # torch.OutOfMemoryError (any device) is from torch 2.5, the floor in pyproject.toml.
    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def embed_inputs(
    model: EmbeddingModel, inputs: list[np.ndarray], token_budget: int | None = None
) -> np.ndarray:
    """Embed full model inputs (special tokens included); float32 [len(inputs), dim], in order.

    The budget is `token_budget`, else the model's own (sized from its GPU's free memory),
    else the device's default. Batches are cut one at a time from the length-sorted inputs, so
    a batch that ran out of memory lowers the budget for the rest of the call (the partition):
    later batches are not tried at a size already known to fail. A model that can `prepare` a
    batch apart from running it (SentenceTransformerModel) gets the next batch padded and
    copied to its device on a second thread while the current one computes."""
    out = np.empty((len(inputs), model.info.dimension), dtype=np.float32)
    if not inputs:
        return out
    device = model.device.split(":")[0]
    budget = (
        token_budget
        or getattr(model, "token_budget", None)
        or DEFAULT_TOKEN_BUDGET.get(device, 4096)
    )
    lengths = np.fromiter(map(len, inputs), np.int64, len(inputs))
    plan = BatchPlan(lengths, budget, MAX_BATCH_ON.get(device, MAX_BATCH))
    if not _prepares(model):
        while (idx := plan.take()) is not None:
            out[idx] = _embed_splitting_on_oom(model, [inputs[i] for i in idx], plan)
        return out
    with ThreadPoolExecutor(1, thread_name_prefix="embedscale-prefetch") as prefetch:
        idx = plan.take()
        assert idx is not None  # inputs is not empty: there is a first batch
        ahead = prefetch.submit(model.prepare, [inputs[i] for i in idx])
        while idx is not None:
            mark = plan.position
            next_idx = plan.take()
            current = ahead  # this batch's preparation, started while the last one ran
            if next_idx is not None:
                ahead = prefetch.submit(model.prepare, [inputs[i] for i in next_idx])
            lowered = plan.budget
            out[idx] = _run_prepared(model, current, [inputs[i] for i in idx], plan)
            if plan.budget < lowered and next_idx is not None:
                # The batch prepared ahead was cut with the budget that just failed: cut again.
                ahead.cancel()
                plan.rewind(mark)
                next_idx = plan.take()
                assert next_idx is not None  # rewound to before a batch that was taken
                ahead = prefetch.submit(model.prepare, [inputs[i] for i in next_idx])
            idx = next_idx
    return out


def _prepares(model: EmbeddingModel) -> TypeGuard[PreparingModel]:
    """True for a model that prepares a batch apart from running it."""
    return callable(getattr(model, "prepare", None))


class BatchPlan:
    """Length-sorted batches cut on demand, longest inputs first, each fitting the current
    token budget, which an out-of-memory split lowers for the batches still to come."""

    def __init__(self, lengths: np.ndarray, token_budget: int, max_batch: int = MAX_BATCH) -> None:
        self.lengths = np.asarray(lengths)
        self.order = np.argsort(-self.lengths, kind="stable")
        self.budget = int(token_budget)
        self.max_batch = max_batch
        self.position = 0

    def take(self) -> np.ndarray | None:
        """The next batch's input indices, or None when all were taken."""
        if self.position >= len(self.order):
            return None
        longest = int(self.lengths[self.order[self.position]])
        size = max(1, min(self.max_batch, self.budget // max(longest, 1)))
        idx = self.order[self.position : self.position + size]
        self.position += len(idx)
        return idx

    def rewind(self, position: int) -> None:
        """Put back what was taken after `position` (to cut it again with a lower budget)."""
        self.position = position

    def lower(self, padded_tokens: int) -> None:
        """A batch of `padded_tokens` ran out of memory: no later batch is cut that large."""
        self.budget = max(1, min(self.budget, padded_tokens // 2))


def padded_tokens(batch: list[np.ndarray]) -> int:
    """Tokens of the batch once padded to its longest input."""
    return len(batch) * max(map(len, batch))


def _run_prepared(
    model: PreparingModel,
    features: Future[dict[str, Any]],
    batch: list[np.ndarray],
    plan: BatchPlan,
) -> np.ndarray:
    try:
        return model.forward(features.result())
    except Exception as exc:
        if not is_out_of_memory(exc) or len(batch) == 1:
            raise
    if features.done() and features.exception() is None:
        features.result().clear()  # its device tensors go before the halves are tried
    return _split(model, batch, plan)


def _embed_splitting_on_oom(
    model: EmbeddingModel, batch: list[np.ndarray], plan: BatchPlan | None = None
) -> np.ndarray:
    if plan is not None and len(batch) > 1 and padded_tokens(batch) > plan.budget:
        return _split(model, batch, plan, failed=False)  # a size known to fail: skip to halves
    try:
        return model.embed_token_ids(batch)
    except Exception as exc:
        if not is_out_of_memory(exc) or len(batch) == 1:
            raise
    return _split(model, batch, plan)


def _split(
    model: EmbeddingModel, batch: list[np.ndarray], plan: BatchPlan | None, failed: bool = True
) -> np.ndarray:
    if failed:
        _release_cached_memory()
        log.warning("batch of %d ran out of memory; splitting it in two", len(batch))
        if plan is not None:
            plan.lower(padded_tokens(batch))
    half = len(batch) // 2
    return np.concatenate(
        [
            _embed_splitting_on_oom(model, batch[:half], plan),
            _embed_splitting_on_oom(model, batch[half:], plan),
        ]
    )


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
