"""One loaded instance of each model per worker process, shared by every task and job there.

Models are never shipped through the task graph: tasks carry a small ModelSpec and look the
model up here. ModelPreloadPlugin loads models when a worker starts, so the first job on a
fresh cluster does not pay the load inside its first partition.
"""

from __future__ import annotations

import gc
import itertools
import logging
import threading

from distributed.core import Status
from distributed.diagnostics.plugin import WorkerPlugin

from embedscale.engine.models.info import EmbeddingModel, ModelInfo
from embedscale.engine.models.loading import load_model
from embedscale.engine.models.registry import ModelSpec

log = logging.getLogger(__name__)
_lock = threading.Lock()
_clock = itertools.count()  # recency of use, for least-recently-used eviction
_used: dict[tuple, int] = {}
_Key = tuple[str, str, str, str, str, str]
_models: dict[_Key, EmbeddingModel] = {}
# Loads done in this process, per model: the tests ask each worker that it loaded a model once
# however many tasks and jobs used it.
_loads: dict[_Key, int] = {}


def _key(spec: ModelSpec, device: str | None) -> _Key:
    # An HTTP provider's instance carries its tokenizer: one endpoint's model chunked with two
    # tokenizers is two instances. One model on torch and on ONNX is two instances too, and
    # one model in two precisions.
    tokenizer = spec.tokenizer.location if spec.tokenizer is not None else ""
    return (spec.name, spec.location, spec.backend, device or "", tokenizer, spec.precision)


def get_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """The process's instance of `spec`, loading it on first use (thread-safe). Loading one
    evicts the least recently used others of its device while the models there exceed the
    process's model memory budget (engine.models.memory.model_memory_budget)."""
    key = _key(spec, device)
    model = _models.get(key)
    if model is not None:
        _used[key] = next(_clock)  # one dict store: no lock on the hot path
        return model
    with _lock:
        model = _models.get(key)
        if model is None:
            model = load_model(spec, device)
            _models[key] = model
            _loads[key] = _loads.get(key, 0) + 1
            _evict_over_budget(key)
        _used[key] = next(_clock)
        return model


def _evict_over_budget(keep: tuple) -> None:
    """Under _lock: drop least recently used models of `keep`'s device while the models there
    take more than the budget; `keep` (just loaded) stays whatever its size."""
    device = getattr(_models[keep], "device", "cpu") or "cpu"
    same = [k for k, m in _models.items() if (getattr(m, "device", "cpu") or "cpu") == device]
    sizes = {k: int(getattr(_models[k], "memory_bytes", 0) or 0) for k in same}
    if sum(sizes.values()) <= 0:
        return
    from embedscale.engine.models.memory import model_memory_budget

    budget = model_memory_budget(device)
    for k in sorted((k for k in same if k != keep), key=lambda k: _used.get(k, -1)):
        if sum(sizes.values()) <= budget:
            break
        log.info("evicting model %s from %s: models there exceed %d bytes", k[0], device, budget)
        _drop(k)
        sizes.pop(k)


def _drop(key: tuple) -> None:
    """Forget a model (under _lock). Its memory goes once no running batch holds it; the GPU
    allocator's cache is emptied so other processes and models can have it."""
    model = _models.pop(key, None)
    _used.pop(key, None)
    if model is None:
        return
    cuda = str(getattr(model, "device", "")).startswith("cuda")
    del model
    gc.collect()
    if cuda:
        import torch

        torch.cuda.empty_cache()


def release_model(spec: ModelSpec, device: str | None = None) -> bool:
    """Unload `spec` from this process (as loaded for `device`); False if it was not loaded."""
    with _lock:
        key = _key(spec, device)
        loaded = key in _models
        _drop(key)
        return loaded


def loaded_models() -> list[str]:
    """Names of the models this process holds, least recently used first."""
    return [k[0] for k in sorted(_models, key=lambda k: _used.get(k, -1))]


def loaded_model_precisions() -> list[str]:
    """What loaded_models() lists, each with the form it runs in and, where measured, its
    minimum cosine to fp32 and speed over fp32: `all-MiniLM-L6-v2 (bf16-weights, 0.99990,
    2.01x)`, for `embedscale cluster status`."""
    labels = []
    for key in sorted(_models, key=lambda k: _used.get(k, -1)):
        info = _models[key].info
        parts = [info.precision]
        if info.precision_cosine is not None and info.precision_speedup is not None:
            parts += [f"{info.precision_cosine:.5f}", f"{info.precision_speedup:.2f}x"]
        labels.append(f"{key[0]} ({', '.join(parts)})")
    return labels


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
    # Registering it again (another job, another service on the same scheduler) changes
    # nothing: replacing it would tear it down, unloading its models only to load them again.
    idempotent = True

    def __init__(self, specs: list[ModelSpec]) -> None:
        self.specs = list(specs)

    def setup(self, worker) -> None:
        for spec in self.specs:
            get_model(spec)

    def teardown(self, worker) -> None:
        """The plugin is removed, or the worker closes: its models leave the worker (and the
        GPU) rather than wait for the process to end. A worker process of its own (started by a
        nanny) that closes ends with them: freeing them there would cost a full garbage
        collection, about a second of CPU, for nothing."""
        if _closing_in_its_own_process(worker):
            return
        for spec in self.specs:
            release_model(spec)


def _closing_in_its_own_process(worker) -> bool:
    """Whether `worker` is closing in a process that ends with it (a nanny's worker)."""
    return getattr(worker, "status", None) == Status.closing and bool(
        getattr(worker, "nanny", None)
    )
