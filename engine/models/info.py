"""What every embedding model is, whatever runs it: `ModelInfo` (what the driver knows of a
model without loading it) and `EmbeddingModel` (what a loaded one does), and the helpers each
provider shares."""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from tokenizers import Tokenizer


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
    dtype: str = "float32"  # what the loaded model computes in (engine.models.precision)
    # The form it runs in (fp32, fp16, bf16-autocast, bf16-weights: engine.models.cpu_precision)
    # and, where chosen by measurement, its minimum cosine to fp32 on the calibration sample
    # and its speed over fp32 there. How a model runs, not what it is: left out of equality,
    # so limits read from its files still equal the loaded model's (and int8's the fp32's).
    precision: str = field(default="fp32", compare=False)
    precision_cosine: float | None = field(default=None, compare=False)
    precision_speedup: float | None = field(default=None, compare=False)


def precision_forms(infos: Sequence[ModelInfo]) -> list[dict[str, Any]]:
    """The forms a model runs in on the workers that loaded it, each once with how many workers
    run it so: `{"form": "bf16-weights", "precision": "bf16", "min_cosine": 0.9999, "speedup":
    1.93, "workers": 2}` (min_cosine and speedup None where nothing was measured). What a job
    records of its model (the runner's preparation) beside the precision it asked for."""
    counts: dict[tuple[str, float | None, float | None], int] = {}
    for info in infos:
        key = (info.precision, info.precision_cosine, info.precision_speedup)
        counts[key] = counts.get(key, 0) + 1
    return [
        {
            "form": form,
            "precision": form.split("-")[0],
            "min_cosine": cosine,
            "speedup": speedup,
            "workers": workers,
        }
        for (form, cosine, speedup), workers in sorted(counts.items(), key=lambda kv: -kv[1])
    ]


def form_label(form: str, min_cosine: float | None, speedup: float | None) -> str:
    """A form a model runs in, with what was measured of it: `bf16-weights (min cosine 0.99990,
    2.01x)`, or the form alone where nothing was."""
    if min_cosine is None or speedup is None:
        return form
    return f"{form} (min cosine {min_cosine:.5f}, {speedup:.2f}x)"


def describe_form(form: dict[str, Any]) -> str:
    """One of precision_forms' entries in words: `bf16-weights (min cosine 0.99990, 2.01x) on 2
    workers`."""
    label = form_label(form["form"], form["min_cosine"], form["speedup"])
    workers = form["workers"]
    return f"{label} on {workers} worker{'s' if workers != 1 else ''}"


class EmbeddingModel(Protocol):
    """A loaded model. `tokenizer` is a `tokenizers.Tokenizer` with no truncation, padding or
    special tokens (None for an HTTP provider loaded without one, for queries only: it chunks
    nothing); `wrap` adds the special tokens the model expects."""

    info: ModelInfo
    device: str

    @property
    def tokenizer(self) -> Tokenizer | None: ...

    def wrap(self, content_ids: np.ndarray) -> np.ndarray: ...

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray: ...

    def embed_texts(self, texts: list[str]) -> np.ndarray: ...


class PreparingModel(EmbeddingModel, Protocol):
    """A loaded model that splits a forward pass in two (SentenceTransformerModel):
    `prepare` pads a batch and copies it to the device, `forward` runs it, so the next batch is
    prepared on another thread while this one computes (engine.models.batching). Other models
    only `embed_token_ids`."""

    def prepare(self, batch: list[np.ndarray]) -> dict[str, Any]: ...

    def forward(self, features: dict[str, Any]) -> np.ndarray: ...


@contextmanager
def hub_offline(enabled: bool) -> Iterator[None]:
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


def pad_batch(batch: list[np.ndarray], pad_id: int) -> tuple[np.ndarray, np.ndarray]:
    """Inputs of several lengths as one [rows, longest] id matrix (pad_id after each) and its
    attention mask, with no per-row Python loop: one concatenate and one masked assignment
    (row-major order fills each row's leading cells with that row's ids)."""
    lengths = np.fromiter(map(len, batch), np.int64, len(batch))
    width = int(lengths.max()) if len(batch) else 0
    mask = np.arange(width) < lengths[:, None]
    input_ids = np.full((len(batch), width), pad_id, dtype=np.int64)
    if len(batch):
        input_ids[mask] = np.concatenate(batch)
    return input_ids, mask.astype(np.int64)
