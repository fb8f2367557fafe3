"""Loading a model on every worker before a job's first partition needs it."""
from __future__ import annotations

import uuid

from distributed import Client

from engine.models.backend import ModelInfo
from engine.models.cache import ModelPreloadPlugin, describe_model
from engine.models.registry import ModelSpec

WARM_UP_PRIORITY = 1_000_000


def warm_up(client: Client, spec: ModelSpec) -> ModelInfo:
    """Load the model on every worker at once (a task each) and return what it is; later
    workers (restarts, scale-ups) load it at start through a worker plugin."""
    if spec.backend == "openai":
        # Nothing heavy to load: one worker asks the endpoint its dimension (so an unreachable
        # one fails the job here, before anything is written); each worker connects on first
        # use. No preload plugin: a worker must start even while the endpoint is down.
        return client.submit(describe_model, spec, pure=False, priority=WARM_UP_PRIORITY,
                             key=f"warm-model-{uuid.uuid4().hex[:8]}").result()
    workers = list(client.nthreads())
    # Top priority: on a busy cluster these must not wait behind other jobs' partitions.
    futures = [client.submit(describe_model, spec, workers=[w], allow_other_workers=False,
                             pure=False, key=f"warm-model-{uuid.uuid4().hex[:8]}-{w}",
                             priority=WARM_UP_PRIORITY)
               for w in workers] or [client.submit(describe_model, spec, pure=False)]
    infos = client.gather(futures)
    # One plugin per model and provider: an ONNX job's must not replace the torch job's.
    suffix = "" if spec.backend == "sentence-transformers" else f"-{spec.backend}"
    client.register_plugin(ModelPreloadPlugin([spec]),
                           name=f"embedscale-model-{spec.name}{suffix}")
    return infos[0]
