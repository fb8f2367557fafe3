"""Chunking with the real model's tokenizer: limits, coverage, word boundaries, one tokenization."""

from __future__ import annotations

import numpy as np
import pytest

from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts, window_bounds
from embedscale.engine.errors import ChunkingError
from embedscale.engine.models.info import ModelInfo
from tests.conftest import SAMPLE_CORPUS

INFO = ModelInfo("m", 384, 256, 2)


def corpus_texts() -> list[str]:
    paths = sorted((SAMPLE_CORPUS / "stdlib").glob("*.txt"))
    return [p.read_text() for p in paths]


def test_settings_defaults_and_validation():
    s = ChunkSettings.for_model(INFO)
    assert (s.chunk_tokens, s.overlap_tokens, s.content_tokens) == (256, 32, 254)
    assert ChunkSettings.for_model(INFO, 64).overlap_tokens == 15  # a quarter of 62
    with pytest.raises(ChunkingError, match="exceeds what model 'm' accepts"):
        ChunkSettings.for_model(INFO, 300)
    with pytest.raises(ChunkingError, match="leaves no room"):
        ChunkSettings.for_model(INFO, 2)
    with pytest.raises(ChunkingError, match="overlap_tokens=-1"):
        ChunkSettings.for_model(INFO, 64, -1)
    with pytest.raises(ChunkingError, match="overlap_tokens=62 must be"):
        ChunkSettings.for_model(INFO, 64, 62)


def test_window_bounds_cover_everything_and_respect_budget():
    starts = np.ones(100, dtype=bool)
    b = window_bounds(starts, budget=30, overlap=5)
    assert b[0] == (0, 30) and b[-1][1] == 100
    assert all(e - s <= 30 for s, e in b)
    assert all(b2[0] == e1 - 5 for (_, e1), b2 in zip(b, b[1:]))


def test_window_bounds_do_not_split_words():
    # Words of 3 tokens each: starts at 0, 3, 6, ...
    starts = np.zeros(30, dtype=bool)
    starts[::3] = True
    for s, e in window_bounds(starts, budget=10, overlap=4):
        assert starts[s] and (e == 30 or starts[e])
        assert e - s <= 10


def test_window_bounds_hard_split_of_one_giant_word():
    starts = np.zeros(50, dtype=bool)
    starts[0] = True
    b = window_bounds(starts, budget=20, overlap=0)
    assert b == [(0, 20), (20, 40), (40, 50)]


@pytest.mark.parametrize("chunk_tokens,overlap", [(256, 32), (64, 8), (32, 0)])
def test_chunks_fit_the_model_and_cover_the_text(model, chunk_tokens, overlap):
    settings = ChunkSettings.for_model(model.info, chunk_tokens, overlap)
    texts = corpus_texts()
    chunks = chunk_texts(texts, model.tokenizer, settings)
    assert len(chunks) > len(texts)
    for ids in chunks.content_ids:
        assert 0 < len(model.wrap(ids)) <= chunk_tokens <= model.info.max_tokens
    for d, text in enumerate(texts):
        mine = np.flatnonzero(chunks.doc_index == d)
        assert list(chunks.chunk_index[mine]) == list(range(len(mine)))
        covered = np.zeros(len(text), dtype=bool)
        for i in mine:
            covered[chunks.char_start[i] : chunks.char_end[i]] = True
        uncovered = "".join(c for c, ok in zip(text, covered) if not ok)
        assert uncovered.strip() == "", f"doc {d} has text outside every chunk: {uncovered!r}"


def test_chunk_ids_are_what_the_tokenizer_makes_of_the_chunk_text(model):
    """The ids fed to the model are those of the chunk's own text: no second tokenization is
    needed, and a chunk embeds exactly as its text would."""
    settings = ChunkSettings.for_model(model.info, 64, 8)
    texts = corpus_texts()
    chunks = chunk_texts(texts, model.tokenizer, settings)
    mismatches = 0
    for d, s, e, ids in zip(
        chunks.doc_index, chunks.char_start, chunks.char_end, chunks.content_ids
    ):
        again = model.tokenizer.encode(texts[d][s:e], add_special_tokens=False).ids
        mismatches += list(ids) != again
    assert mismatches == 0


def test_documents_without_tokens_give_no_chunks(model):
    settings = ChunkSettings.for_model(model.info)
    chunks = chunk_texts(["\u200b\u200b", "real words"], model.tokenizer, settings)
    assert list(chunks.doc_index) == [1]
