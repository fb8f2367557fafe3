"""Batches for the model: sorted by length so padding is small, sized by a token budget so a
batch of long inputs is as heavy as one of short inputs, and split in half when it runs out of
memory (as crossfit does) instead of failing the partition."""
from __future__ import annotations

import logging

import numpy as np

from engine.models.backend import EmbeddingModel

log = logging.getLogger(__name__)

# Padded tokens per forward pass. On CPU, 4096 (16 inputs of 256) beat 8192 by 14% and 2048 by
# 2% for all-MiniLM-L6-v2 on one thread (benchmarks/bench_throughput.py machine, 2026-11).
DEFAULT_TOKEN_BUDGET = {"cpu": 4096, "cuda": 131072}
MAX_BATCH = 512


def length_sorted_batches(lengths: np.ndarray, token_budget: int,
                          max_batch: int = MAX_BATCH) -> list[np.ndarray]:
    """Index arrays of batches, longest inputs first; each batch's padded size fits the budget."""
    order = np.argsort(-np.asarray(lengths), kind="stable")
    batches = []
    i = 0
    while i < len(order):
        longest = int(lengths[order[i]])
        size = max(1, min(max_batch, token_budget // max(longest, 1)))
        batches.append(order[i : i + size])
        i += size
    return batches


def is_out_of_memory(exc: BaseException) -> bool:
    """True for a GPU or CPU allocation failure in torch."""
    import torch

    if isinstance(exc, torch.OutOfMemoryError):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and ("out of memory" in text
                                              or "can't allocate memory" in text)


def embed_inputs(model: EmbeddingModel, inputs: list[np.ndarray],
                 token_budget: int | None = None) -> np.ndarray:
    """Embed full model inputs (special tokens included); float32 [len(inputs), dim], in order."""
    out = np.empty((len(inputs), model.info.dimension), dtype=np.float32)
    if not inputs:
        return out
    budget = token_budget or DEFAULT_TOKEN_BUDGET.get(model.device.split(":")[0], 4096)
    lengths = np.fromiter((len(x) for x in inputs), np.int64, len(inputs))
    for idx in length_sorted_batches(lengths, budget):
        out[idx] = _embed_splitting_on_oom(model, [inputs[i] for i in idx])
    return out


def _embed_splitting_on_oom(model: EmbeddingModel, batch: list[np.ndarray]) -> np.ndarray:
    try:
        return model.embed_token_ids(batch)
    except Exception as exc:
        if not is_out_of_memory(exc) or len(batch) == 1:
            raise
    _release_cached_memory()
    half = len(batch) // 2
    log.warning("batch of %d ran out of memory; splitting it in two", len(batch))
    return np.concatenate([_embed_splitting_on_oom(model, batch[:half]),
                           _embed_splitting_on_oom(model, batch[half:])])


def _release_cached_memory() -> None:
    import torch

    if torch.cuda.is_available():
        torch.cuda.empty_cache()
