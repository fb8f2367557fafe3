"""GPU batch paths that run the same on a CPU: padding without a per-row loop, the prefetch of
the next batch giving the very vectors of the plain path, the token budget sized from free
memory, and an out-of-memory split remembered for the rest of a partition."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from embedscale.engine.models.batching import embed_inputs
from embedscale.engine.models.info import ModelInfo, pad_batch
from embedscale.engine.models.memory import (
    MAX_GPU_TOKEN_BUDGET,
    MIN_GPU_TOKEN_BUDGET,
    gpu_token_budget,
)


def _loop_padding(batch, pad_id):
    """The padding as it was written before: one Python step per row."""
    width = max(len(ids) for ids in batch)
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    attention = np.zeros((len(batch), width), dtype=np.int64)
    for row, ids in enumerate(batch):
        input_ids[row, : len(ids)] = ids
        attention[row, : len(ids)] = 1
    return input_ids, attention


def test_vectorised_padding_equals_the_row_loop():
    rng = np.random.default_rng(3)
    batch = [rng.integers(1, 30000, size=n) for n in (7, 1, 256, 31, 256, 2)]
    ids, mask = pad_batch(batch, pad_id=0)
    want_ids, want_mask = _loop_padding(batch, 0)
    assert np.array_equal(ids, want_ids) and np.array_equal(mask, want_mask)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    ids, _ = pad_batch([np.array([5, 6])], pad_id=9)
    assert ids.tolist() == [[5, 6]]


def _inputs(model, n: int) -> list[np.ndarray]:
    rng = np.random.default_rng(7)
    words = ["vector", "partition", "worker", "tokenizer", "embedding", "cluster", "GPU"]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(3, 120)))) for _ in range(n)]
    return [
        model.wrap(np.asarray(e.ids, dtype=np.int64))
        for e in model.tokenizer.encode_batch(texts, add_special_tokens=False)
    ]


class _NoPrefetch:
    """The model without prepare/forward: embed_inputs takes its plain path."""

    def __init__(self, model) -> None:
        self._model, self.info, self.device = model, model.info, model.device

    def embed_token_ids(self, batch):
        return self._model.embed_token_ids(batch)


def test_prefetching_the_next_batch_gives_the_same_vectors(model):
    inputs = _inputs(model, 20)  # ~1,500 tokens: a few batches, each prefetched by the last
    assert sum(len(i) for i in inputs) > 2 * 512
    plain = embed_inputs(_NoPrefetch(model), inputs, token_budget=512)
    prefetched = embed_inputs(model, inputs, token_budget=512)
    assert np.array_equal(plain, prefetched)


def test_vectors_are_those_of_the_per_row_padding(model):
    # Today's vectors on the CPU, bit for bit: the padded ids fed to the same forward.
    inputs = _inputs(model, 12)
    ids, attention = _loop_padding(inputs, model._pad_id)
    features = {"input_ids": torch.from_numpy(ids), "attention_mask": torch.from_numpy(attention)}
    if model._wants_token_types:
        features["token_type_ids"] = torch.zeros_like(features["input_ids"])
    with torch.inference_mode():
        want = model._st.forward(features)["sentence_embedding"].float().numpy()
    assert np.array_equal(model.embed_token_ids(inputs), want)
    assert model.info.dtype == "float32" and next(model._st.parameters()).dtype == torch.float32


def test_token_budget_follows_free_memory_threads_and_bounds():
    minilm = {"hidden": 384, "intermediate": 1536, "heads": 12, "max_tokens": 256, "dtype_bytes": 2}
    small = gpu_token_budget(2 << 30, **minilm)
    assert MIN_GPU_TOKEN_BUDGET < small < MAX_GPU_TOKEN_BUDGET
    assert gpu_token_budget(1 << 30, **minilm) == pytest.approx(small / 2, rel=0.01)
    assert gpu_token_budget(2 << 30, threads=2, **minilm) == pytest.approx(small / 2, rel=0.01)
    assert gpu_token_budget(2 << 30, **{**minilm, "dtype_bytes": 4}) == pytest.approx(
        small / 2, rel=0.01
    )
    assert gpu_token_budget(140 << 30, **minilm) == MAX_GPU_TOKEN_BUDGET  # an H200's
    assert gpu_token_budget(1 << 20, **minilm) == MIN_GPU_TOKEN_BUDGET


class _PrefetchingOOM:
    """A model with prepare/forward that runs out of memory above `limit` rows per batch."""

    def __init__(self, limit: int) -> None:
        self.limit, self.device, self.token_budget = limit, "cuda", None
        self.info = ModelInfo("fake", 4, 512, 2)
        self.tried: list[int] = []

    def prepare(self, batch):
        return {"batch": batch}

    def forward(self, features):
        return self.embed_token_ids(features["batch"])

    def embed_token_ids(self, batch):
        self.tried.append(len(batch))
        if len(batch) > self.limit:
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")
        return np.stack([np.full(4, ids.sum(), dtype=np.float32) for ids in batch])


def test_an_out_of_memory_split_holds_for_the_rest_of_the_partition():
    fake = _PrefetchingOOM(limit=2)
    inputs = [np.arange(1, 11) + i for i in range(12)]  # 12 inputs of 10 tokens
    out = embed_inputs(fake, inputs, token_budget=40)  # batches of 4 rows planned
    assert [v[0] for v in out] == [float(x.sum()) for x in inputs]
    # The first batch of 4 fails and splits; every later batch is cut at 2 rows at once.
    assert fake.tried == [4, 2, 2, 2, 2, 2, 2]


def test_other_errors_are_not_split():
    class Broken(_PrefetchingOOM):
        def embed_token_ids(self, batch):
            raise ValueError("bad input")

    with pytest.raises(ValueError, match="bad input"):
        embed_inputs(Broken(1), [np.arange(5)] * 3, token_budget=100)
