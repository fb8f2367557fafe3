"""`embedscale cluster up` and `embedscale cluster status`: a standalone Dask cluster from a spec
for users without a Dask deployment, and what any cluster holds (workers, threads, memory, GPUs,
loaded models)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import signal
import sys
import threading
import warnings
from typing import Any

from rich.console import Console
from rich.table import Table

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.errors import EmbedscaleError

DEFAULT_SCHEDULER_PORT = 8786  # Dask's own default: `dask worker tcp://host:8786` finds it


def add_cluster_commands(sub: Any) -> None:
    """The `cluster` command group."""
    cluster = sub.add_parser(
        "cluster", help="start a standalone cluster or inspect one"
    ).add_subparsers(dest="cluster_command", required=True)
    up = cluster.add_parser(
        "up", help="start a scheduler and workers from a spec and keep them running until Ctrl-C"
    )
    up.add_argument(
        "--spec", help="cluster spec YAML (default: a LocalCluster, one worker per core)"
    )
    up.add_argument("--workers", type=int, help="worker processes (overrides the spec)")
    up.add_argument(
        "--port",
        type=int,
        help=f"scheduler port (default: the spec's, else {DEFAULT_SCHEDULER_PORT})",
    )
    up.add_argument(
        "--host",
        help="interface the scheduler and workers listen on (default: "
        "the spec's host, 127.0.0.1: this machine only; 0.0.0.0 or "
        "an address lets other hosts' workers join)",
    )
    status = cluster.add_parser(
        "status", help="workers, threads, memory, GPUs and loaded models of a running cluster"
    )
    where = status.add_mutually_exclusive_group(required=True)
    where.add_argument("--scheduler", help="the scheduler's address")
    where.add_argument("--cluster", help="a spec of kind 'address' (with its tls section)")
    status.add_argument("--json", action="store_true", help="print the result as JSON")


def cluster_command(args: argparse.Namespace) -> int:
    if args.cluster_command == "up":
        return _up(args)
    return _status(args)


def _up(args: argparse.Namespace) -> int:
    spec = ClusterSpec.from_yaml(args.spec) if args.spec else ClusterSpec()
    if spec.kind == "address":
        raise EmbedscaleError(
            "cluster up starts a cluster: use a spec of kind local, "
            "local-cuda or manager (an 'address' spec names one that runs)"
        )
    port = args.port or spec.scheduler_port or DEFAULT_SCHEDULER_PORT
    spec = dataclasses.replace(
        spec,
        scheduler_port=port,
        host=args.host or spec.host,
        n_workers=args.workers or spec.n_workers,
    )
    stop = threading.Event()
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, lambda *_: stop.set())
    try:
        with warnings.catch_warnings():
            # "Port 8787 is already in use ... on port N instead": the link printed below
            # says where the dashboard went.
            warnings.filterwarnings("ignore", message=r"Port \d+ is already in use")
            cluster = start_cluster(spec)
    except (OSError, RuntimeError) as exc:  # the port is taken, no such interface
        cause: BaseException = exc  # distributed wraps the OSError in two RuntimeErrors
        while cause.__cause__ is not None:
            cause = cause.__cause__
        raise EmbedscaleError(
            f"cannot start the scheduler on {spec.host}:{port}: "
            f"{getattr(cause, 'strerror', None) or cause}"
        ) from None
    with cluster:
        # No job runner here to report a backlog: an adaptive section follows Dask's own
        # view of the tasks (serve and run, which start their own cluster, use the backlog).
        cluster.autoscale(lambda: 0)
        address = cluster.client.scheduler.address
        workers = cluster.client.scheduler_info(n_workers=-1)["workers"]
        print(f"scheduler:  {address}")
        print(f"dashboard:  {cluster.dashboard_link or 'none'}")
        print(
            f"workers:    {len(workers)} x {spec.threads_per_worker} thread(s)"
            + (f", adaptive {spec.adaptive}" if spec.adaptive else "")
        )
        print(f"run a job:  embedscale run SOURCE --table NAME --scheduler {address}")
        tls = (
            "".join(
                f" --tls-{flag} {spec.tls[key]}"
                for flag, key in (
                    ("ca-file", "ca_file"),
                    ("cert", "cert_file"),
                    ("key", "key_file"),
                )
            )
            if spec.tls
            else ""
        )
        print(
            f"add a host: dask worker {address}{tls} (embedscale installed there)"
            + (
                "; this address is this machine's only: --host 0.0.0.0 lets others in"
                if spec.host in ("127.0.0.1", "localhost")
                else ""
            )
        )
        print("Ctrl-C stops the cluster.", flush=True)
        stop.wait()
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.cluster:
        spec = ClusterSpec.from_yaml(args.cluster)
        if spec.kind != "address":
            raise EmbedscaleError("cluster status needs a spec of kind 'address'")
    else:
        spec = ClusterSpec(kind="address", address=args.scheduler)
    with start_cluster(spec) as cluster:
        rows = worker_rows(cluster.client)
        address = cluster.client.scheduler.address
    if args.json:
        print(json.dumps({"scheduler": address, "workers": rows}))
        return 0
    table = Table(
        title=f"{address}: {len(rows)} workers, {sum(r['threads'] for r in rows)} threads"
    )
    for column in ("name", "address", "threads", "memory", "memory limit", "GPUs", "models"):
        table.add_column(column)
    for r in rows:
        table.add_row(
            str(r["name"]),
            r["address"],
            str(r["threads"]),
            _gib(r["memory"]),
            _gib(r["memory_limit"]),
            str(r["gpus"]),
            ", ".join(r.get("model_precisions") or r["models"]) or "-",
        )
    # Piped output has no terminal width to fit: wide enough for the names, not cut short.
    Console(width=None if sys.stdout.isatty() else 160).print(table)
    return 0


def worker_rows(client) -> list[dict[str, Any]]:
    """One row per worker: its name, address, threads, memory used and limit (bytes), GPUs
    (its GPU resource, else the devices CUDA_VISIBLE_DEVICES gives it) and models loaded."""
    info = client.scheduler_info(n_workers=-1)["workers"]
    # A worker without embedscale (or failing the probe) is still listed, without models.
    probes = {
        address: probe
        for address, probe in client.run(_probe, on_error="return").items()
        if isinstance(probe, dict)
    }
    rows = []
    for address, w in sorted(info.items(), key=lambda kv: str(kv[1].get("name"))):
        probe = probes.get(address, {})
        gpus = int(w.get("resources", {}).get("GPU", 0)) or probe.get("visible_gpus", 0)
        rows.append(
            {
                "name": w.get("name"),
                "address": address,
                "threads": w.get("nthreads"),
                "memory": w.get("metrics", {}).get("memory"),
                "memory_limit": w.get("memory_limit"),
                "gpus": gpus,
                "models": probe.get("models", []),
                # Each with the precision it runs in (and the measured cosine and speed).
                "model_precisions": probe.get("model_precisions", []),
            }
        )
    return rows


def _probe() -> dict[str, Any]:
    """Run on each worker: the models it holds and the GPUs it was given."""
    import os

    from embedscale.engine.models.cache import loaded_model_precisions, loaded_models

    visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
    return {
        "models": loaded_models(),
        "model_precisions": loaded_model_precisions(),
        "visible_gpus": len([d for d in visible.split(",") if d.strip()]),
    }


def _gib(value: int | None) -> str:
    return f"{value / 2**30:.1f} GiB" if value else "-"
