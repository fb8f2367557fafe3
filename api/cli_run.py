"""`embedscale run`: one job on a local or existing Dask cluster, with a progress bar."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from collections import Counter

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engine.cluster import ClusterSpec, start_cluster
from engine.errors import EmbedscaleError
from engine.run import EmbedRequest, RunSummary, run_embedding


def cluster_spec(args: argparse.Namespace) -> ClusterSpec:
    """The cluster the run's flags ask for: --scheduler, --cluster SPEC, or a LocalCluster."""
    if args.scheduler:
        return ClusterSpec(kind="address", address=args.scheduler)
    spec = ClusterSpec.from_yaml(args.cluster) if args.cluster else ClusterSpec()
    if args.workers is not None and args.workers < 1:
        raise EmbedscaleError(f"--workers {args.workers}: need at least 1")
    return dataclasses.replace(
        spec,
        n_workers=args.workers if args.workers is not None else spec.n_workers,
        # Worker log lines would tear through the progress bar; the summary reports failures.
        log_level="warning" if args.verbose else (spec.log_level if args.cluster else "critical"),
    )


def run_command(args: argparse.Namespace) -> int:
    request = EmbedRequest(
        table=args.table, source=args.source, model=args.model, chunk_tokens=args.chunk_tokens,
        overlap_tokens=args.overlap_tokens, mode=args.mode, data_dir=args.data_dir,
        text_field=args.text_field, id_field=args.id_field,
    )
    spec = cluster_spec(args)
    # Plan before starting a cluster: a missing or empty source fails in milliseconds.
    plan = request.plan(parallelism=spec.n_workers or 2)
    err = Console(stderr=True)
    with start_cluster(spec) as cluster:
        if not args.json:
            err.print(f"Dask dashboard: {cluster.dashboard_link}")
        with _progress_bar(err, disable=args.json) as bar:
            task = bar.add_task("embedding", total=len(plan.partitions), documents=0, chunks=0,
                                rate=0.0)

            def show(p) -> None:
                bar.update(task, completed=p.partitions_done, documents=p.documents,
                           chunks=p.chunks, rate=p.chunks_per_s)

            summary = run_embedding(request, cluster, on_progress=show, plan=plan)
    if args.json:
        print(json.dumps(summary.to_dict()))
    else:
        _print_summary(summary)
    if summary.failed:
        first = min(summary.failed)
        print(f"embedscale: error: {len(summary.failed)} partition(s) failed; partition "
              f"{first}: {summary.failed[first]}", file=sys.stderr)
        return 1
    return 0


def _progress_bar(console: Console, disable: bool) -> Progress:
    return Progress(
        TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
        TextColumn("partitions · {task.fields[documents]} docs · {task.fields[chunks]} chunks · "
                   "{task.fields[rate]:.1f} chunks/s"),
        TimeElapsedColumn(), console=console, disable=disable, transient=False,
    )


def _print_summary(s: RunSummary) -> None:
    print(f"documents read: {s.documents}" + (f" (unchanged, not re-embedded: {s.unchanged})"
                                              if s.unchanged else ""))
    print(f"skipped:        {len(s.skipped)}")
    for reason, n in Counter(x.reason for x in s.skipped).most_common():
        examples = [x.source for x in s.skipped if x.reason == reason][:3]
        print(f"  {n} x {reason}: {', '.join(examples)}{' ...' if n > 3 else ''}")
    print(f"chunks:         {s.chunks}")
    print(f"tokens:         {s.tokens}")
    print(f"seconds:        {s.seconds:.1f}")
    print(f"chunks/s:       {s.chunks_per_s:.1f}")
    print(f"table:          {s.table} ({s.table_uri})")
