"""What the settings start, the same for every command: the data dir's job service and the
spec of the cluster jobs run on."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from pathlib import Path

from embedscale.api.settings import Settings
from embedscale.engine.cluster.start import ClusterSpec, dashboard_bind
from embedscale.engine.errors import EmbedscaleError
from embedscale.engine.storage.locations import (
    Location,
    StorageOptions,
    check_reachable,
    resolve_storage_options,
)
from embedscale.jobs.runner.config import RunnerConfig
from embedscale.jobs.service import JobService


def cluster_spec(settings: Settings, worker_log_level: str | None = None) -> ClusterSpec:
    """The cluster the settings ask for: an existing scheduler, a spec file, or a LocalCluster
    of `workers` processes. A dashboard we start listens on `host` (it has no authentication
    of its own); `worker_log_level` replaces the spec's for local workers."""
    if settings.scheduler:
        spec = ClusterSpec(kind="address", address=settings.scheduler)
    else:
        spec = ClusterSpec.from_yaml(settings.cluster) if settings.cluster else ClusterSpec()
    _check_tables_reachable(settings, spec)
    if spec.kind == "address":
        return spec
    address = (
        spec.dashboard_address if settings.dashboard_address is None else settings.dashboard_address
    )
    return dataclasses.replace(
        spec,
        n_workers=spec.n_workers if settings.workers is None else settings.workers,
        dashboard_address=dashboard_bind(address, settings.host),
        log_level=worker_log_level or spec.log_level,
    )


def _check_tables_reachable(settings: Settings, spec: ClusterSpec) -> None:
    """Workers of a cluster we do not start may run anywhere: a relative data dir names a
    folder of this machine only, where they would write their fragments into folders of their
    own that no commit ever sees."""
    if spec.kind == "address" and not settings.tables_uri and not settings.data_dir.is_absolute():
        raise EmbedscaleError(
            f"--data-dir {settings.data_dir} is relative to this machine, but jobs run on the "
            f"remote cluster at {spec.address}, whose every worker must reach the tables: give "
            "--tables-uri s3://bucket/prefix (or EMBEDSCALE_TABLES_URI), or an absolute "
            "--data-dir on a filesystem every worker mounts at the same path"
        )


def storage_options(settings: Settings) -> StorageOptions:
    """Object-store options: the AWS variables, overridden by the cluster spec's
    `storage_options` section."""
    spec = ClusterSpec.from_yaml(settings.cluster) if settings.cluster else None
    return resolve_storage_options(spec.storage_options if spec else None)


def tables_home(settings: Settings, check: bool = False) -> Path | Location:
    """Where tables live: the data dir, or the object store of `tables_uri`; with `check`,
    an unreachable store, a wrong key or a missing bucket fail here, in one line."""
    if not settings.tables_uri:
        return settings.data_dir
    home = Location(settings.tables_uri.rstrip("/"), storage_options(settings))
    if check:
        check_reachable(home.uri, home.options)
    return home


def open_service(
    settings: Settings, local_user: bool = False, parallelism: int | None = None
) -> JobService:
    """The job service of the settings' data dir, without a cluster yet: a locked or damaged
    DuckDB file fails here, before a cluster is started for nothing. `local_user`: the CLI's
    own user, who may read any path and load any model (the allow-lists are for tenants); the
    server's long-running service alone prunes ended jobs' inline texts (job_retention_days)."""
    home = tables_home(settings, check=True)
    return JobService(
        settings.data_dir,
        None,
        settings.tiers_file,
        tables_uri=home.uri if isinstance(home, Location) else None,
        # Object-store sources use them too, tables on a local disk or not.
        storage=home.options if isinstance(home, Location) else storage_options(settings),
        allowed_roots=None if local_user else [str(r) for r in settings.allow_roots],
        parallelism=parallelism,
        max_document_bytes=settings.max_document_bytes,
        allowed_models=None if local_user else list(settings.allowed_models),
        allowed_provider_urls=None if local_user else list(settings.allowed_provider_urls),
        max_schedules_per_tenant=settings.max_schedules_per_tenant,
        job_retention_days=None if local_user else settings.job_retention_days,
        runner_config=RunnerConfig(
            compact_after_fragments=settings.maintenance_after_fragments,
            version_retention=timedelta(days=settings.version_retention_days),
        ),
    )
