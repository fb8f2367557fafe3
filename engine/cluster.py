"""Start or connect to a Dask cluster from a spec (cluster_specs/*.yaml)."""
from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, Literal

import dask
import yaml
from distributed import Client

from engine.errors import EmbedscaleError

ClusterKind = Literal["local", "local-cuda", "address"]

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
}


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Where jobs run: a LocalCluster, a LocalCUDACluster (one worker per GPU), or the cluster
    behind a scheduler address."""

    kind: ClusterKind = "local"
    n_workers: int | None = None  # local: None = one per core
    threads_per_worker: int = 1
    memory_limit: str | int = "auto"
    # A bare ':port' listens on loopback (see dashboard_bind); None or 'none': no dashboard.
    dashboard_address: str | None = ":8787"
    address: str | None = None  # kind=address
    cuda_visible_devices: str | None = None  # kind=local-cuda
    log_level: str = "error"  # local workers' log level (their output shares our terminal)

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClusterSpec:
        """Read a spec file; unknown keys are an error, so typos do not pass silently."""
        try:
            data: dict[str, Any] = yaml.safe_load(Path(path).read_text()) or {}
        except OSError as exc:
            raise EmbedscaleError(f"cannot read cluster spec {path}: {exc.strerror}") from None
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise EmbedscaleError(f"cluster spec {path}: unknown keys {sorted(unknown)}; "
                                  f"known: {sorted(known)}")
        spec = cls(**data)
        if spec.kind not in ("local", "local-cuda", "address"):
            raise EmbedscaleError(f"cluster spec {path}: unknown kind {spec.kind!r}")
        if spec.kind == "address" and not spec.address:
            raise EmbedscaleError(f"cluster spec {path}: kind 'address' needs an address")
        return spec


def dashboard_bind(address: str | None, host: str = "127.0.0.1") -> str | None:
    """Where a dashboard we start listens. distributed binds a bare ':8787' to every interface
    (0.0.0.0), and the dashboard has no authentication: a bare port goes on `host` instead.
    None, '' or 'none' means no dashboard."""
    if address is None or address.strip().lower() in ("", "none"):
        return None
    if not address.startswith(":"):
        return address  # the operator named the interface
    if ":" in host:  # distributed splits 'host:port' on ':', so no IPv6 literal fits
        host = "0.0.0.0" if host == "::" else "127.0.0.1"
    return f"{host}{address}"


class Cluster:
    """A connected client, and the cluster it started if any (closed with it)."""

    def __init__(self, client: Client, cluster: Any | None, dashboard: bool = True) -> None:
        self.client = client
        self._cluster = cluster
        self._dashboard = dashboard
        self._threads, self._threads_at = 0, float("-inf")

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
        now = time.monotonic()
        if max_age and now - self._threads_at <= max_age:
            return self._threads
        try:
            threads = sum(self.client.nthreads().values())
        except Exception:  # lost the scheduler: nothing can be fed until it is back
            threads = 0
        self._threads, self._threads_at = threads, now
        return threads

    def close(self) -> None:
        self.client.close()
        if self._cluster is not None:
            self._cluster.close()

    def __enter__(self) -> Cluster:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def start_cluster(spec: ClusterSpec) -> Cluster:
    """Start the cluster a spec describes (or connect to it) and return a connected Cluster."""
    if spec.kind == "address":
        try:
            return Cluster(Client(spec.address, timeout="10s"), None)
        except OSError as exc:
            raise EmbedscaleError(f"cannot reach the Dask scheduler at {spec.address}: {exc}") \
                from None
    with dask.config.set(WORKER_DASK_CONFIG):
        cluster = _local_cuda_cluster(spec) if spec.kind == "local-cuda" else _local_cluster(spec)
    return Cluster(Client(cluster), cluster, dashboard_bind(spec.dashboard_address) is not None)


def _local_cluster(spec: ClusterSpec) -> Any:
    from distributed import LocalCluster

    return LocalCluster(
        n_workers=spec.n_workers or os.cpu_count() or 1,
        threads_per_worker=spec.threads_per_worker,
        processes=True,
        memory_limit=spec.memory_limit,
        dashboard_address=dashboard_bind(spec.dashboard_address),
        silence_logs=_log_level(spec),
    )


def _log_level(spec: ClusterSpec) -> int:
    level = logging.getLevelName(spec.log_level.upper())
    if not isinstance(level, int):
        raise EmbedscaleError(f"unknown log_level {spec.log_level!r}: use debug, info, warning, "
                              "error or critical")
    return level


def _local_cuda_cluster(spec: ClusterSpec) -> Any:
    # Workers whose torch sees no GPU would run the model on one CPU thread each, far slower
    # than a plain local cluster: refuse rather than start that. (Spawned workers, so asking
    # torch here initialises no CUDA context that they would inherit.)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is None or not torch.cuda.is_available():
        build = f"torch {torch.__version__}" if torch is not None else "no torch"
        raise EmbedscaleError(
            f"the local-cuda cluster needs a GPU that torch can use, and {build} "
            f"(CUDA {getattr(getattr(torch, 'version', None), 'cuda', None) or 'none'}) sees "
            "none: install a CUDA build of torch for your driver (see the README's GPU "
            "section) or use the local cluster (cluster_specs/local.yaml)")
    try:
        from dask_cuda import LocalCUDACluster
    except ImportError:
        raise EmbedscaleError(
            "the local-cuda cluster needs dask-cuda: pip install 'embedscale[gpu]'"
        ) from None
    return LocalCUDACluster(
        CUDA_VISIBLE_DEVICES=spec.cuda_visible_devices,
        # Each worker owns one GPU and says so: partitions are planned for GPUs
        # (engine.placement) from this resource.
        resources={"GPU": 1},
        threads_per_worker=spec.threads_per_worker,
        memory_limit=spec.memory_limit,
        dashboard_address=dashboard_bind(spec.dashboard_address),
        silence_logs=_log_level(spec),
    )
