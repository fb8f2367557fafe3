"""Length-sorted, token-budgeted batches, and splitting a batch that runs out of memory."""

from __future__ import annotations

import numpy as np
import torch

from embedscale.engine.models.batching import embed_inputs, length_sorted_batches
from embedscale.engine.models.info import ModelInfo


def test_batches_are_sorted_and_fit_the_budget():
    lengths = np.array([10, 200, 50, 200, 30, 120, 10, 90])
    batches = length_sorted_batches(lengths, token_budget=400)
    flat = np.concatenate(batches)
    assert sorted(flat.tolist()) == list(range(len(lengths)))
    assert list(lengths[flat]) == sorted(lengths, reverse=True)
    for b in batches:
        assert len(b) * lengths[b].max() <= 400


def test_one_input_longer_than_the_budget_is_its_own_batch():
    batches = length_sorted_batches(np.array([500, 5]), token_budget=100)
    assert [list(b) for b in batches] == [[0], [1]]


class OutOfMemoryAbove:
    """Stands in for a GPU: raises torch's OutOfMemoryError above `limit` inputs per batch.
    (The real path runs on CUDA; this machine has none.)"""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.device = "cuda"
        self.info = ModelInfo("fake", 4, 512, 2)
        self.batch_sizes: list[int] = []

    def embed_token_ids(self, batch):
        self.batch_sizes.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.stack([np.full(4, ids.sum(), dtype=np.float32) for ids in batch])


def test_a_batch_that_runs_out_of_memory_is_split_and_results_keep_their_order():
    fake = OutOfMemoryAbove(limit=3)
    inputs = [np.arange(n) for n in (5, 9, 2, 7, 3, 8, 1, 6)]
    out = embed_inputs(fake, inputs, token_budget=10_000)
    assert [v[0] for v in out] == [float(x.sum()) for x in inputs]
    # 8 fails, then the first 4; once 4 failed the other 4 is not tried: straight to halves.
    assert fake.batch_sizes == [8, 4, 2, 2, 2, 2]
