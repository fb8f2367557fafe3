"""The `embedscale` command: run jobs, watch and cancel them, manage tenants, search and verify
tables."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from pydantic import ValidationError as PydanticValidationError

from embedscale.api.cli.cluster import add_cluster_commands
from embedscale.api.cli.migrate import add_migrate_command
from embedscale.api.cli.request_flags import add_request_arguments, flag_name
from embedscale.api.cli.schedules import add_schedule_commands
from embedscale.api.cli.tables import add_table_commands
from embedscale.api.settings import DEFAULT_DATA_DIR
from embedscale.engine.errors import EmbedscaleError
from embedscale.engine.tables.search_options import DEFAULT_MODE, DEFAULT_NPROBES, DEFAULT_REFINE
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.records import JOB_KINDS

DATA_DIR_HELP = f"default: $EMBEDSCALE_DATA_DIR, else {DEFAULT_DATA_DIR}"
TABLES_URI_HELP = (
    "keep tables on an object store, e.g. s3://bucket/prefix (default: "
    "$EMBEDSCALE_TABLES_URI, else in the data dir); endpoint and credentials "
    "from the AWS_* variables or the cluster spec's storage_options"
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="embedscale", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="embed a directory, file or glob of documents into a table")
    # The job's own flags, made from its one definition (jobs.spec.JobSpec).
    add_request_arguments(run)
    run.add_argument(
        "--tenant",
        default="local",
        help="run as this tenant (default: local, unlimited); its quotas apply",
    )
    _cluster_args(run)
    _common_args(run)

    search = sub.add_parser("search", help="find the chunks nearest to a query")
    search.add_argument("table")
    search.add_argument("query")
    search.add_argument("-k", type=int, default=5, help="how many chunks (default 5)")
    search.add_argument(
        "--where", help="SQL filter on the table's columns, e.g. \"source = 'a.md'\""
    )
    search.add_argument(
        "--mode",
        default=DEFAULT_MODE,
        metavar="{vector,text,hybrid}",  # checked by the engine, whose error names the field
        help="vector: nearest by meaning (default); text: BM25 over the words; hybrid: both, "
        "fused by reciprocal rank",
    )
    search.add_argument(
        "--nprobes",
        type=int,
        help=f"vector index partitions searched (default {DEFAULT_NPROBES}); more finds more, "
        "slower",
    )
    search.add_argument(
        "--refine",
        type=int,
        help="k x REFINE candidates re-ranked by exact distance where the table has a vector "
        f"index (default {DEFAULT_REFINE})",
    )
    search.add_argument("--tenant", default="local", help="whose table (default: local)")
    _common_args(search)

    verify = sub.add_parser(
        "verify",
        help="check a table against the job ledger: ids unique, "
        "committed rows present, none of cancelled jobs, vectors finite, "
        "one model; exit status 1 naming each problem",
    )
    verify.add_argument("table")
    verify.add_argument("--tenant", default="local", help="whose table (default: local)")
    _common_args(verify)

    serve = sub.add_parser("serve", help="run the job service over HTTP (FastAPI + uvicorn)")
    serve.add_argument("--host", help="default 127.0.0.1")
    serve.add_argument("--port", type=int, help="default 8000")
    serve.add_argument("--data-dir", help=DATA_DIR_HELP)
    serve.add_argument("--tables-uri", metavar="URI", help=TABLES_URI_HELP)
    serve.add_argument(
        "--allow-root",
        action="append",
        metavar="DIR",
        help="a folder whose files jobs may read (repeatable; none by default)",
    )
    serve.add_argument(
        "--max-document-bytes",
        type=int,
        metavar="N",
        help="skip (and report) documents larger than this (default 32 MiB)",
    )
    serve.add_argument(
        "--max-request-bytes",
        type=int,
        metavar="N",
        help="refuse (413) request bodies larger than this (default 16 MiB)",
    )
    serve.add_argument(
        "--max-websockets-per-tenant",
        type=int,
        metavar="N",
        help="progress sockets a tenant may hold open at once; more are refused (429) (default 20)",
    )
    serve.add_argument(
        "--max-schedules-per-tenant",
        type=int,
        metavar="N",
        help="schedules a tenant may have; another is refused (409) (default 100)",
    )
    serve.add_argument(
        "--job-retention-days",
        type=float,
        metavar="DAYS",
        help="remove the inline texts of jobs ended this long ago (default 30)",
    )
    serve.add_argument("--tiers", help="tiers YAML (default: jobs/tenants/tiers.yaml)")
    _cluster_args(serve, with_verbose=False)
    serve.add_argument(
        "--allow-model",
        action="append",
        metavar="NAME",
        help="a model tenants may use besides the default all-MiniLM-L6-v2: "
        "registered name, hub id or local folder (repeatable)",
    )
    serve.add_argument(
        "--allow-provider-url",
        action="append",
        metavar="URL",
        help="an OpenAI-compatible endpoint jobs may name with provider openai "
        "(repeatable; the workers send it EMBEDSCALE_PROVIDER_API_KEY)",
    )
    serve.add_argument(
        "--dashboard-address",
        metavar="HOST:PORT",
        help="where the Dask dashboard listens (default: --host, port 8787; 'none': no dashboard)",
    )
    serve.add_argument(
        "--expose-dashboard",
        action="store_true",
        default=None,
        help="give tenants the dashboard's link and the scheduler's address in "
        "GET /v1/cluster (the dashboard has no authentication)",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text lines (default) or one JSON object a line with job_id and "
        "tenant (default: $EMBEDSCALE_LOG_FORMAT, else text)",
    )

    jobs = sub.add_parser("jobs", help="list, show, cancel or resume jobs").add_subparsers(
        dest="jobs_command", required=True
    )
    listing = jobs.add_parser("list", help="jobs, newest first")
    listing.add_argument("--tenant", help="only this tenant's")
    listing.add_argument(
        "--status", choices=[s.value for s in JobStatus], help="only jobs in this status"
    )
    listing.add_argument("--limit", type=int, default=20)
    listing.add_argument("--schedule", metavar="ID", help="only the runs of this schedule")
    listing.add_argument(
        "--kind",
        choices=JOB_KINDS,
        help="only embed jobs, only table maintenance runs (compaction, indexes, cleanup), or "
        "only migrations (a table embedded again with another model: embedscale migrate)",
    )
    _common_args(listing)
    for name, text in (("show", "one job in full"), ("cancel", "cancel a queued or running job")):
        p = jobs.add_parser(name, help=text)
        p.add_argument("job_id")
        _common_args(p)
    resume = jobs.add_parser(
        "resume", help="finish the unfinished jobs of a data dir (after a crash)"
    )
    _cluster_args(resume)
    _common_args(resume)

    tenants = sub.add_parser("tenants", help="create and manage tenants").add_subparsers(
        dest="tenants_command", required=True
    )
    create = tenants.add_parser("create", help="a new tenant; prints its API key once")
    create.add_argument("name")
    create.add_argument("--tier", required=True, help="free, premium, enterprise, ...")
    _common_args(create)
    _common_args(tenants.add_parser("list", help="tenants with their tiers and usage today"))
    set_tier = tenants.add_parser("set-tier", help="move a tenant to another tier")
    set_tier.add_argument("name")
    set_tier.add_argument("tier")
    _common_args(set_tier)
    rotate = tenants.add_parser("rotate-key", help="revoke a tenant's keys; print a new one")
    rotate.add_argument("name")
    _common_args(rotate)
    add_schedule_commands(sub, _common_args)
    add_table_commands(sub, _common_args)
    add_migrate_command(sub, _common_args, _cluster_args)
    add_cluster_commands(sub)
    return parser


def _common_args(p: argparse.ArgumentParser) -> None:
    # No default here: Settings.from_args takes $EMBEDSCALE_DATA_DIR, then the default.
    p.add_argument("--data-dir", help=DATA_DIR_HELP)
    p.add_argument("--tables-uri", metavar="URI", help=TABLES_URI_HELP)
    p.add_argument("--json", action="store_true", help="print the result as JSON")


def _cluster_args(p: argparse.ArgumentParser, with_verbose: bool = True) -> None:
    where = p.add_mutually_exclusive_group()
    where.add_argument("--scheduler", help="address of an existing Dask scheduler")
    where.add_argument("--cluster", help="cluster spec YAML (see cluster_specs/)")
    p.add_argument("--workers", type=int, help="local worker processes (default: one per core)")
    if not with_verbose:  # serve logs to its own log
        return
    p.add_argument(
        "--verbose",
        action="store_true",
        help="show the local workers' warnings and errors (hidden by default: the "
        "summary reports what failed)",
    )


def describe_validation_error(exc: PydanticValidationError) -> str:
    """One line naming each bad field: `--chunk-tokens: Input should be greater than 0`."""
    parts = []
    for error in exc.errors():
        where = flag_name("-".join(str(p) for p in error["loc"]))
        message = error["msg"].removeprefix("Value error, ")
        parts.append(f"{where}: {message}" if error["loc"] else message)
    return "; ".join(parts)


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the `embedscale` console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    try:
        if args.command == "run":
            from embedscale.api.cli.run import run_command

            return run_command(args)
        if args.command == "search":
            from embedscale.api.cli.search import search_command

            return search_command(args)
        if args.command == "verify":
            from embedscale.api.cli.verify import verify_command

            return verify_command(args)
        if args.command == "serve":
            from embedscale.api.cli.serve import serve_command

            return serve_command(args)
        if args.command == "schedules":
            from embedscale.api.cli.schedules import schedules_command

            return schedules_command(args)
        if args.command == "tables":
            from embedscale.api.cli.tables import tables_command

            return tables_command(args)
        if args.command == "migrate":
            from embedscale.api.cli.migrate import migrate_command

            return migrate_command(args)
        if args.command == "cluster":
            from embedscale.api.cli.cluster import cluster_command

            return cluster_command(args)
        if args.command == "jobs" and args.jobs_command == "resume":
            from embedscale.api.cli.run import resume_command

            return resume_command(args)
        from embedscale.api.cli.admin import admin_command

        return admin_command(args)
    except EmbedscaleError as exc:
        print(f"embedscale: error: {exc}", file=sys.stderr)
        return 1
    except PydanticValidationError as exc:
        print(f"embedscale: error: {describe_validation_error(exc)}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("embedscale: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
