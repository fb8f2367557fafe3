"""`embedscale migrate TABLE ...`: move a table to another model without downtime, in the data
dir's own control plane (through a running server: POST /v1/tables/{name}/migrations).

    embedscale migrate docs --model NEW [--provider P] [--switch auto|manual]   # build it
    embedscale migrate docs --compare --queries queries.txt                     # compare first
    embedscale migrate docs --switch                                            # then switch
    embedscale migrate docs --rollback                                          # or go back
    embedscale migrate docs                                                     # the state

Building runs the migration job on a local (or --scheduler) cluster with a progress bar; a
switch or rollback starts one only when documents changed meanwhile must be embedded first.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from embedscale.jobs.migrations.driver import MigrationView
    from embedscale.jobs.service import JobService

NOW = "now"  # `--switch` given alone: switch now


def add_migrate_command(sub: Any, common_args: Any, cluster_args: Any) -> None:
    """The `migrate` command, on the top-level subparsers `sub`."""
    p = sub.add_parser(
        "migrate",
        help="move a table to another model without downtime: build, compare, switch, rollback",
    )
    p.add_argument("table")
    p.add_argument("--model", help="the new model: build a new generation of the table with it")
    p.add_argument(
        "--provider",
        choices=["sentence-transformers", "onnx", "onnx-int8", "openai"],
        help="where the new model's vectors come from (default: the table's)",
    )
    p.add_argument(
        "--provider-url",
        metavar="URL",
        help="provider openai: the endpoint's base URL (default: the table's)",
    )
    p.add_argument(
        "--precision",
        default="auto",
        metavar="{auto,fp32,bf16,int8}",
        help="the number format the new model runs in, as `embedscale run --precision` "
        "(default: auto)",
    )
    p.add_argument(
        "--switch",
        nargs="?",
        const=NOW,
        choices=["auto", "manual", NOW],
        metavar="auto|manual",
        help="with --model: auto switches as soon as the new generation is built, manual "
        "(default) waits; alone: switch to the built generation now (reconciled first)",
    )
    p.add_argument(
        "--rollback",
        action="store_true",
        help="switch back to the generation the latest switch retired (kept as long as old "
        "versions are, 7 days by default)",
    )
    p.add_argument(
        "--compare",
        action="store_true",
        help="search --queries in both generations: top-k overlap, scores, latency",
    )
    p.add_argument("--queries", metavar="FILE", help="--compare: one query a line")
    p.add_argument("-k", type=int, default=10, help="--compare: results per query (default 10)")
    p.add_argument(
        "--priority",
        choices=["low", "normal", "high", "critical"],
        default="normal",
        help="the migration job's priority",
    )
    p.add_argument("--tenant", default="local", help="whose table (default: local)")
    cluster_args(p)
    common_args(p)


def migrate_command(args: argparse.Namespace) -> int:
    """Run `embedscale migrate`; the exit status."""
    from embedscale.api.settings import Settings
    from embedscale.api.startup import open_service
    from embedscale.engine.errors import EmbedscaleError

    actions = [bool(args.model), args.switch == NOW, args.rollback, args.compare]
    if sum(actions) > 1:
        raise EmbedscaleError("give one of --model, --switch (alone), --rollback or --compare")
    if args.switch in ("auto", "manual") and not args.model:
        raise EmbedscaleError("--switch auto|manual goes with --model; --switch alone switches")
    if args.compare and not args.queries:
        raise EmbedscaleError("--compare needs --queries FILE (one query a line)")
    queries = _read_queries(args.queries) if args.compare else []
    settings = Settings.from_args(args)
    with open_service(settings, local_user=True) as service:
        if args.compare:
            return _compare(service, args, queries)
        if args.model:
            view = service.migrate(
                args.tenant,
                args.table,
                args.model,
                args.provider,
                args.switch or "manual",
                args.priority,
                args.provider_url,
                args.precision,
            )
        elif args.switch == NOW:
            view = service.switch_migration(args.tenant, args.table)
        elif args.rollback:
            view = service.rollback_migration(args.tenant, args.table)
        else:  # the state: moved along first (a job a `jobs resume` finished, a retention)
            service.migrations.advance(args.tenant, args.table)
            return _show(service.migration(args.tenant, args.table), args.json)
        view = _run_jobs(service, args, view)
    return _show(view, args.json, failed=_failed(view))


def _run_jobs(service: JobService, args: argparse.Namespace, view: MigrationView) -> MigrationView:
    """Run the table's unfinished migration jobs on a cluster started for them (none: the
    migration needs no embedding now), with a progress bar."""
    from embedscale.api.cli.run import _cluster_spec, _watch
    from embedscale.api.settings import Settings
    from embedscale.engine.cluster.start import start_cluster

    if not any(
        j.kind == "migration" and j.tenant == args.tenant and j.table_name == args.table
        for j in service.unfinished_jobs()
    ):
        return view
    err = Console(stderr=True)
    with start_cluster(_cluster_spec(args, Settings.from_args(args))) as cluster:
        service.attach(cluster)
        service.start()
        try:
            return service.settle_migration(
                args.tenant, args.table, lambda jobs: _watch(service, jobs, err, quiet=args.json)
            )
        finally:
            service.stop()


def _failed(view: MigrationView) -> bool:
    latest = view.generations[-1] if view.generations else None
    return latest is not None and latest.state == "failed"


def _read_queries(path: str) -> list[str]:
    """The non-empty lines of the --queries file; an unreadable one is one line of error, read
    before the service opens."""
    from embedscale.engine.errors import EmbedscaleError

    try:
        with open(path, encoding="utf-8") as f:
            return [line.strip() for line in f if line.strip()]
    except UnicodeDecodeError:
        raise EmbedscaleError(f"--queries {path}: not UTF-8 text (one query a line)") from None
    except OSError as exc:
        raise EmbedscaleError(f"--queries {path}: cannot read it ({exc.strerror})") from None


def _compare(service: JobService, args: argparse.Namespace, queries: list[str]) -> int:
    report = service.compare_migration(args.tenant, args.table, queries, args.k).to_dict()
    if args.json:
        print(json.dumps(report))
        return 0
    print(f"table {report['table']}: {report['queries']} queries, top {report['k']}")
    print(f"chunk overlap:    {report['chunk_overlap']:.3f}")
    print(f"document overlap: {report['document_overlap']:.3f}")
    table = Table(
        "", "generation", "model", "top-1 min/med/max", "top-k min/med/max", "p50 ms", "p95 ms"
    )
    for label in ("active", "candidate"):
        side = report[label]
        table.add_row(
            label,
            str(side["generation"]),
            side["model"],
            _spread(side["top1_score"]),
            _spread(side["topk_score"]),
            f"{side['latency_ms_p50']:.1f}",
            f"{side['latency_ms_p95']:.1f}",
        )
    Console().print(table)
    return 0


def _spread(spread: dict[str, float | None]) -> str:
    values = [spread["min"], spread["median"], spread["max"]]
    return " / ".join("-" if v is None else f"{v:.3f}" for v in values)


def _show(view: MigrationView, as_json: bool, failed: bool = False) -> int:
    data = view.to_dict()
    if as_json:
        print(json.dumps(data))
    else:
        print(f"table {data['table']}: generation {data['active']} answers searches")
        table = Table("generation", "model", "provider", "state", "job", "note")
        for g in data["generations"]:
            table.add_row(
                str(g["generation"]),
                g["model"],
                g["provider"],
                g["state"],
                g["job_id"] or "-",
                g["error"] or ("switch requested" if g["switch_requested"] else ""),
            )
        Console().print(table)
    if failed:
        print(f"embedscale: error: {view.generations[-1].error}", file=sys.stderr)
        return 1
    return 0
