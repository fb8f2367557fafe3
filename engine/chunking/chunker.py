"""Token-aware chunking with the model's own fast tokenizer.

Each document is tokenized once; chunks are windows over its tokens, cut at word starts so no
word is split (a single word longer than a window is the one exception), with the overlap
counted in tokens. The window's token ids become the model's input directly, and the tokenizer's
offsets give each chunk's exact character span in its document. No chunk is ever longer than
the model accepts, so nothing is silently truncated.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedscale.engine.errors import ChunkingError
from embedscale.engine.models.info import ModelInfo

DEFAULT_OVERLAP_TOKENS = 32


def chunk_geometry(
    max_tokens: int,
    special_tokens: int,
    chunk_tokens: int | None = None,
    overlap_tokens: int | None = None,
) -> tuple[int, int, int]:
    """(size, overlap, step) in tokens for a model's limits and the requested values: size is
    the model input (special tokens included, the model's maximum by default), overlap the
    tokens neighbours share (32 by default, at most a quarter of the text), step how far each
    chunk advances in its document. Not validated (ChunkSettings.for_model does that): the
    quota estimate applies the same rule to values a job checks only when it starts."""
    size = max_tokens if chunk_tokens is None else chunk_tokens
    content = size - special_tokens
    overlap = (
        min(DEFAULT_OVERLAP_TOKENS, content // 4) if overlap_tokens is None else overlap_tokens
    )
    return size, overlap, content - overlap


@dataclass(frozen=True, slots=True)
class ChunkSettings:
    """Chunk size and overlap, in tokens. `chunk_tokens` counts the model's special tokens, so
    it is exactly the length of the model's input."""

    chunk_tokens: int
    overlap_tokens: int
    special_tokens: int

    @property
    def content_tokens(self) -> int:
        return self.chunk_tokens - self.special_tokens

    @classmethod
    def for_model(
        cls, model: ModelInfo, chunk_tokens: int | None = None, overlap_tokens: int | None = None
    ) -> ChunkSettings:
        """Defaults (chunk_geometry's) and validation against the model."""
        size, overlap, _ = chunk_geometry(
            model.max_tokens, model.special_tokens, chunk_tokens, overlap_tokens
        )
        if size > model.max_tokens:
            raise ChunkingError(
                f"chunk_tokens={size} exceeds what model '{model.name}' accepts "
                f"({model.max_tokens} tokens); use at most {model.max_tokens}"
            )
        if size <= model.special_tokens:
            raise ChunkingError(
                f"chunk_tokens={size} leaves no room for text after the model's "
                f"{model.special_tokens} special tokens; use at least {model.special_tokens + 1}"
            )
        content = size - model.special_tokens
        if overlap < 0 or overlap >= content:
            raise ChunkingError(
                f"overlap_tokens={overlap} must be at least 0 and less than the chunk's "
                f"{content} text tokens (chunk_tokens={size})"
            )
        return cls(size, overlap, model.special_tokens)


@dataclass(slots=True)
class Chunks:
    """Chunks of a list of documents, as parallel arrays (one entry per chunk)."""

    doc_index: np.ndarray  # int32: which document
    chunk_index: np.ndarray  # int32: position within its document
    char_start: np.ndarray  # int64
    char_end: np.ndarray  # int64
    content_ids: list[np.ndarray]  # token ids of the text, without special tokens

    def __len__(self) -> int:
        return len(self.content_ids)


def window_bounds(starts_word: np.ndarray, budget: int, overlap: int) -> list[tuple[int, int]]:
    """[start, end) token windows of at most `budget` tokens covering every token.

    Ends are moved back to a word start when one lies in the window's second half, and starts
    forward to a word start within the overlap, so words stay whole and re-tokenizing a chunk's
    text gives the same ids.
    """
    n = len(starts_word)
    if n == 0:
        return []
    word_starts = np.flatnonzero(starts_word)
    bounds: list[tuple[int, int]] = []
    start = 0
    while True:
        end = min(start + budget, n)
        if end < n:
            i = np.searchsorted(word_starts, end, side="right") - 1
            if i >= 0 and word_starts[i] >= start + max(1, budget // 2):
                end = int(word_starts[i])
        bounds.append((start, end))
        if end >= n:
            return bounds
        nxt = max(end - overlap, start + 1)
        i = np.searchsorted(word_starts, nxt, side="left")
        start = int(word_starts[i]) if i < len(word_starts) and word_starts[i] <= end else end


def chunk_texts(texts: list[str], tokenizer, settings: ChunkSettings) -> Chunks:
    """Chunk documents with `tokenizer` (a tokenizers.Tokenizer without special tokens)."""
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False)
    doc_index: list[int] = []
    chunk_index: list[int] = []
    char_start: list[int] = []
    char_end: list[int] = []
    content_ids: list[np.ndarray] = []
    for d, enc in enumerate(encodings):
        ids = np.asarray(enc.ids, dtype=np.int64)
        if not len(ids):
            continue
        offsets = np.asarray(enc.offsets, dtype=np.int64)
        words = np.fromiter((-1 if w is None else w for w in enc.word_ids), np.int64, len(ids))
        starts_word = np.empty(len(ids), dtype=bool)
        starts_word[0] = True
        starts_word[1:] = (words[1:] != words[:-1]) | (words[1:] < 0)
        for c, (s, e) in enumerate(
            window_bounds(starts_word, settings.content_tokens, settings.overlap_tokens)
        ):
            doc_index.append(d)
            chunk_index.append(c)
            char_start.append(int(offsets[s, 0]))
            char_end.append(int(offsets[e - 1, 1]))
            content_ids.append(ids[s:e])
    return Chunks(
        np.asarray(doc_index, dtype=np.int32),
        np.asarray(chunk_index, dtype=np.int32),
        np.asarray(char_start, dtype=np.int64),
        np.asarray(char_end, dtype=np.int64),
        content_ids,
    )
