"""Embedding backends. A backend embeds token ids made by its own tokenizer, so the ids made
while chunking feed the model directly: each text is tokenized exactly once."""
from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from engine.errors import ModelError
from engine.models.registry import ModelSpec


@dataclass(frozen=True, slots=True)
class ModelInfo:
    """What the driver needs to know of a model without loading it: for the table schema and
    for validating chunk sizes."""

    name: str
    dimension: int
    max_tokens: int  # the longest input, special tokens included, the model accepts
    special_tokens: int  # how many special tokens wrap every input ([CLS] ... [SEP] = 2)
    provider: str = "sentence-transformers"  # where the vectors come from (ModelSpec.backend)
    provider_url: str | None = None  # "openai": the endpoint's base URL


class EmbeddingModel(Protocol):
    """A loaded model. `tokenizer` is a `tokenizers.Tokenizer` with no truncation, padding or
    special tokens; `wrap` adds the special tokens the model expects."""

    info: ModelInfo
    tokenizer: object
    device: str

    def wrap(self, content_ids: np.ndarray) -> np.ndarray: ...

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


@contextmanager
def _hub_offline(enabled: bool) -> Iterator[None]:
    # Local folders must never reach for the hub (there may be no network at all).
    if not enabled:
        yield
        return
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old


def default_device() -> str:
    """`EMBEDSCALE_DEVICE` if set, else the GPU this process sees (dask-cuda gives each worker
    one), else the CPU."""
    forced = os.environ.get("EMBEDSCALE_DEVICE")
    if forced:
        return forced
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


class SentenceTransformerModel:
    """A sentence-transformers model on torch, fed with pre-tokenized, padded id tensors."""

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        from sentence_transformers import SentenceTransformer
        from tokenizers import Tokenizer

        self.device = device or default_device()
        _quiet_transformers()
        try:
            with _hub_offline(spec.local):
                self._st = SentenceTransformer(spec.location, device=self.device)
        except Exception as exc:
            raise ModelError(
                f"cannot load model '{spec.name}' from {spec.location}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        self._st.eval()
        hf_tokenizer = self._st.tokenizer
        if not getattr(hf_tokenizer, "is_fast", False):
            raise ModelError(f"model '{spec.name}' has no fast tokenizer; embedscale needs one")
        # A private copy: the model's own tokenizer truncates and pads, which chunking must not.
        self.tokenizer = Tokenizer.from_str(hf_tokenizer.backend_tokenizer.to_str())
        self.tokenizer.no_truncation()
        self.tokenizer.no_padding()
        self._prefix, self._suffix = _special_affixes(self.tokenizer)
        self._pad_id = hf_tokenizer.pad_token_id or 0
        self._wants_token_types = "token_type_ids" in hf_tokenizer.model_input_names
        # Renamed in sentence-transformers 6; the old name still exists with a warning.
        dim_of = getattr(self._st, "get_embedding_dimension", None)
        dim = dim_of() if dim_of else self._st.get_sentence_embedding_dimension()
        self.info = ModelInfo(
            name=spec.name,
            dimension=int(dim),
            max_tokens=int(self._st.max_seq_length),
            special_tokens=len(self._prefix) + len(self._suffix),
        )

    def wrap(self, content_ids: np.ndarray) -> np.ndarray:
        """The model's input for one chunk: its special tokens around the content ids."""
        return np.concatenate([self._prefix, content_ids, self._suffix]).astype(np.int64)

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray:
        """Embed a batch of full inputs (already wrapped); returns float32 [len(batch), dim]."""
        import torch

        width = max(len(ids) for ids in batch)
        input_ids = np.full((len(batch), width), self._pad_id, dtype=np.int64)
        attention = np.zeros((len(batch), width), dtype=np.int64)
        for row, ids in enumerate(batch):
            input_ids[row, : len(ids)] = ids
            attention[row, : len(ids)] = 1
        features = {
            "input_ids": torch.from_numpy(input_ids).to(self.device),
            "attention_mask": torch.from_numpy(attention).to(self.device),
        }
        if self._wants_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        with torch.inference_mode():
            out = self._st.forward(features)["sentence_embedding"]
        return out.float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed short texts such as search queries (truncated to the model's limit)."""
        return np.asarray(self._st.encode(texts, convert_to_numpy=True), dtype=np.float32)


def _quiet_transformers() -> None:
    # transformers draws a progress bar per weight load: noise in every worker's log.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def _special_affixes(tokenizer) -> tuple[np.ndarray, np.ndarray]:
    """The special token ids the post-processor puts before and after a single sequence."""
    plain = tokenizer.encode("a", add_special_tokens=False).ids
    full = tokenizer.encode("a", add_special_tokens=True).ids
    for i in range(len(full) - len(plain) + 1):
        if full[i : i + len(plain)] == plain:
            return (np.asarray(full[:i], dtype=np.int64),
                    np.asarray(full[i + len(plain):], dtype=np.int64))
    raise ModelError("cannot locate the content between the tokenizer's special tokens")


def load_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """Load a model with the backend its spec names."""
    if spec.backend == "sentence-transformers":
        return SentenceTransformerModel(spec, device)
    if spec.backend == "openai":
        from engine.models.openai_http import OpenAIHTTPModel  # no torch on this path

        return OpenAIHTTPModel(spec)
    if spec.backend == "onnx":
        from engine.models.onnx_model import load_onnx_model  # onnxruntime only on this path

        return load_onnx_model(spec, device)
    raise ModelError(f"unknown model backend '{spec.backend}' for model '{spec.name}'")
