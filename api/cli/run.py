"""`embedscale run` and `embedscale jobs resume`: jobs through the control plane, on a local or
existing Dask cluster, with a progress bar and a summary."""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from embedscale.api.cli.request_flags import request_from_args
from embedscale.api.client.progress import eta_text
from embedscale.api.settings import Settings
from embedscale.api.startup import cluster_spec, open_service
from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.models.info import describe_form
from embedscale.jobs.service import JobService
from embedscale.jobs.spec import JobSpec
from embedscale.jobs.states import TERMINAL, JobStatus
from embedscale.jobs.store.records import JobRecord


def _cluster_spec(args: argparse.Namespace, settings: Settings) -> ClusterSpec:
    # Worker log lines would tear through the progress bar; the summary reports failures.
    quiet = None if settings.cluster else "critical"  # a spec file's own level stands
    return cluster_spec(settings, "warning" if args.verbose else quiet)


def run_command(args: argparse.Namespace) -> int:
    spec = JobSpec(**request_from_args(args))
    settings = Settings.from_args(args)
    cluster_config = _cluster_spec(args, settings)
    with open_service(settings, local_user=True, parallelism=cluster_config.n_workers) as service:
        # Submitted before the cluster starts: a bad source or quota fails in milliseconds.
        job = service.submit(args.tenant, spec)
        try:
            cluster = start_cluster(cluster_config)
        except BaseException:
            service.cancel(job.id)
            raise
        with cluster:
            link = cluster.dashboard_link
            service.attach(cluster)
            err = Console(stderr=True)
            if not args.json:
                err.print(f"Dask dashboard: {cluster.dashboard_link}")
            service.start()
            try:
                final = _watch(service, [job], err, quiet=args.json)[0]
            finally:
                service.stop()
        return _report(service, final, args.json, link)


def resume_command(args: argparse.Namespace) -> int:
    """Finish every unfinished job of the data dir (what a crashed process left)."""
    settings = Settings.from_args(args)
    cluster_config = _cluster_spec(args, settings)
    with open_service(settings, local_user=True, parallelism=cluster_config.n_workers) as service:
        unfinished = service.unfinished_jobs()
        if not unfinished:
            print("no unfinished jobs")
            return 0
        with start_cluster(cluster_config) as cluster:
            link = cluster.dashboard_link
            service.attach(cluster)
            service.start()
            try:
                finals = _watch(service, unfinished, Console(stderr=True), quiet=args.json)
            finally:
                service.stop()
        return max(_report(service, job, args.json, link) for job in finals)


def _watch(
    service: JobService, jobs: list[JobRecord], console: Console, quiet: bool
) -> list[JobRecord]:
    """Show a progress bar per job until every one of them ends; returns their final records."""
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TextColumn(
            "partitions · {task.fields[documents]} docs · {task.fields[chunks]} chunks · "
            "{task.fields[rate]:.1f} chunks/s · ETA {task.fields[eta]}"
        ),
        TimeElapsedColumn(),
        console=console,
        disable=quiet,
    ) as bar:
        tasks = {
            j.id: bar.add_task(
                j.table_name,
                total=j.partitions_total,
                completed=j.partitions_done,
                documents=j.documents_done,
                chunks=j.chunks_done,
                rate=0.0,
                eta=eta_text(None),
            )
            for j in jobs
        }

        def show(event: dict[str, Any]) -> None:
            job = event["job"]
            if job["id"] in tasks:
                bar.update(
                    tasks[job["id"]],
                    completed=job["partitions_done"],
                    documents=job["documents_done"],
                    chunks=job["chunks_done"],
                    rate=job["chunks_per_s"],
                    eta=eta_text(job["eta_seconds"]),
                )

        unsubscribe = service.bus.subscribe(None, show)
        try:
            return [service.wait(j.id) for j in jobs]
        finally:
            unsubscribe()


def job_summary(service: JobService, job: JobRecord) -> dict[str, Any]:
    """What a run reports: the job's figures, skipped documents with reasons, where it went."""
    data = job.to_dict()
    data.update(
        documents=job.documents_done,
        unchanged=job.documents_unchanged,
        chunks=job.chunks_done,
        tokens=job.tokens_done,
        skipped=[dataclasses.asdict(s) for s in service.skipped(job)],
        table_uri=service.table_uri(job.tenant, job.table_name),
    )
    return data


def _report(
    service: JobService, job: JobRecord, as_json: bool, dashboard_link: str | None = None
) -> int:
    summary = job_summary(service, job)
    # The CLI's user runs the cluster: its dashboard is theirs (job records never carry it).
    summary["dashboard_link"] = dashboard_link
    if as_json:
        print(json.dumps(summary))
    else:
        _print_summary(summary)
    if job.status != JobStatus.SUCCEEDED:
        assert job.status in TERMINAL
        print(
            f"embedscale: error: job {job.id} {job.status}"
            + (f" ({job.error_reason}): {job.error}" if job.error else ""),
            file=sys.stderr,
        )
        return 1
    return 0


def _print_summary(s: dict[str, Any]) -> None:
    print(f"job:            {s['id']} ({s['status']})")
    print(
        f"documents read: {s['documents']}"
        + (f" (unchanged, not re-embedded: {s['unchanged']})" if s["unchanged"] else "")
    )
    if s["documents_changed"] or s["documents_deleted"]:
        print(
            f"replaced:       {s['documents_changed']} changed, "
            f"{s['documents_deleted']} deleted (gone from the source)"
        )
    print(f"skipped:        {s['skipped_count']}")
    reasons = Counter(x["reason"] for x in s["skipped"])
    for reason, n in reasons.most_common():
        examples = [x["source"] for x in s["skipped"] if x["reason"] == reason][:3]
        print(f"  {n} x {reason}: {', '.join(examples)}{' ...' if n > 3 else ''}")
    print(f"chunks:         {s['chunks']}")
    print(f"tokens:         {s['tokens']}")
    print(f"seconds:        {s['seconds'] or 0:.1f}")
    print(f"chunks/s:       {s['chunks_per_s']:.1f}")
    print(f"tokens/s:       {s['tokens_per_s']:.1f}")
    chosen = (s.get("details") or {}).get("model_precision")
    if chosen:  # what the job asked for, and the form its model ran in on the workers
        forms = ", ".join(describe_form(f) for f in chosen["forms"])
        print(f"precision:      {chosen['requested']} -> {forms}")
    print(f"table:          {s['table']} ({s['table_uri']})")
