"""What a cluster spec (cluster_specs/*.yaml) says: where jobs run, and how that cluster is
reached, secured, sized and given its object-store options. Read and checked here; started by
engine.cluster.start."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, fields
from typing import Annotated, Any, Literal

from pydantic import ConfigDict, Field, StrictInt, StrictStr

from embedscale.engine.config_files import ConfigFileError, read_mapping, unknown_keys, validate
from embedscale.engine.errors import EmbedscaleError

ClusterKind = Literal["local", "local-cuda", "address", "manager"]
KINDS = ("local", "local-cuda", "address", "manager")


@dataclass(frozen=True, slots=True)
class ClusterSpec:
    """Where jobs run: a LocalCluster, a LocalCUDACluster (one worker per GPU), the cluster
    behind a scheduler address, or one a Dask cluster manager starts (dask-kubernetes,
    dask-jobqueue: any class with Dask's Cluster interface).

    The types are what a spec file is checked against (from_yaml): strict, so a count written
    1e4 or 2.0, or a GPU list YAML read as a number, is refused when the file is read."""

    # A spec file's unknown keys are refused; built in Python, a spec is not checked here.
    __pydantic_config__ = ConfigDict(extra="forbid")

    kind: ClusterKind = "local"
    n_workers: Annotated[StrictInt, Field(ge=0)] | None = None  # local: None (or 0) = per core
    threads_per_worker: Annotated[StrictInt, Field(ge=1)] = 1
    memory_limit: StrictStr | Annotated[StrictInt, Field(ge=0)] = "auto"
    # A bare ':port' listens on loopback (see dashboard_bind); None or 'none': no dashboard.
    dashboard_address: StrictStr | None = ":8787"
    address: StrictStr | None = None  # kind=address
    cuda_visible_devices: StrictStr | None = None  # kind=local-cuda
    log_level: StrictStr = "error"  # local workers' log level (their output shares our terminal)
    # Local kinds: the scheduler's port (0: any free one; `cluster up` defaults to 8786) and
    # the interface it and the workers listen on.
    scheduler_port: Annotated[StrictInt, Field(ge=0, le=65535)] = 0
    host: StrictStr = "127.0.0.1"
    # kind=manager: the cluster manager's class ("dask_jobqueue.SLURMCluster") and its
    # keyword arguments, passed as they are.
    manager: StrictStr | None = None
    manager_options: dict[str, Any] | None = None
    # Object-store options for tables and sources (engine.storage.locations): endpoint, region,
    # credentials; over the AWS_* variables. Never printed.
    storage_options: dict[str, Any] | None = field(default=None, repr=False)
    # TLS between scheduler, workers and clients (engine.cluster.security): ca_file,
    # cert_file, key_file.
    tls: dict[str, Any] | None = None
    # Autoscaling on the runner's backlog (engine.cluster.autoscale): minimum, maximum,
    # partitions_per_worker, interval, wait_count.
    adaptive: dict[str, Any] | None = None

    @classmethod
    def from_yaml(cls, path: str | os.PathLike) -> ClusterSpec:
        """Read a spec file, checked against the fields' types (engine.config_files), then as a
        whole (checked): unknown keys, a float for a count, ... are an error naming the file and
        the field, so typos do not pass silently."""
        try:
            data = read_mapping(path, "cluster spec")
        except ConfigFileError as exc:
            raise EmbedscaleError(str(exc)) from None
        known = {f.name for f in fields(cls)}
        unknown = unknown_keys(data, known)
        if unknown:
            raise EmbedscaleError(
                f"cluster spec {path}: unknown keys {unknown}; known: {sorted(known)}"
            )
        try:
            return validate(cls, data).checked()
        except (EmbedscaleError, ValueError) as exc:
            raise EmbedscaleError(f"cluster spec {path}: {exc}") from None

    def checked(self) -> ClusterSpec:
        """This spec, or EmbedscaleError naming the first thing wrong with it (a TLS file
        that does not exist, an adaptive range upside down, ...)."""
        from embedscale.engine.cluster.autoscale import check_adaptive
        from embedscale.engine.cluster.security import check_tls

        if self.kind not in KINDS:
            raise EmbedscaleError(f"unknown kind {self.kind!r}: use one of {', '.join(KINDS)}")
        if self.kind == "address" and not self.address:
            raise EmbedscaleError("kind 'address' needs an address")
        if self.kind == "manager" and not self.manager:
            raise EmbedscaleError(
                "kind 'manager' needs manager: the cluster manager's class, "
                "e.g. dask_jobqueue.SLURMCluster"
            )
        if self.kind == "manager" and self.tls is not None:
            raise EmbedscaleError(
                "tls is not applied to a cluster manager's own scheduler: "
                "give its security in manager_options (e.g. security: a "
                "dask Security, as its documentation says) and leave tls out"
            )
        if self.adaptive is not None:
            if self.kind == "address":
                raise EmbedscaleError(
                    "adaptive needs a cluster embedscale starts (local, "
                    "local-cuda, manager): a cluster reached by its address "
                    "is sized by whoever runs it"
                )
            check_adaptive(self.adaptive)
        if self.tls is not None:
            check_tls(self.tls)
        if self.storage_options is not None:
            from embedscale.engine.storage.locations import resolve_storage_options

            resolve_storage_options(self.storage_options, environ={})
        return self


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
