"""POST /v1/embeddings shares the cluster fairly (jobs/embeddings/batcher.py): a big request is
cut into short pieces, and another tenant's small request goes out between them instead of
waiting for the whole big one. On the real cluster, with the real model."""

from __future__ import annotations

import numpy as np
import pytest

from embedscale.engine.tasks.request_embedding import RequestEmbedded, RequestTooLong
from embedscale.jobs.embeddings.batcher import DEFAULT_MAX_CHARS, EmbeddingBatcher, _Request, cut

pytestmark = pytest.mark.slow
WORDS = ["cluster", "worker", "model", "batch", "token", "vector", "table", "quota", "tenant"]


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = np.random.default_rng(seed)
    return [" ".join(rng.choice(WORDS, size=int(rng.integers(4, 14)))) for _ in range(n)]


def test_a_request_is_cut_by_characters_and_inputs():
    request = _Request(spec=None, texts=["a" * 10, "b" * 10, "c" * 25, "d", "e"])
    assert [(p.start, p.stop) for p in cut(request, max_chars=20, max_inputs=10)] == [
        (0, 2),
        (2, 3),
        (3, 5),
    ]  # an input over the limit is a piece of its own
    assert [(p.start, p.stop) for p in cut(request, max_chars=1000, max_inputs=2)] == [
        (0, 2),
        (2, 4),
        (4, 5),
    ]
    assert [(p.start, p.stop) for p in cut(_Request(None, ["x"]), 1, 1)] == [(0, 1)]


@pytest.fixture
def batcher(cluster):
    """A batcher with one task in flight at a time: what it sends next is its choice alone. Its
    pieces are a quarter of the default's characters, so a quarter of the text makes as many."""
    b = EmbeddingBatcher(lambda: cluster.client, lambda: 1, max_chars=DEFAULT_MAX_CHARS // 4)
    yield b
    b.close()


def test_a_small_request_goes_between_the_pieces_of_a_big_one(batcher, st_model):
    from embedscale.engine.models import resolve_model

    spec = resolve_model("all-MiniLM-L6-v2")
    batcher.submit(spec, ["warm"], "warm").result(timeout=120)  # the model loaded
    big_texts = sentences(512)
    order: list[str] = []
    big = batcher.submit(spec, big_texts, "whale", weight=4.0)
    big.add_done_callback(lambda _: order.append("big"))
    small = batcher.submit(spec, ["a small request", "of two inputs"], "minnow")
    small.add_done_callback(lambda _: order.append("small"))
    embedded = big.result(timeout=300)
    small.result(timeout=300)
    assert order == ["small", "big"]
    assert batcher.counts.tasks >= 1 + 512 * 40 // batcher.max_chars  # the big one in pieces
    assert isinstance(embedded, RequestEmbedded) and embedded.vectors.shape == (512, 384)
    want = st_model.encode(big_texts, convert_to_numpy=True)
    cosine = (embedded.vectors * want).sum(1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999  # every piece's vectors, back in the request's order
    assert embedded.tokens == sum(len(ids) for ids in st_model.tokenizer(big_texts)["input_ids"])


def test_an_input_too_long_in_a_later_piece_is_named_by_its_place_in_the_request(batcher):
    from embedscale.engine.models import resolve_model

    spec = resolve_model("all-MiniLM-L6-v2")
    texts = sentences(600, seed=1)
    texts[517] = "token " * 400
    outcome = batcher.submit(spec, texts, "t").result(timeout=300)
    assert isinstance(outcome, RequestTooLong) and outcome.index == 517
