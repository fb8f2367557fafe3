"""Start or connect to a Dask cluster from a spec (cluster_specs/*.yaml)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any

import dask
from distributed import Client

from embedscale.engine.cluster.spec import KINDS, ClusterKind, ClusterSpec, dashboard_bind
from embedscale.engine.cluster.worker_start import worker_start_config
from embedscale.engine.errors import EmbedscaleError, error_line

__all__ = [
    "KINDS",
    "WORKER_DASK_CONFIG",
    "Cluster",
    "ClusterKind",
    "ClusterSpec",
    "dashboard_bind",
    "start_cluster",
]

# Dask's nannies give workers MALLOC_TRIM_THRESHOLD_=65536 to return memory to the OS sooner.
# Setting it switches off glibc's dynamic mmap threshold, so every batch's activation buffers
# are mmap'ed and unmapped afresh: the same embedding ran 13% slower in such a worker (6.3 s vs
# 5.5 s for 96 inputs of 256 tokens on one thread). Workers we start go without it. Their
# statistical profiler samples every 100 ms instead of 10 ms: the dashboard's profile stays
# useful and the sampling no longer costs the model 2-3% of its time.
WORKER_DASK_CONFIG = {
    "distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None,
    # A task that killed two workers is poison (a tenant's file that exhausts memory): Dask's
    # default, 3 re-runs, would take down four, every tenant's work on them with it.
    "distributed.scheduler.allowed-failures": 1,
    "distributed.worker.profile.interval": "100ms",
    # No scheduler-side queue: embedscale's runner bounds what it has in flight itself and
    # orders it with Dask's task priority. With Dask's queue (a task of a large group without
    # dependencies is held there while every worker has one waiting), a small job's task
    # waited for a slot to free and then behind the whole slice that worker had just started
    # (measured: p50 1.0 s beside a big job with 1-second slices). Clusters started elsewhere
    # keep their operator's setting (README, clusters).
    "distributed.scheduler.worker-saturation": float("inf"),
}


class Cluster:
    """A connected client, and the cluster it started if any (closed with it)."""

    def __init__(
        self,
        client: Client,
        cluster: Any | None,
        dashboard: bool = True,
        adaptive: dict[str, Any] | None = None,
        threads_per_worker: int = 1,
    ) -> None:
        self.client = client
        self._cluster = cluster
        self._dashboard = dashboard
        self._workers: dict[str, int] = {}  # address -> threads, as last asked
        self._threads_at = float("-inf")
        self.adaptive_options = adaptive  # the spec's `adaptive` section (None: fixed size)
        self.adaptive: Any | None = None  # engine.cluster.autoscale's scaler, once started
        # The task slots the cluster may grow to: jobs are planned into partitions for these,
        # not for the few workers an adaptive cluster has before the work arrives.
        self.max_threads = adaptive["maximum"] * threads_per_worker if adaptive else 0

    def autoscale(self, backlog) -> None:
        """Grow and shrink the cluster with `backlog()` (partitions not yet done), within the
        spec's adaptive bounds; nothing without an adaptive section."""
        if self.adaptive_options is None or self._cluster is None or self.adaptive is not None:
            return
        from embedscale.engine.cluster.autoscale import start_adaptive

        self.adaptive = start_adaptive(self._cluster, backlog, self.adaptive_options)

    @property
    def manager(self) -> Any | None:
        """The cluster object we started (LocalCluster, LocalCUDACluster), None for a cluster
        reached by its address."""
        return self._cluster

    @property
    def dashboard_link(self) -> str | None:
        """None without a dashboard (the scheduler's HTTP server, which the client would still
        link to, then serves no dashboard)."""
        return self.client.dashboard_link if self._dashboard else None

    def worker_threads(self, max_age: float = 0.0) -> int:
        """Total task slots (threads over all workers); 0 while none is known (no worker yet,
        or the scheduler is out of reach). With `max_age`, a figure that recent is reused:
        the runner asks on every feed, and `nthreads` is a round trip to the scheduler."""
        return sum(self._nthreads(max_age).values())

    def worker_addresses(self, max_age: float = 0.0) -> list[str]:
        """The workers' addresses (none while none is known), as recent as `max_age`."""
        return list(self._nthreads(max_age))

    def _nthreads(self, max_age: float) -> dict[str, int]:
        now = time.monotonic()
        if max_age and now - self._threads_at <= max_age:
            return self._workers
        try:
            workers = dict(self.client.nthreads())
        except Exception:  # lost the scheduler: nothing can be fed until it is back
            workers = {}
        self._workers, self._threads_at = workers, now
        return workers

    def close(self) -> None:
        if self.adaptive is not None:
            self.adaptive.stop(reason="embedscale is closing the cluster")
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(spec: ClusterSpec) -> Cluster:
    """Start the cluster a spec describes (or connect to it) and return a connected Cluster."""
    from embedscale.engine.cluster.security import connect_error, security_of

    spec.checked()
    security = security_of(spec.tls)
    if spec.kind == "address":
        try:
            client = Client(spec.address, timeout="10s", security=security)
        except (OSError, TypeError, ValueError) as exc:
            raise EmbedscaleError(connect_error(spec.address, security, exc)) from None
        return _scrubbing(Cluster(client, None))
    if spec.kind == "manager":
        cluster = _managed_cluster(spec)
        return _scrubbing(
            Cluster(
                Client(cluster, security=security),
                cluster,
                adaptive=spec.adaptive,
                threads_per_worker=spec.threads_per_worker,
            )
        )
    worker_config = dict(WORKER_DASK_CONFIG)
    if spec.kind != "local-cuda":  # GPU workers are spawned: see engine.cluster.worker_start
        # Process-wide, not only while the cluster starts: a worker Dask restarts later (its
        # nanny reads the method again) is forked too, not spawned with the imports again.
        dask.config.update(dask.config.config, _nested(worker_start_config()), priority="new")
    else:  # spawned, even in a process whose local cluster made forking its default
        worker_config["distributed.worker.multiprocessing-method"] = "spawn"
    if spec.adaptive is not None:
        # Workers an adaptive cluster adds later are made on its event loop, long after a
        # `with dask.config.set(...)` would have ended: they must see the same config, so it
        # goes into this process's Dask config for good (only clusters it starts read it).
        dask.config.update(dask.config.config, _nested(worker_config), priority="new")
    with dask.config.set(worker_config):
        if spec.kind == "local-cuda":
            cluster = _local_cuda_cluster(spec, security)
        else:
            cluster = _local_cluster(spec, security)
    return _scrubbing(
        Cluster(
            Client(cluster, security=security),
            cluster,
            dashboard_bind(spec.dashboard_address) is not None,
            adaptive=spec.adaptive,
            threads_per_worker=spec.threads_per_worker,
        )
    )


def _scrubbing(cluster: Cluster) -> Cluster:
    """The cluster with no tenant text in its workers' logs of failed tasks
    (engine/cluster/worker_logs.py). A cluster whose workers cannot take the plugin still runs jobs:
    that is said once, in this process's log."""
    from embedscale.engine.cluster.worker_logs import ScrubTaskErrorsPlugin

    try:
        cluster.client.register_plugin(ScrubTaskErrorsPlugin())
    except Exception as exc:
        logging.getLogger(__name__).warning(
            "the workers did not take embedscale's log scrubbing (%s): their logs of failed "
            "tasks may quote documents",
            error_line(exc),
        )
    return cluster


def _nested(dotted: dict[str, Any]) -> dict[str, Any]:
    """{'a.b.c': v} as {'a': {'b': {'c': v}}}, the form dask.config.update takes."""
    nested: dict[str, Any] = {}
    for key, value in dotted.items():
        *parents, leaf = key.split(".")
        node = nested
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return nested


def _managed_cluster(spec: ClusterSpec) -> Any:
    """An instance of the spec's cluster manager class, started with its options."""
    import importlib

    module_name, _, class_name = (spec.manager or "").rpartition(".")
    try:
        manager_class = getattr(importlib.import_module(module_name), class_name)
    except (ImportError, AttributeError, ValueError) as exc:
        package = module_name.split(".")[0].replace("_", "-")
        raise EmbedscaleError(
            f"cannot load cluster manager {spec.manager!r} ({exc}): pip install {package}"
        ) from None
    try:
        cluster = manager_class(**(spec.manager_options or {}))
        if spec.n_workers:
            cluster.scale(spec.n_workers)
    except Exception as exc:
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise EmbedscaleError(
            f"cannot start cluster manager {spec.manager}: {type(exc).__name__}: {reason}"
        ) from None
    return cluster


def _protocol(security: Any | None) -> str | None:
    return "tls://" if security is not None else None


def _local_cluster(spec: ClusterSpec, security: Any | None = None) -> Any:
    from distributed import LocalCluster

    workers = spec.n_workers or os.cpu_count() or 1
    if spec.adaptive is not None:  # adapt() sizes it from here
        workers = int(spec.adaptive.get("minimum", 0) or 0)
    return LocalCluster(
        n_workers=workers,
        threads_per_worker=spec.threads_per_worker,
        processes=True,
        memory_limit=spec.memory_limit,
        dashboard_address=dashboard_bind(spec.dashboard_address),
        silence_logs=_log_level(spec),
        host=spec.host,
        scheduler_port=spec.scheduler_port,
        security=security,
        protocol=_protocol(security),
    )


def _log_level(spec: ClusterSpec) -> int:
    level = logging.getLevelName(spec.log_level.upper())
    if not isinstance(level, int):
        raise EmbedscaleError(
            f"unknown log_level {spec.log_level!r}: use debug, info, warning, error or critical"
        )
    return level


def _local_cuda_cluster(spec: ClusterSpec, security: Any | None = None) -> Any:
    # Workers whose torch sees no GPU would run the model on one CPU thread each, far slower
    # than a plain local cluster: refuse rather than start that. (Spawned workers, so asking
    # torch here initialises no CUDA context that they would inherit.)
    cuda: str | None = None  # the CUDA version torch was built for
    try:
        import torch
    except ImportError:
        sees_gpu, build = False, "no torch"
    else:
        sees_gpu, build, cuda = (
            torch.cuda.is_available(),
            f"torch {torch.__version__}",
            torch.version.cuda,
        )
    if not sees_gpu:
        raise EmbedscaleError(
            f"the local-cuda cluster needs a GPU that torch can use, and {build} "
            f"(CUDA {cuda or 'none'}) sees "
            "none: install a CUDA build of torch for your driver (see the README's GPU "
            "section) or use the local cluster (cluster_specs/local.yaml)"
        )
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise EmbedscaleError(
            "the local-cuda cluster needs dask-cuda: pip install 'embedscale[gpu]'"
        ) from None
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=spec.cuda_visible_devices,
        # Each worker owns one GPU and says so: partitions are planned for GPUs
        # (engine.cluster.placement) from this resource.
        resources={"GPU": 1},
        threads_per_worker=spec.threads_per_worker,
        memory_limit=spec.memory_limit,
        dashboard_address=dashboard_bind(spec.dashboard_address),
        silence_logs=_log_level(spec),
        scheduler_port=spec.scheduler_port,
        security=security,
        protocol=_protocol(security),
    )
