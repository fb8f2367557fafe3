"""The task behind POST /v1/embeddings: the texts of several API requests, tokenized and embedded
together on a worker with its warm model (engine.models.cache), one answer per request.

The requests of one task share the model's forward passes (engine.models.batching sorts all their
inputs by length and sizes batches by tokens), and each request keeps its own outcome: one whose
input is longer than the model accepts is refused on its own, the others are embedded. Nothing
is truncated, as nothing is in a job's chunks either.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from embedscale.engine.models.batching import embed_inputs
from embedscale.engine.models.cache import get_model
from embedscale.engine.models.registry import ModelSpec


@dataclass(frozen=True, slots=True)
class RequestEmbedded:
    """A request's vectors (float32 [inputs, dim], in its order) and the tokens the model read
    for them, special tokens included (as a job's chunks count them)."""

    vectors: np.ndarray
    tokens: int


@dataclass(frozen=True, slots=True)
class RequestTooLong:
    """A request refused: its input `index` has `tokens` tokens, over the model's `max_tokens`."""

    index: int
    tokens: int
    max_tokens: int


RequestOutcome = RequestEmbedded | RequestTooLong


def embed_request_texts(
    spec: ModelSpec, requests: list[list[str]], token_budget: int | None = None
) -> list[RequestOutcome]:
    """Tokenize every request's texts with the model's own tokenizer, refuse the requests with an
    input over the model's limit, and embed the inputs of all the others in shared batches."""
    model = get_model(spec)
    # Requests name local models (jobs.embeddings: resolve_model), which all have a tokenizer.
    assert model.tokenizer is not None
    flat = [text for texts in requests for text in texts]
    encodings = model.tokenizer.encode_batch(flat, add_special_tokens=False)
    inputs = [model.wrap(np.asarray(e.ids, dtype=np.int64)) for e in encodings]
    limit = model.info.max_tokens
    outcomes: list[RequestOutcome | None] = []  # None: kept, embedded below
    kept: list[tuple[int, int, int]] = []  # (request, first input, inputs)
    start = 0
    for number, texts in enumerate(requests):
        mine = inputs[start : start + len(texts)]
        too_long = next((i for i, x in enumerate(mine) if len(x) > limit), None)
        if too_long is None:
            outcomes.append(None)
            kept.append((number, start, len(texts)))
        else:
            outcomes.append(RequestTooLong(too_long, len(mine[too_long]), limit))
        start += len(texts)
    vectors = embed_inputs(
        model, [x for _, first, n in kept for x in inputs[first : first + n]], token_budget
    )
    embedded: dict[int, RequestEmbedded] = {}  # request -> its vectors, for each one kept
    offset = 0
    for number, first, n in kept:
        tokens = int(sum(len(x) for x in inputs[first : first + n]))
        embedded[number] = RequestEmbedded(vectors[offset : offset + n], tokens)
        offset += n
    return [embedded[number] if o is None else o for number, o in enumerate(outcomes)]
