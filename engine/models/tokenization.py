"""The tokenizer chunking uses: a private copy of a model's own fast tokenizer that neither
truncates nor pads (chunking cuts the text itself), and the special tokens the model wraps
every input in. Every backend (torch, ONNX, an HTTP provider's local tokenizer) makes it here,
so the ids made while chunking are the ids each model is fed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from embedscale.engine.errors import ModelError

if TYPE_CHECKING:
    from tokenizers import Tokenizer


@dataclass(frozen=True, slots=True)
class ChunkingTokenizer:
    """A `tokenizers.Tokenizer` without truncation or padding, the special token ids put
    before and after the content, and the padding id."""

    tokenizer: Tokenizer
    prefix: np.ndarray
    suffix: np.ndarray
    pad_id: int


def chunking_tokenizer(hf_tokenizer, model_name: str) -> ChunkingTokenizer:
    """The chunking copy of a transformers tokenizer; ModelError if it is not a fast one."""
    from tokenizers import Tokenizer

    if not getattr(hf_tokenizer, "is_fast", False):
        raise ModelError(f"model '{model_name}' has no fast tokenizer; embedscale needs one")
    tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
    tokenizer.no_truncation()
    tokenizer.no_padding()
    prefix, suffix = special_affixes(tokenizer)
    return ChunkingTokenizer(tokenizer, prefix, suffix, hf_tokenizer.pad_token_id or 0)


def special_affixes(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The special token ids the post-processor puts before and after a single sequence."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return (
                np.asarray(full[:i], dtype=np.int64),
                np.asarray(full[i + len(plain) :], dtype=np.int64),
            )
    raise ModelError("cannot locate the content between the tokenizer's special tokens")
