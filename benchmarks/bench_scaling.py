"""Scaling out: the same job on 1 worker and on 2 (1 thread each), and with its tables on a real
S3 server (SeaweedFS, started here) against the local disk; plus the per-partition overheads a
scaling model needs (a commit, local and on S3; a scheduler round trip per task).

    .venv/bin/python benchmarks/bench_scaling.py --chunks 2000

Runs go local-1, local-2, s3-2, local-2 again: these machines drift by 10-20% over minutes, so
the S3 run is compared with the mean of the two local runs around it. Each run gets a fresh
cluster, warmed (model loaded on every worker) before the clock starts.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.corpus import write_corpus
from tests.object_store import SeaweedS3  # the same real S3 server the tests start

BYTES_PER_CHUNK = 760  # pydoc text per 256-token chunk, measured (bench_throughput.py)


def timed_run(
    corpus: Path,
    data_dir: Path,
    workers: int,
    table: str,
    s3: SeaweedS3 | None = None,
    s3_source: str | None = None,
) -> tuple[float, int, int]:
    """(seconds, chunks, partitions) of one job on a fresh, warmed cluster of `workers`."""
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster
    from embedscale.jobs.local_run import EmbedRequest, run_embedding

    remote = (
        {"tables_uri": f"s3://{s3.make_bucket()}/tables", "storage_options": s3.options}
        if s3
        else {}
    )
    spec = ClusterSpec(n_workers=workers, threads_per_worker=1, dashboard_address=":0")
    with start_cluster(spec) as cluster:
        cluster.client.wait_for_workers(workers)
        for n in range(workers):  # one small job per worker: each loads the model
            run_embedding(
                EmbedRequest(table=f"warm{n}", texts=[f"warm up {n}"] * 2, data_dir=str(data_dir)),
                cluster,
            )
        summary = run_embedding(
            EmbedRequest(
                table=table,
                source=s3_source or str(corpus),
                data_dir=str(data_dir),
                mode="overwrite",
                **remote,
            ),
            cluster,
        )
    return summary.seconds, summary.chunks, summary.partitions


def commit_ms(data_dir: Path, s3: SeaweedS3 | None, commits: int = 300) -> tuple[float, float]:
    """Median milliseconds of one commit of a one-row fragment (what every partition costs the
    driver), to the local disk or to S3: over the first 20 commits, and over the last 20 (the
    manifest, rewritten by each commit, then lists `commits` fragments)."""
    from datetime import UTC, datetime

    import pyarrow as pa

    from embedscale.engine.models.info import ModelInfo
    from embedscale.engine.sink.lance_sink import ChunkTable, write_fragments
    from embedscale.engine.sink.schema import chunk_schema
    from embedscale.engine.storage.locations import resolve_storage_options
    from embedscale.engine.tasks.partition_task import PartitionResult

    if s3:
        table = ChunkTable(
            f"s3://{s3.make_bucket()}/c", "commits", resolve_storage_options(s3.options)
        )
    else:
        table = ChunkTable(data_dir, "commits")
    table.prepare(ModelInfo("bench", 4, 256, 2), "append")
    schema = chunk_schema("bench", 4, "sentence-transformers")
    times = []
    for n in range(commits):
        row = {
            "id": f"c{n}",
            "doc_id": f"d{n}",
            "chunk_index": 0,
            "text": "x",
            "vector": [1.0, 0.0, 0.0, 0.0],
            "token_count": 3,
            "char_start": 0,
            "char_end": 1,
            "content_hash": "h",
            "source": "s",
            "metadata": "{}",
            "job_id": "bench",
            "model": "bench",
            "created_at": datetime.now(UTC),
        }
        rows = pa.Table.from_pylist([{k: row[k] for k in schema.names}], schema=schema)
        fragments = write_fragments(table.uri, rows, table.storage)
        started = time.perf_counter()
        table.commit({"bench": [PartitionResult(n, fragments, chunks=1)]})
        times.append(time.perf_counter() - started)
    return statistics.median(times[:20]) * 1000, statistics.median(times[-20:]) * 1000


def task_overhead_ms(tasks: int = 400) -> float:
    """Milliseconds per task of a scheduler round trip for a no-op (submit, run, gather),
    on 2 local worker processes."""
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster

    with start_cluster(ClusterSpec(n_workers=2, dashboard_address=":0")) as cluster:
        client = cluster.client
        client.gather(client.map(abs, range(-20, 0)))  # connections made
        started = time.perf_counter()
        client.gather(client.map(abs, range(-tasks, 0), pure=False))
        return (time.perf_counter() - started) / tasks * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="about this many chunks")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", args.chunks * BYTES_PER_CHUNK)
        files = len(list(corpus.glob("*.txt")))
        s3 = SeaweedS3(Path(tmp))
        try:
            bucket = s3.make_bucket()
            s3.upload(corpus, f"s3://{bucket}/docs")
            data = Path(tmp) / "data"
            runs = {
                "local tables, 1 worker": timed_run(corpus, data, 1, "one"),
                "local tables, 2 workers": timed_run(corpus, data, 2, "two"),
                "S3 tables, 2 workers": timed_run(corpus, data, 2, "s3", s3),
                "local tables, 2 workers (again)": timed_run(corpus, data, 2, "two-again"),
                "S3 tables + S3 sources, 2 workers": timed_run(
                    corpus, data, 2, "s3-src", s3, f"s3://{bucket}/docs/"
                ),
            }
            local_commit, s3_commit = commit_ms(data, None), commit_ms(data, s3)
        finally:
            s3.stop()
    per_task = task_overhead_ms()
    print(f"pydoc corpus, {files} files; {args.chunks} chunks asked")
    print(f"{'':36}{'seconds':>9}{'chunks':>8}{'parts':>7}{'chunks/s':>10}")
    for name, (seconds, chunks, parts) in runs.items():
        print(f"{name:36}{seconds:9.1f}{chunks:8d}{parts:7d}{chunks / seconds:10.1f}")
    one = runs["local tables, 1 worker"][0]
    local_two = (
        runs["local tables, 2 workers"][0] + runs["local tables, 2 workers (again)"][0]
    ) / 2
    print(f"speed-up, 2 workers / 1 worker:      {one / local_two:.2f}x")
    print(
        f"S3 tables / local tables (2 workers): {runs['S3 tables, 2 workers'][0] / local_two:.3f}"
        " (seconds; 1.000 = same, target <= 1.10)"
    )
    print(
        f"S3 tables + sources / local:          "
        f"{runs['S3 tables + S3 sources, 2 workers'][0] / local_two:.3f}"
    )
    print(
        f"one commit (driver), median of 20: local {local_commit[0]:.1f} ms, S3 "
        f"{s3_commit[0]:.1f} ms; after 300 fragments: local {local_commit[1]:.1f} ms, S3 "
        f"{s3_commit[1]:.1f} ms"
    )
    print(f"one no-op task through the scheduler: {per_task:.2f} ms (400 tasks, 2 workers)")


if __name__ == "__main__":
    main()
