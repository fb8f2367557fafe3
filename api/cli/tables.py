"""`embedscale tables list|show|optimize|history|restore|drop`: a tenant's tables as an operator
keeps them, in the data dir's DuckDB file and tables (when no server owns them; through a
running server, use /v1/admin/tables with the admin key)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:  # the parser is built at every start: the service is imported when run
    from embedscale.engine.tables.catalog import TableInfo
    from embedscale.jobs.service import JobService


def add_table_commands(sub: Any, common_args: Any) -> None:
    """The `tables` command and its subcommands, on the top-level subparsers `sub`."""
    tables = sub.add_parser(
        "tables", help="list, show, optimize, restore or drop tables; their history"
    ).add_subparsers(dest="tables_command", required=True)
    commands = (
        ("list", "the tenant's tables with their rows and model"),
        ("show", "one table: rows, fragments, versions, bytes and indexes"),
        ("optimize", "compact a table, bring its indexes up to date, remove old versions"),
        ("history", "a table's versions, newest first, with the job that made each"),
        ("restore", "bring a table back to one of its versions, as a new commit"),
        ("drop", "delete a table with all its rows and versions"),
    )
    for name, text in commands:
        p = tables.add_parser(name, help=text)
        if name != "list":
            p.add_argument("name", help="the table")
        p.add_argument("--tenant", default="local", help="whose tables (default: local)")
        if name == "optimize":
            p.add_argument(
                "--retention-days",
                type=float,
                help="keep the versions younger than this, to restore to (default: the "
                "service's, 7 days); never those a job not yet ended needs",
            )
        if name == "history":
            p.add_argument("--limit", type=int, help="versions listed at most (default 50)")
            p.add_argument("--before", type=int, metavar="V", help="only versions older than V")
        if name == "restore":
            p.add_argument("--version", type=int, required=True, metavar="V")
        common_args(p)


def tables_command(args: argparse.Namespace) -> int:
    """Run a `tables` subcommand; the exit status."""
    from embedscale.api.settings import Settings
    from embedscale.api.startup import open_service

    with open_service(Settings.from_args(args), local_user=True) as service:
        return _COMMANDS[args.tables_command](service, args)


def _list(service: JobService, args: argparse.Namespace) -> int:
    infos = service.tables(args.tenant)
    if args.json:
        _print_json([_info(i) for i in infos])
        return 0
    table = Table("name", "rows", "model", "dimension")
    for i in infos:
        table.add_row(i.name, str(i.rows), i.model or "-", str(i.dimension or "-"))
    Console().print(table)
    return 0


def _show(service: JobService, args: argparse.Namespace) -> int:
    view = service.table_details(args.tenant, args.name).to_dict()
    if args.json:
        _print_json(view)
        return 0
    print(
        f"table '{view['name']}' of tenant '{args.tenant}': {view['rows']} rows in "
        f"{view['fragments']} fragments, model {view['model']} ({view['dimension']} dimensions)"
    )
    print(
        f"versions: {view['versions']} kept, oldest {view['oldest_version']}, latest "
        f"{view['version']}; "
        f"{_bytes(view['bytes'])} on disk"
    )
    if not view["indexes"]:
        print("indexes: none (`embedscale tables optimize` builds them once the table has rows)")
    for i in view["indexes"]:
        behind = f", {i['unindexed_rows']} rows not yet indexed" if i["unindexed_rows"] else ""
        print(f"index {i['name']}: {i['kind']} on {i['column']}, {i['indexed_rows']} rows{behind}")
    return 0


def _optimize(service: JobService, args: argparse.Namespace) -> int:
    days = args.retention_days
    record = service.optimize_table(
        args.tenant, args.name, timedelta(days=days) if days is not None else None
    )
    if record is None:  # a runner in this process took it (not the CLI's case)
        print(f"table '{args.name}': maintenance started")
        return 0
    if args.json:
        _print_json(record.to_dict())
        return 0 if record.error is None else 1
    details = record.details or {}
    for step, done in details.items():
        if isinstance(done, dict):
            shown = ", ".join(f"{k} {_figure(v)}" for k, v in done.items() if v is not None)
            print(f"{step}: {shown}")
    if record.error:
        print(f"table '{args.name}': maintenance failed: {record.error}")
        return 1
    print(f"table '{args.name}': optimized (maintenance job {record.id})")
    return 0


def _history(service: JobService, args: argparse.Namespace) -> int:
    from embedscale.engine.tables.versions import HISTORY_LIMIT

    limit = args.limit if args.limit is not None else HISTORY_LIMIT
    listed = service.table_history(args.tenant, args.name, limit, args.before)
    if args.json:
        _print_json([v.to_dict() for v in listed])
        return 0
    table = Table("version", "made", "operation", "rows", "fragments", "by")
    for v in listed:
        by = ", ".join(v.jobs)
        if v.restored is not None:
            by = f"restore of version {v.restored}" + (f" (job {by})" if by else "")
        elif v.undone:
            by = f"cancel of job {v.undone}"
        table.add_row(
            str(v.version),
            v.timestamp.isoformat(timespec="seconds"),
            v.operation,
            str(v.rows),
            str(v.fragments),
            by or "-",
        )
    Console().print(table)
    return 0


def _restore(service: JobService, args: argparse.Namespace) -> int:
    done = service.restore_table(args.tenant, args.name, args.version)
    if args.json:
        _print_json(done.to_dict())
    elif done.job_id is None:
        print(f"table '{done.table}' is at version {done.version} already: nothing to restore")
    else:
        print(
            f"table '{done.table}' restored to version {done.version} as version {done.made} "
            f"(recorded as job {done.job_id})"
        )
    return 0


def _drop(service: JobService, args: argparse.Namespace) -> int:
    service.drop_table(args.tenant, args.name)
    if args.json:
        _print_json({"dropped": args.name, "tenant": args.tenant})
    else:
        print(f"table '{args.name}' of tenant '{args.tenant}' dropped")
    return 0


_COMMANDS = {
    "list": _list,
    "show": _show,
    "optimize": _optimize,
    "history": _history,
    "restore": _restore,
    "drop": _drop,
}


def _info(info: TableInfo) -> dict[str, Any]:
    return dataclasses.asdict(info)


def _figure(value: Any) -> str:
    if isinstance(value, list):
        return (
            ", ".join(str(v.get("name", v)) if isinstance(v, dict) else str(v) for v in value)
            or "none"
        )
    return str(value)


def _bytes(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB"):
        if size < 1024:
            return f"{size:.0f} B" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str))
