"""`embedscale schedules add|list|remove|pause|resume|run`: cron-triggered runs, kept in the data
dir's DuckDB file (when no server owns it; through a running server, use /v1/schedules). The
server (`embedscale serve`) fires them; these commands only manage them."""

from __future__ import annotations

import argparse
import json
from typing import Any

from embedscale.api.cli.request_flags import add_request_arguments, request_from_args


def add_schedule_commands(sub: Any, common_args: Any) -> None:
    """The `schedules` command and its subcommands, on the top-level subparsers `sub`."""
    schedules = sub.add_parser(
        "schedules", help="cron-triggered runs that `embedscale serve` fires"
    ).add_subparsers(dest="schedules_command", required=True)
    add = schedules.add_parser("add", help="a new schedule: a cron expression and a job")
    add.add_argument("cron", help="five fields, e.g. '0 2 * * *' (02:00 every day), or @daily")
    # The job template's flags, made from the job's one definition (jobs.spec.JobSpec); only
    # those given go into the template, the others take the spec's defaults when a run starts.
    add_request_arguments(add, template=True)
    add.add_argument(
        "--timezone",
        default="UTC",
        help="IANA time zone the cron expression is read in (default UTC)",
    )
    add.add_argument("--tenant", default="local", help="whose schedule (default: local)")
    add.add_argument("--paused", action="store_true", help="create it paused")
    common_args(add)
    listing = schedules.add_parser("list", help="schedules with their next and latest runs")
    listing.add_argument("--tenant", help="only this tenant's")
    common_args(listing)
    for name, text in (
        ("remove", "remove a schedule (a run under way goes on)"),
        ("pause", "stop firing a schedule until resumed"),
        ("resume", "fire again from the next slot after now"),
        ("run", "submit a run of the schedule now (the server runs it)"),
    ):
        p = schedules.add_parser(name, help=text)
        p.add_argument("schedule_id")
        common_args(p)


def schedules_command(args: argparse.Namespace) -> int:
    """Run a `schedules` subcommand; the exit status."""
    from embedscale.api.settings import Settings
    from embedscale.api.startup import open_service

    with open_service(Settings.from_args(args), local_user=True) as service:
        schedules = service.schedules
        command = args.schedules_command
        if command == "add":
            service.get_tenant(args.tenant)  # NotFoundError: no such tenant
            template = request_from_args(args)
            record = schedules.create(
                args.tenant, args.cron, template, args.timezone, enabled=not args.paused
            )
            _show(
                record.to_dict(),
                args.json,
                f"schedule {record.id} added; next run {_when(record.next_run_at)}",
            )
            return 0
        if command == "list":
            _list([s.to_dict() for s in schedules.list(args.tenant)], args.json)
            return 0
        if command == "run":
            job = schedules.run_now(args.schedule_id)
            _show(job.to_dict(), args.json, f"job {job.id} queued (the server runs it)")
            return 0
        action = {"remove": schedules.delete, "pause": schedules.pause, "resume": schedules.resume}[
            command
        ]
        record = action(args.schedule_id)
        done = {"remove": "removed", "pause": "paused", "resume": "resumed"}[command]
        _show(
            record.to_dict(),
            args.json,
            f"schedule {record.id} {done}"
            + (f"; next run {_when(record.next_run_at)}" if command == "resume" else ""),
        )
        return 0


def _when(moment: Any) -> str:
    return moment.isoformat() if moment is not None else "none (paused)"


def _show(data: dict[str, Any], as_json: bool, line: str) -> None:
    print(json.dumps(data, default=str) if as_json else line)


def _list(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        print(json.dumps(rows, default=str))
        return
    from rich.console import Console
    from rich.table import Table

    table = Table(
        "id",
        "tenant",
        "cron",
        "timezone",
        "table",
        "source",
        "enabled",
        "next run",
        "last outcome",
        "fired",
        "skipped",
        "refused",
    )
    for r in rows:
        template = r["template"]
        table.add_row(
            r["id"],
            r["tenant"],
            r["cron"],
            r["timezone"],
            template["table"],
            str(template.get("source") or f"{template.get('texts')} texts"),
            "yes" if r["enabled"] else "paused",
            r["next_run_at"] or "-",
            r["last_outcome"] or "-",
            str(r["runs_fired"]),
            str(r["runs_skipped"]),
            str(r["runs_refused"]),
        )
    Console(width=200).print(table)
