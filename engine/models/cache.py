"""One loaded instance of each model per worker process, shared by every task and job there.

Models are never shipped through the task graph: tasks carry a small ModelSpec and look the
model up here. ModelPreloadPlugin loads models when a worker starts, so the first job on a
fresh cluster does not pay the load inside its first partition.
"""
from __future__ import annotations

import threading

from distributed.diagnostics.plugin import WorkerPlugin

from engine.models.backend import EmbeddingModel, ModelInfo, load_model
from engine.models.registry import ModelSpec

_lock = threading.Lock()
_models: dict[tuple[str, str, str, str, str], EmbeddingModel] = {}
# Loads done in this process, per model: the tests ask each worker that it loaded a model once
# however many tasks and jobs used it.
_loads: dict[tuple[str, str, str, str, str], int] = {}


def _key(spec: ModelSpec, device: str | None) -> tuple[str, str, str, str, str]:
    # An HTTP provider's instance carries its tokenizer: one endpoint's model chunked with two
    # tokenizers is two instances. One model on torch and on ONNX is two instances too.
    tokenizer = spec.tokenizer.location if spec.tokenizer is not None else ""
    return (spec.name, spec.location, spec.backend, device or "", tokenizer)


def get_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """The process's instance of `spec`, loading it on first use (thread-safe)."""
    key = _key(spec, device)
    model = _models.get(key)
    if model is not None:
        return model
    with _lock:
        model = _models.get(key)
        if model is None:
            model = load_model(spec, device)
            _models[key] = model
            _loads[key] = _loads.get(key, 0) + 1
        return model


def load_count(spec: ModelSpec, device: str | None = None) -> int:
    """How many times this process has loaded `spec` (1 once it is in use, if cached well)."""
    return _loads.get(_key(spec, device), 0)


def describe_model(spec: ModelSpec) -> ModelInfo:
    """Load (or find) the model in this process and say what it is. Run as a task, it warms
    the worker that runs it."""
    return get_model(spec).info


class ModelPreloadPlugin(WorkerPlugin):
    """Loads the given models on every worker when it starts (and on workers that join later)."""

    name = "embedscale-model-preload"

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = list(specs)

    def setup(self, worker) -> None:
        for spec in self.specs:
            get_model(spec)
