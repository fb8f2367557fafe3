"""Which workers run models on a GPU, and how a job is planned for the cluster that runs it.

GPU workers say so with a Dask resource, `GPU` (the local-cuda cluster gives each of its
workers `GPU=1`; workers started with `dask cuda worker` take `--resources GPU=1`): the
scheduler already knows every worker's resources, so counting GPUs asks the workers nothing.
A model lands on a GPU by engine.models.devices.default_device's rule, never by this count.

Partitions for GPU workers are larger: a GPU embeds all-MiniLM-L6-v2 hundreds of times faster
than one CPU thread, so a partition sized for CPUs (down to 16 KiB, ~16 chunks) would leave it
idle between tiny batches and commit for every few milliseconds of work.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from embedscale.engine.sources.enumeration import MIN_PARTITION_BYTES

GPU_RESOURCE = "GPU"
# A GPU partition of 4 MiB is ~1M tokens: ~1,000 batches' worth of padding work per commit on
# a CPU, about half a second of a GPU's at 2M tokens/s, so commits stay off the critical path.
MIN_GPU_PARTITION_BYTES = 4 * 1024 * 1024


@dataclass(frozen=True, slots=True)
class PlanTarget:
    """What partition planning needs to know of the cluster."""

    parallelism: int  # tasks that run at once (worker threads)
    min_partition_bytes: int = MIN_PARTITION_BYTES
    gpus: int = 0


def plan_target(threads: int, gpus: int) -> PlanTarget:
    """The target for a cluster of `threads` task slots of which `gpus` workers own a GPU: a
    GPU cluster's partitions are at least MIN_GPU_PARTITION_BYTES."""
    if gpus > 0:
        return PlanTarget(max(1, threads), MIN_GPU_PARTITION_BYTES, gpus)
    return PlanTarget(max(1, threads))


def gpu_workers(scheduler_info: dict) -> int:
    """Workers of a `Client.scheduler_info()` answer that hold the GPU resource."""
    return sum(
        1
        for w in scheduler_info.get("workers", {}).values()
        if (w.get("resources") or {}).get(GPU_RESOURCE, 0) > 0
    )


class GpuCount:
    """GPU workers of a cluster, asked of the scheduler at most once per `max_age` seconds
    (job submissions ask on every plan)."""

    def __init__(self, max_age: float = 10.0) -> None:
        self.max_age = max_age
        self._value, self._at = 0, float("-inf")

    def __call__(self, client) -> int:
        now = time.monotonic()
        if now - self._at > self.max_age:
            try:
                self._value = gpu_workers(client.scheduler_info(n_workers=-1))
            except Exception:  # scheduler out of reach: plan as for CPUs
                self._value = 0
            self._at = now
        return self._value
