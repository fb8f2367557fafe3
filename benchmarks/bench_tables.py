"""Tables that last, search: indexed search on a large table against exact search. Prints
figures; asserts nothing (these machines are noisy).

`search`: a table of `--rows` synthetic rows (benchmarks/synthetic_table.py: clustered vectors
of `--dimension` floats with topic words for BM25), written in batches of 100,000 (one
fragment each); its indexes built by engine.tables.indexes.refresh_indexes (the vector index at
the default threshold and sizing). Then `--queries` held-out queries (vectors and three topic
words, drawn like the rows but none of them): the exact top 10 by cosine (NumPy over every
vector, checked against Lance's own brute force on a few queries) against the indexed search's
top 10 -> recall@10, and latency p50/p95 of vector search for each `--settings` nprobes x
refine, of text search and of hybrid search with the defaults. A search is timed as the
service runs one (engine.tables.search: the table opened, then queried) but without embedding
the query (the vectors are synthetic; embedding one query with all-MiniLM-L6-v2 on the CPU adds
its own few milliseconds). Last, `--added` more rows are appended, searched unindexed, and
brought into the indexes by an incremental refresh.

    python benchmarks/bench_tables.py search [--rows 1000000] [--dimension 384]
        [--queries 200] [--settings 10x5,20x10,40x10,20x20] [--added 20000] [--dir DIR]
    python benchmarks/bench_tables.py small-jobs|commits ...   (benchmarks/bench_table_upkeep.py)
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import lance
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.synthetic_table import SyntheticCorpus
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.indexes import VECTOR_INDEX_MIN_ROWS, index_state, refresh_indexes
from embedscale.engine.tables.search import find, open_table
from embedscale.engine.tables.search_options import (
    DEFAULT_NPROBES,
    DEFAULT_REFINE,
    search_options,
)

BATCH = 100_000
K = 10
EXACT_CHECKS = 5  # queries also run by Lance's brute force, to check the NumPy ground truth


def build(table: ChunkTable, corpus: SyntheticCorpus, rows: int) -> np.ndarray:
    """Write `rows` rows in batches; returns their vectors, in row order."""
    schema = table.dataset().schema
    vectors = np.empty((rows, corpus.dimension), dtype=np.float32)
    for start in range(0, rows, BATCH):
        count = min(BATCH, rows - start)
        batch = corpus.rows(schema, start, count)
        flat = batch.column("vector").combine_chunks().flatten().to_numpy()
        vectors[start : start + count] = flat.reshape(count, corpus.dimension)
        lance.write_dataset(batch, table.uri, mode="append")
    return vectors


def exact_top(vectors: np.ndarray, queries: np.ndarray, k: int = K) -> list[set[int]]:
    """The row numbers of each query's `k` nearest rows by cosine (rows are unit vectors)."""
    found = []
    unit = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    for block in range(0, len(unit), 25):
        sims = unit[block : block + 25] @ vectors.T
        top = np.argpartition(-sims, k, axis=1)[:, :k]
        found += [set(map(int, row)) for row in top]
    return found


def percentiles(seconds: list[float]) -> str:
    ms = sorted(s * 1000 for s in seconds)
    p95 = ms[min(len(ms) - 1, int(round(0.95 * len(ms))) - 1)]
    return f"p50 {statistics.median(ms):7.1f} ms   p95 {p95:7.1f} ms"


def timed_searches(table, mode, texts, vectors, nprobes=None, refine=None):
    """(seconds of each search, its hits): the table opened and searched, as the service does."""
    options = search_options(K, mode, nprobes, refine)
    seconds, results = [], []
    for text, vector in zip(texts, vectors, strict=True):
        start = time.perf_counter()
        hits = find(open_table(table), options, text, vector)
        seconds.append(time.perf_counter() - start)
        results.append(hits)
    return seconds, results


def recall(results, truth) -> float:
    found = sum(len({int(h.id[1:]) for h in hits} & true) for hits, true in zip(results, truth))
    return found / (K * len(truth))


def search_benchmark(args: argparse.Namespace) -> None:
    corpus = SyntheticCorpus(args.dimension)
    with tempfile.TemporaryDirectory(dir=args.dir) as data_dir:
        table = ChunkTable(data_dir, "bench")
        table.prepare(ModelInfo("synthetic", args.dimension, 256, 2), "append")
        start = time.perf_counter()
        vectors = build(table, corpus, args.rows)
        print(
            f"table: {args.rows:,} rows x {args.dimension} dimensions, "
            f"{len(table.dataset().get_fragments())} fragments, "
            f"written in {time.perf_counter() - start:.0f} s"
        )

        start = time.perf_counter()
        report = refresh_indexes(table.uri, table.storage, vector_min_rows=args.vector_min_rows)
        print(f"indexes built in {time.perf_counter() - start:.0f} s: {', '.join(report.created)}")
        if report.vector_params is None:
            print(f"  no vector index: below --vector-min-rows ({args.vector_min_rows:,})")
        else:
            p = report.vector_params
            print(
                f"  vector index {p.index_type} ({p.metric}): {p.num_partitions} partitions, "
                f"{p.num_sub_vectors} sub-vectors of {args.dimension // p.num_sub_vectors} "
                "dimensions, 8 bits each"
            )

        queries, texts, _ = corpus.queries(args.queries)
        start = time.perf_counter()
        truth = exact_top(vectors, queries)
        print(f"exact top {K} of {args.queries} held-out queries (NumPy): ", end="")
        print(f"{time.perf_counter() - start:.1f} s")
        lance_table = open_table(table)
        for q, true in zip(queries[:EXACT_CHECKS], truth[:EXACT_CHECKS], strict=True):
            rows = (
                lance_table.search(q).distance_type("cosine").bypass_vector_index().limit(K)
            ).to_arrow()
            assert {int(i[1:]) for i in rows["id"].to_pylist()} == true, "ground truth differs"
        print(f"  checked against Lance's brute force on {EXACT_CHECKS} queries: the same")

        timed_searches(table, "hybrid", texts[:10], queries[:10])  # warm the index cache
        print(
            f"\nvector search, {args.queries} queries, top {K} (defaults: nprobes "
            f"{DEFAULT_NPROBES}, refine {DEFAULT_REFINE}):"
        )
        for setting in args.settings.split(","):
            nprobes, refine = (int(x) for x in setting.split("x"))
            seconds, results = timed_searches(table, "vector", texts, queries, nprobes, refine)
            print(
                f"  nprobes {nprobes:3} refine {refine:3}: recall@{K} "
                f"{recall(results, truth):.3f}   {percentiles(seconds)}"
            )
        seconds, _ = timed_searches(table, "text", texts, queries)
        print(f"text search (BM25):                       {percentiles(seconds)}")
        seconds, results = timed_searches(table, "hybrid", texts, queries)
        print(f"hybrid search (defaults, RRF):             {percentiles(seconds)}")
        print(f"  hybrid top {K} overlap with exact vector top {K}: {recall(results, truth):.3f}")

        if args.added:
            corpus_rows = corpus.rows(table.dataset().schema, args.rows, args.added)
            lance.write_dataset(corpus_rows, table.uri, mode="append")
            seconds, _ = timed_searches(table, "vector", texts, queries)
            unindexed = max(i.unindexed_rows for i in index_state(table.uri))
            print(f"\n{args.added:,} rows added ({unindexed:,} unindexed):")
            print(f"  vector search (defaults):                {percentiles(seconds)}")
            seconds, _ = timed_searches(table, "hybrid", texts, queries)
            print(f"  hybrid search (defaults):                {percentiles(seconds)}")
            start = time.perf_counter()
            report = refresh_indexes(table.uri, table.storage, vector_min_rows=args.vector_min_rows)
            print(
                f"  incremental refresh of {', '.join(report.refreshed)}: "
                f"{time.perf_counter() - start:.1f} s"
            )
            seconds, _ = timed_searches(table, "vector", texts, queries)
            print(f"  vector search after it:                  {percentiles(seconds)}")


def main() -> None:
    # The maintenance half of the targets lives in bench_table_upkeep.py (a real
    # runner's small jobs, and commits as fragments add up); reached from here too.
    if sys.argv[1:2] in (["small-jobs"], ["commits"]):
        from benchmarks.bench_table_upkeep import main as upkeep

        upkeep(sys.argv[1:])
        return
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="part", required=True)
    search = sub.add_parser("search", help="indexed vector, text and hybrid search")
    search.add_argument("--rows", type=int, default=1_000_000)
    search.add_argument("--dimension", type=int, default=384)
    search.add_argument("--queries", type=int, default=200)
    search.add_argument(
        "--settings",
        default="10x5,20x10,40x10,20x20",
        help="vector search settings to measure: nprobes x refine, comma-separated",
    )
    search.add_argument("--vector-min-rows", type=int, default=VECTOR_INDEX_MIN_ROWS)
    search.add_argument("--added", type=int, default=20_000, help="rows appended at the end")
    search.add_argument("--dir", help="where the table is written (default: the temp dir)")
    args = parser.parse_args()
    if args.part == "search":
        search_benchmark(args)


if __name__ == "__main__":
    main()
