"""Tables that last: what maintenance keeps of a table small jobs splinter, and what a commit
costs as fragments add up. Prints figures; asserts nothing (these machines are noisy).

`small-jobs`: `--jobs` small inline jobs (two short texts each) into one table through a real
JobService on a LocalCluster (`--workers` processes, the real model), with maintenance on its
defaults (a run per 64 fragments); then one more run (as `embedscale tables optimize` does),
with `--retention-days` (0: every version no job needs is removed). Prints rows, fragments and
versions before and after, fragments per 100,000 rows, and the table's bytes on disk against a
fresh copy of the same rows written in one go, with the same indexes.

`commits`: the cost of one small commit (and of the id check upsert makes before it) on a fresh
table, on one of `--fragments` small fragments (and as many versions), and on that table once
maintained (compacted, its old versions removed): the Lance
append commit the sink makes (engine.sink.replacement.commit_replacing) and
engine.sink.lance_sink.existing_hashes, `--repeat` times each; medians and ratios to the fresh
table's, measured in the same run.

    python benchmarks/bench_table_upkeep.py small-jobs [--jobs 3000] [--workers 2]
                                                       [--retention-days 0]
    python benchmarks/bench_table_upkeep.py commits [--fragments 300] [--repeat 30]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import timedelta
from pathlib import Path

import lance

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthetic_table import SyntheticCorpus
from embedscale.engine.sink.lance_sink import ChunkTable, existing_hashes
from embedscale.engine.sink.replacement import commit_replacing
from embedscale.engine.sink.schema import chunk_schema
from embedscale.engine.storage.locations import NO_OPTIONS
from embedscale.engine.tables.indexes import refresh_indexes
from embedscale.engine.tables.maintenance import compact
from embedscale.engine.tables.versions import cleanup

DIMENSION = 384


def disk_bytes(uri: str) -> int:
    """Bytes of every file under the table's folder (data, manifests, indexes, deletions)."""
    return sum(p.stat().st_size for p in Path(uri).rglob("*") if p.is_file())


def shape(uri: str) -> dict[str, int]:
    ds = lance.dataset(uri)
    return {
        "rows": ds.count_rows(),
        "fragments": len(ds.get_fragments()),
        "versions": len(ds.versions()),
        "bytes": disk_bytes(uri),
        "index_bytes": disk_bytes(f"{uri}/_indices"),
    }


def small_jobs(args: argparse.Namespace) -> None:
    from embedscale.engine.cluster.spec import ClusterSpec
    from embedscale.engine.cluster.start import start_cluster
    from embedscale.jobs.runner.config import RunnerConfig
    from embedscale.jobs.runner.table_maintenance import Target
    from embedscale.jobs.service import JobService
    from embedscale.jobs.states import JobStatus

    with (
        tempfile.TemporaryDirectory() as tmp,
        start_cluster(
            ClusterSpec(n_workers=args.workers, threads_per_worker=1, dashboard_address=None)
        ) as cluster,
    ):
        service = JobService(
            Path(tmp) / "data",
            cluster,
            runner_config=RunnerConfig(version_retention=timedelta(days=args.retention_days)),
        )
        service.start()
        try:
            started = time.perf_counter()
            jobs = [
                service.submit(
                    "local",
                    {"table": "t", "texts": [f"note {i}: a short text", f"its second line {i}"]},
                )
                for i in range(args.jobs)
            ]
            finals = [service.wait(j.id, timeout=3600) for j in jobs]
            seconds = time.perf_counter() - started
            ok = sum(f.status == JobStatus.SUCCEEDED for f in finals)
            table = ChunkTable(service.tenant_data_dir("local"), "t")
            maintenance = service.runner.maintenance
            while maintenance.running(table.uri):  # a run the last commits started
                time.sleep(0.1)
            before = shape(table.uri)
            runs_before = maintenance.figures.runs.counts()
            assert maintenance.maintain_now(Target(table, "local", "t")) is not None
            while maintenance.running(table.uri):
                time.sleep(0.1)
            after = shape(table.uri)
            if args.keep:
                import shutil

                shutil.copytree(table.uri, args.keep)
            runs, _ = service.list(kind="maintenance", limit=1000)
        finally:
            service.close()
        # The same rows written in one go, with the same indexes built on them.
        fresh_uri = str(Path(tmp) / "fresh.lance")
        lance.write_dataset(lance.dataset(table.uri).to_table(), fresh_uri)
        refresh_indexes(fresh_uri)
        fresh = shape(fresh_uri)
    print(f"{ok}/{args.jobs} small jobs succeeded in {seconds:.1f} s ({args.workers} workers)")
    print(f"maintenance runs during the jobs: {runs_before}; {len(runs)} runs in the job list")
    if args.verbose:
        for run in runs:
            print(f"  run {run.id}: {run.status} {run.details}")
    for label, s in (("before the last run", before), ("after it", after), ("fresh copy", fresh)):
        per_100k = s["fragments"] / max(s["rows"], 1) * 100_000
        print(
            f"{label:20} rows {s['rows']:>7,}  fragments {s['fragments']:>5} "
            f"({per_100k:,.1f} per 100,000 rows)  versions {s['versions']:>5}  "
            f"bytes {s['bytes']:>12,} (indexes {s['index_bytes']:>11,})"
        )
    print(f"disk use after maintenance / fresh copy: {after['bytes'] / fresh['bytes']:.2f}x")
    print(f"disk use before the last run / fresh copy: {before['bytes'] / fresh['bytes']:.2f}x")


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def commits(args: argparse.Namespace) -> None:
    corpus = SyntheticCorpus(DIMENSION, seed=3)
    schema = chunk_schema("synthetic", DIMENSION)
    with tempfile.TemporaryDirectory() as tmp:
        tables = {}
        for label, fragments in (("fresh", 1), ("splintered", args.fragments)):
            uri = str(Path(tmp) / f"{label}.lance")
            lance.write_dataset(corpus.rows(schema, 0, 40), uri, schema=schema)
            for i in range(1, fragments):
                lance.write_dataset(corpus.rows(schema, 40 * i, 40), uri, mode="append")
            tables[label] = uri
        figures = {}
        counter = [10**7]

        def one_commit(uri: str) -> None:
            from lance.fragment import write_fragments

            rows = corpus.rows(schema, counter[0], 8)
            counter[0] += 8
            new = write_fragments(rows, uri, schema=schema)
            commit_replacing(uri, lance.dataset(uri), None, new, {})

        ids = [f"d{n}" for n in range(0, 40 * args.fragments // 4, 97)][:20]
        for label, uri in tables.items():
            fragments = len(lance.dataset(uri).get_fragments())  # before the timed commits
            figures[label] = (
                timed(lambda uri=uri: one_commit(uri), args.repeat),
                timed(lambda uri=uri: existing_hashes(uri, ids), args.repeat),
                fragments,
            )
        uri = tables["splintered"]
        done = compact(uri)  # what a maintenance run does: compaction, then cleanup
        cleanup(uri, NO_OPTIONS, timedelta(0))
        figures["maintained"] = (
            timed(lambda: one_commit(uri), args.repeat),
            timed(lambda: existing_hashes(uri, ids), args.repeat),
            done.fragments_after,
        )
    base_commit, base_check, _ = figures["fresh"]
    print(f"median of {args.repeat}: one 8-row commit, and upsert's id check of 20 documents")
    for label, (commit_s, check_s, fragments) in figures.items():
        print(
            f"{label:11} {fragments:>4} fragments  commit {commit_s * 1000:7.1f} ms "
            f"({commit_s / base_commit:.2f}x fresh)  id check {check_s * 1000:7.1f} ms "
            f"({check_s / base_check:.2f}x fresh)"
        )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="part", required=True)
    jobs = sub.add_parser("small-jobs")
    jobs.add_argument("--jobs", type=int, default=3000)
    jobs.add_argument("--workers", type=int, default=2)
    jobs.add_argument("--retention-days", type=float, default=0.0)
    jobs.add_argument("--verbose", action="store_true", help="print each run's details")
    jobs.add_argument("--keep", metavar="DIR", help="copy the maintained table there")
    commit = sub.add_parser("commits")
    commit.add_argument("--fragments", type=int, default=300)
    commit.add_argument("--repeat", type=int, default=30)
    args = parser.parse_args(argv)
    small_jobs(args) if args.part == "small-jobs" else commits(args)


if __name__ == "__main__":
    main()
