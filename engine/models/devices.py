"""Where a model runs in this process: the CPU, or the GPU dask-cuda gave this worker."""

from __future__ import annotations

import os


def default_device() -> str:
    """Where this process runs a model: `EMBEDSCALE_DEVICE` if set; else, in a Dask worker, its
    GPU only when dask-cuda started it (LocalCUDACluster or `dask cuda worker` make each worker
    see its own GPU first), so plain LocalCluster workers on a GPU box stay on the CPU instead
    of all crowding onto GPU 0; outside a worker, the GPU if torch sees one."""
    forced = os.environ.get("EMBEDSCALE_DEVICE")
    if forced:
        return forced
    import torch

    if not torch.cuda.is_available():
        return "cpu"
    worker = dask_worker()
    if worker is None:
        return "cuda"
    return "cuda" if is_dask_cuda_worker(worker) else "cpu"


def dask_worker():
    """The Dask worker of this process, if any: the one running this task, or else the only
    worker here (a plugin's setup runs outside any task)."""
    try:
        from distributed import get_worker
        from distributed.worker import Worker
    except ImportError:
        return None
    try:
        return get_worker()
    except ValueError:
        workers = list(Worker._instances)
        return workers[0] if len(workers) == 1 else None


def is_dask_cuda_worker(worker) -> bool:
    """dask-cuda gives each of its workers a CPUAffinity plugin for the GPU it owns."""
    return any(
        type(p).__module__.startswith("dask_cuda") for p in getattr(worker, "plugins", {}).values()
    )
