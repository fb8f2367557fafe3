"""`embedscale jobs list|show|cancel` and `embedscale tenants ...`: the control plane's records,
read and changed in the data dir's DuckDB file (when no other process owns it)."""

from __future__ import annotations

import argparse
import dataclasses
import json
from typing import Any

from rich.console import Console
from rich.table import Table

from embedscale.api.settings import Settings
from embedscale.api.startup import open_service
from embedscale.jobs.service import JobService
from embedscale.jobs.store.records import TenantRecord


def admin_command(args: argparse.Namespace) -> int:
    """`embedscale jobs list|show|cancel` and `embedscale tenants ...`; the exit status."""
    with open_service(Settings.from_args(args), local_user=True) as service:
        if args.command == "jobs":
            return _jobs(service, args)
        return _tenants(service, args)


def _jobs(service: JobService, args: argparse.Namespace) -> int:
    if args.jobs_command == "list":
        jobs, _ = service.list(
            tenant=args.tenant,
            status=args.status,
            limit=args.limit,
            schedule=args.schedule,
            kind=args.kind,
        )
        if args.json:
            _print_json([j.to_dict() for j in jobs])
            return 0
        table = Table(
            "id", "kind", "tenant", "table", "status", "priority", "partitions", "chunks", "created"
        )
        for j in jobs:
            table.add_row(
                j.id,
                j.kind,
                j.tenant,
                j.table_name,
                str(j.status),
                j.priority,
                f"{j.partitions_done}/{j.partitions_total}",
                str(j.chunks_done),
                j.created_at.strftime("%Y-%m-%d %H:%M:%S"),
            )
        Console().print(table)
        return 0
    if args.jobs_command == "show":
        job = service.get(args.job_id)
        data = job.to_dict()
        data["skipped"] = [dataclasses.asdict(s) for s in service.skipped(job)]
        if args.json:
            _print_json(data)
        else:
            for key, value in data.items():
                shown = json.dumps(value) if isinstance(value, (dict, list)) else value
                print(f"{key + ':':20} {shown}")
        return 0
    job = service.cancel(args.job_id)
    _print_json(job.to_dict()) if args.json else print(f"job {job.id} {job.status}")
    return 0


def _tenants(service: JobService, args: argparse.Namespace) -> int:
    command = args.tenants_command
    if command == "create":
        tenant, key = service.create_tenant(args.name, args.tier)
        if args.json:
            _print_json({**_tenant(tenant), "api_key": key})
        else:
            print(f"tenant {tenant.name} ({tenant.tier}) created")
            print(f"api key (shown once, store it now): {key}")
        return 0
    if command == "rotate-key":
        key = service.rotate_key(args.name)
        _print_json({"name": args.name, "api_key": key}) if args.json else print(
            f"new api key for {args.name} (old keys revoked; shown once): {key}"
        )
        return 0
    if command == "set-tier":
        tenant = service.set_tier(args.name, args.tier)
        _print_json(_tenant(tenant)) if args.json else print(f"tenant {tenant.name}: {tenant.tier}")
        return 0
    rows = [{**_tenant(t), **_usage(service, t.name)} for t in service.list_tenants()]
    if args.json:
        _print_json(rows)
        return 0
    table = Table("name", "tier", "chunks today", "remaining", "active jobs")
    for r in rows:
        table.add_row(
            r["name"],
            r["tier"],
            str(r["used_chunks"]),
            "unlimited" if r["remaining_chunks"] is None else str(r["remaining_chunks"]),
            str(r["active_jobs"]),
        )
    Console().print(table)
    return 0


def _tenant(t: TenantRecord) -> dict[str, Any]:
    return {
        "name": t.name,
        "tier": t.tier,
        "daily_chunks": t.daily_chunks,
        "max_concurrent_jobs": t.max_concurrent_jobs,
        "created_at": t.created_at.isoformat(),
    }


def _usage(service: JobService, name: str) -> dict[str, Any]:
    usage = dataclasses.asdict(service.usage(name))
    usage.pop("tenant")
    usage.pop("tier")
    usage.pop("daily_chunks")
    return usage


def _print_json(value: Any) -> None:
    print(json.dumps(value, default=str))
