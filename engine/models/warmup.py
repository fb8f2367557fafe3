"""Loading a model on every worker before a job's first partition needs it."""

from __future__ import annotations

import contextlib
import threading
import uuid

from distributed import Client

from embedscale.engine.models.cache import ModelPreloadPlugin, describe_model
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.registry import ModelSpec

WARM_UP_PRIORITY = 1_000_000
# Models a worker that joins later loads at its start: those of the latest jobs. Older models'
# preload plugins are removed (their teardown frees them on every worker; a job still using
# one loads it again on its next partition), so a fresh worker does not load every model ever
# used, and a long-lived service does not keep them all on every GPU.
PRELOADED_MODELS = 3
_preloaded: dict[str, list[str]] = {}  # scheduler address -> preload plugin names, oldest first
_preloaded_lock = threading.Lock()  # jobs are prepared on several threads


def warm_up(client: Client, spec: ModelSpec) -> list[ModelInfo]:
    """Load the model on every worker at once (a task each) and return what each loaded (the
    same model; on CPU workers each with the precision it chose: engine.models.precision_forms);
    later workers (restarts, scale-ups) load it at start through a worker plugin."""
    if spec.backend == "openai":
        # Nothing heavy to load: one worker asks the endpoint its dimension (so an unreachable
        # one fails the job here, before anything is written); each worker connects on first
        # use. No preload plugin: a worker must start even while the endpoint is down.
        return [
            client.submit(
                describe_model,
                spec,
                pure=False,
                priority=WARM_UP_PRIORITY,
                key=f"warm-model-{uuid.uuid4().hex[:8]}",
            ).result()
        ]
    workers = list(client.nthreads())
    # Top priority: on a busy cluster these must not wait behind other jobs' partitions.
    futures = [
        client.submit(
            describe_model,
            spec,
            workers=[w],
            allow_other_workers=False,
            pure=False,
            key=f"warm-model-{uuid.uuid4().hex[:8]}-{w}",
            priority=WARM_UP_PRIORITY,
        )
        for w in workers
    ] or [client.submit(describe_model, spec, pure=False)]
    infos = client.gather(futures)
    # One plugin per model and provider: an ONNX job's must not replace the torch job's.
    suffix = "" if spec.backend == "sentence-transformers" else f"-{spec.backend}"
    name = f"embedscale-model-{spec.name}{suffix}"
    if _keep_latest_preloads(client, name):
        _register_preload(client, ModelPreloadPlugin([spec]), name)
    return list(infos)


def _register_preload(client: Client, plugin: ModelPreloadPlugin, name: str) -> None:
    """Register the preload plugin, once more if a worker left while the scheduler sent it
    out: the scheduler stores the plugin before it broadcasts it, and a worker whose
    connection closes mid-broadcast (an adaptive scale-down, a crash) fails the whole call
    with CommClosedError. The plugin is idempotent, so the second call keeps the stored one
    and sends nothing; the workers alive have loaded the model already (warm_up's tasks), and
    a worker that joins later gets it from the scheduler."""
    try:
        client.register_plugin(plugin, name=name)
    except OSError:  # distributed's CommClosedError is one
        client.register_plugin(plugin, name=name)


def _keep_latest_preloads(client: Client, name: str) -> bool:
    """Make `name` the latest preload plugin of the client's cluster, removing the oldest
    beyond PRELOADED_MODELS; True if it is not registered yet. A registered one is not
    registered again: replacing a plugin tears the old one down, which would unload its model
    from every worker only for the new one to load it again."""
    with _preloaded_lock:
        names = _preloaded.setdefault(str(client.scheduler.address), [])
        new = name not in names
        if not new:
            names.remove(name)
        names.append(name)
        dropped = names[:-PRELOADED_MODELS]
        del names[:-PRELOADED_MODELS]
    for oldest in dropped:
        with contextlib.suppress(Exception):  # already gone (workers restarted)
            client.unregister_worker_plugin(oldest)
    return new
