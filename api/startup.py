"""What the settings start, the same for every command: the data dir's job service and the
spec of the cluster jobs run on."""
from __future__ import annotations

import dataclasses

from api.settings import Settings
from engine.cluster import ClusterSpec, dashboard_bind
from jobs.service import JobService


def cluster_spec(settings: Settings, worker_log_level: str | None = None) -> ClusterSpec:
    """The cluster the settings ask for: an existing scheduler, a spec file, or a LocalCluster
    of `workers` processes. A dashboard we start listens on `host` (it has no authentication
    of its own); `worker_log_level` replaces the spec's for local workers."""
    if settings.scheduler:
        return ClusterSpec(kind="address", address=settings.scheduler)
    spec = ClusterSpec.from_yaml(settings.cluster) if settings.cluster else ClusterSpec()
    address = (spec.dashboard_address if settings.dashboard_address is None
               else settings.dashboard_address)
    return dataclasses.replace(
        spec,
        n_workers=spec.n_workers if settings.workers is None else settings.workers,
        dashboard_address=dashboard_bind(address, settings.host),
        log_level=worker_log_level or spec.log_level,
    )


def open_service(settings: Settings, local_user: bool = False,
                 parallelism: int | None = None) -> JobService:
    """The job service of the settings' data dir, without a cluster yet: a locked or damaged
    DuckDB file fails here, before a cluster is started for nothing. `local_user`: the CLI's
    own user, who may read any path and load any model (the allow-lists are for tenants)."""
    return JobService(
        settings.data_dir, None, settings.tiers_file,
        allowed_roots=None if local_user else [str(r) for r in settings.allow_roots],
        parallelism=parallelism, max_document_bytes=settings.max_document_bytes,
        allowed_models=None if local_user else list(settings.allowed_models),
        allowed_provider_urls=None if local_user else list(settings.allowed_provider_urls))
