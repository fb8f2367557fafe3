"""What a model accepts, read from its files without loading its weights.

Lets a job's chunk sizes be checked when the job is submitted (through ChunkSettings.for_model,
the same rule the job applies when it starts) instead of failing after it was accepted. Only a
local sentence-transformers folder can say; for a hub id the job finds out when it starts.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path

from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.registry import ONNX_PROVIDERS, ModelSpec
from embedscale.engine.models.tokenization import special_affixes


@functools.lru_cache(maxsize=64)
def model_limits(spec: ModelSpec) -> ModelInfo | None:
    """The model's ModelInfo from its folder's files, or None when they do not say it all.

    sentence_bert_config.json's max_seq_length is what SentenceTransformer sets as the model's
    max_seq_length (SentenceTransformerModel's max_tokens); the special tokens come from the
    tokenizer.json post-processor, found as the backend finds them. Cached per spec: a few
    tens of milliseconds (the tokenizer file) on the first job with a model, none after.
    """
    if not spec.local or spec.backend not in ("sentence-transformers", *ONNX_PROVIDERS):
        return None
    folder = Path(spec.location)
    try:
        max_tokens = json.loads((folder / "sentence_bert_config.json").read_text())[
            "max_seq_length"
        ]
        dimension = json.loads((folder / "1_Pooling" / "config.json").read_text())[
            "word_embedding_dimension"
        ]
        tokenizer = local_tokenizer(spec)
        prefix, suffix = special_affixes(tokenizer)
    except Exception:  # missing or unusual files: the job checks when it loads the model
        return None
    if not isinstance(max_tokens, int) or not isinstance(dimension, int):
        return None
    return ModelInfo(
        spec.name, dimension, max_tokens, len(prefix) + len(suffix), provider=spec.backend
    )


@functools.lru_cache(maxsize=64)
def local_tokenizer(spec: ModelSpec):
    """The fast tokenizer of a local model folder (tokenizers.Tokenizer), configured as the
    backend's copy is (no truncation, no padding); an error where the folder has none."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(Path(spec.location) / "tokenizer.json"))
    tokenizer.no_truncation()  # as the backend's copy: the file's own pads to a length
    tokenizer.no_padding()
    return tokenizer
