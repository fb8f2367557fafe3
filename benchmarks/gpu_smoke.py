"""GPU smoke check: one run on a bare GPU host (under 5 minutes on one H200) that checks

- placement: the driver and a local-cuda worker run models on the GPU, a plain LocalCluster
  worker on the CPU;
- dtype: half precision on CUDA, float32 on the CPU;
- cosine of the half-precision vectors to float32 ones (GPU and CPU), every row >= 0.999;
- forward throughput at a sweep of batch sizes (256-token inputs);
- an out-of-memory split (memory-fraction cap) giving the vectors of the uncapped run;
- the CPU side per chunk (tokenize and chunk, wrap, pad, Parquet write);
- a one-GPU local-cuda job end to end (read, chunk, embed, write Parquet) with NVML sampling;
- NVML metrics per GPU;

and prints one JSON line: {"ok": ..., "checks": {...}, "figures": {...}, "errors": {...}}, the
figures holding tokens/s end to end and forward-only, GPU busy % and peak GPU memory.

It imports no lancedb (too big to carry): the job writes Parquet. `--cpu` runs the same code
on the CPU with small sizes (tests/test_gpu_smoke.py runs it so). On the host, with the folder
benchmarks/gpu_carry.py prepared carried along:

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \\
        .gpucarry/whl/*.whl && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_smoke.py \\
        --model .gpucarry/model
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import os
import random
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ["PYTHONPATH"] = os.pathsep.join(  # spawned Dask workers import engine too
    [str(ROOT), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
)
sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402

CHUNK_TOKENS = 256
SIZES = {
    # cosine rows (GPU), cosine rows on the CPU, batch sweep, OOM rows, job tokens, partitions,
    # threads of the job's worker.
    "gpu": {
        "cosine": 2048,
        "cpu_cosine": 256,
        "sweep": [64, 128, 256, 512, 1024, 2048],
        "oom": 4096,
        "job_tokens": 16_000_000,
        "partitions": 16,
        "threads": 4,
    },
    # --cpu checks that the same code runs, not how fast: as few rows as each check needs
    # (oom: over the stand-in's 4-row limit, so it splits), the job two partitions.
    "cpu": {
        "cosine": 8,
        "cpu_cosine": 4,
        "sweep": [2, 4],
        "oom": 8,
        "job_tokens": 8_000,
        "partitions": 2,
        "threads": 1,
    },
}


class Smoke:
    """Runs the checks in order; each failure is recorded, and the later checks still run."""

    def __init__(self, cpu: bool, model_dir: str | None) -> None:
        self.cpu = cpu
        self.size = SIZES["cpu" if cpu else "gpu"]
        self.checks: dict[str, bool] = {}
        self.figures: dict[str, object] = {}
        self.errors: dict[str, str] = {}
        from embedscale.engine.models.registry import DEFAULT_MODEL, ModelSpec, resolve_model

        spec = (
            ModelSpec(DEFAULT_MODEL, str(Path(model_dir).resolve()), local=True)
            if model_dir
            else resolve_model(DEFAULT_MODEL)
        )
        # On the CPU the model runs in fp32, the reference the GPU's rows are held to: precision
        # auto would measure bf16 first (engine.models.cpu_precision), and may keep it.
        self.spec = dataclasses.replace(spec, precision="fp32") if cpu else spec
        self.device = "cpu" if cpu else "cuda"

    def step(self, name: str, fn) -> None:
        started = time.perf_counter()
        try:
            fn()
        except Exception as exc:
            self.checks.setdefault(name, False)
            self.errors[name] = f"{type(exc).__name__}: {exc}"[:500]
            traceback.print_exc(file=sys.stderr)
        self.figures.setdefault("step_seconds", {})[name] = round(time.perf_counter() - started, 2)

    # --- the checks ---------------------------------------------------------------------

    def environment(self) -> None:
        import torch

        self.figures["torch"] = torch.__version__
        self.figures["cuda"] = torch.version.cuda
        self.figures["cuda_available"] = torch.cuda.is_available()
        if torch.cuda.is_available():
            self.figures["gpu_name"] = torch.cuda.get_device_name(0)
        self.checks["cuda_available"] = self.cpu or torch.cuda.is_available()
        from importlib.metadata import PackageNotFoundError, version

        versions = {}
        for name in (
            "dask",
            "distributed",
            "dask-cuda",
            "cuda-core",
            "cuda-bindings",
            "nvidia-ml-py",
            "sentence-transformers",
            "transformers",
        ):
            try:
                versions[name] = version(name)
            except PackageNotFoundError:
                versions[name] = None
        self.figures["versions"] = versions

    def load(self) -> None:
        from embedscale.engine.models.devices import default_device
        from embedscale.engine.models.sentence_transformer import SentenceTransformerModel

        driver_device = default_device()
        self.figures["driver_device"] = driver_device
        self.fast = SentenceTransformerModel(self.spec, self.device)  # the dtype it chooses
        self.ref = SentenceTransformerModel(self.spec, self.device, dtype="float32")
        self.on_cpu = self.ref if self.cpu else SentenceTransformerModel(self.spec, "cpu")
        self.figures.update(
            dtype=self.fast.dtype,
            cpu_dtype=self.on_cpu.dtype,
            token_budget=self.fast.token_budget,
            model_bytes=self.fast.memory_bytes,
        )
        self.checks["driver_device"] = driver_device.startswith(self.device)
        self.checks["dtype"] = self.on_cpu.dtype == "float32" and (
            self.fast.dtype == "float32" if self.cpu else self.fast.dtype in ("float16", "bfloat16")
        )
        self.inputs = self._inputs(
            max(self.size["cosine"], self.size["oom"], max(self.size["sweep"]))
        )

    def _inputs(self, n: int) -> list[np.ndarray]:
        from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts

        settings = ChunkSettings.for_model(self.fast.info, CHUNK_TOKENS, 0)
        docs = make_docs(n * CHUNK_TOKENS, words_per_doc=4 * CHUNK_TOKENS, seed=1)
        chunks = chunk_texts(docs, self.fast.tokenizer, settings)
        inputs = [self.fast.wrap(ids) for ids in chunks.content_ids]
        while len(inputs) < n:
            inputs += inputs
        return inputs[:n]

    def cosine(self) -> None:
        from embedscale.engine.models.batching import embed_inputs

        rows = self.inputs[: self.size["cosine"]]
        fast, ref = embed_inputs(self.fast, rows), embed_inputs(self.ref, rows)
        few = self.size["cpu_cosine"]
        on_cpu = embed_inputs(self.on_cpu, rows[:few])
        self.figures["cosine_min_vs_fp32"] = round(float(_cosines(fast, ref).min()), 6)
        self.figures["cosine_min_vs_cpu"] = round(float(_cosines(fast[:few], on_cpu).min()), 6)
        self.checks["cosine"] = (
            self.figures["cosine_min_vs_fp32"] >= 0.999
            and self.figures["cosine_min_vs_cpu"] >= 0.999
        )

    def sweep(self) -> None:
        torch = _torch()
        results = {}
        if not self.cpu:
            torch.cuda.reset_peak_memory_stats()
        for rows in self.size["sweep"]:
            features = self.fast.prepare(self.inputs[:rows])
            for _ in range(2):
                self.fast.forward(features)
            _sync(self.device)
            reps, started = 0, time.perf_counter()
            while reps < 3 or time.perf_counter() - started < (0.05 if self.cpu else 1.0):
                self.fast.forward(features)
                reps += 1
            _sync(self.device)
            results[rows] = round(rows * CHUNK_TOKENS * reps / (time.perf_counter() - started))
        self.figures["forward_tokens_per_s"] = results
        self.figures["forward_tokens_per_s_best"] = max(results.values())
        if not self.cpu:
            self.figures["forward_peak_gpu_bytes"] = torch.cuda.max_memory_allocated()
        self.checks["sweep"] = all(v > 0 for v in results.values())

    def oom_split(self) -> None:
        from embedscale.engine.models.batching import embed_inputs

        rows = self.inputs[: self.size["oom"]]
        expected = embed_inputs(self.fast, rows)
        splits = _CountSplits()
        batching_log = logging.getLogger("embedscale.engine.models.batching")
        batching_log.addHandler(splits)
        level = batching_log.level
        batching_log.setLevel(logging.WARNING)  # the split's warning is what is counted
        try:
            if self.cpu:  # no memory cap on a CPU: a stand-in fails batches over 4 rows
                got = embed_inputs(
                    _FailAbove(self.fast, 4), rows, token_budget=len(rows) * CHUNK_TOKENS
                )
            else:
                got = self._capped(rows)
        finally:
            batching_log.removeHandler(splits)
            batching_log.setLevel(level)
        self.figures["oom_splits"] = splits.count
        self.figures["oom_cosine_min"] = round(float(_cosines(got, expected).min()), 6)
        self.figures["oom_max_abs_diff"] = float(np.abs(got - expected).max())
        self.checks["oom_split"] = splits.count > 0 and self.figures["oom_cosine_min"] >= 0.9999

    def _capped(self, rows: list[np.ndarray]) -> np.ndarray:
        from embedscale.engine.models.batching import embed_inputs

        torch = _torch()
        torch.cuda.empty_cache()
        total = torch.cuda.get_device_properties(0).total_memory
        cap = (torch.cuda.memory_allocated() + (512 << 20)) / total  # weights + 512 MiB
        self.figures["oom_cap_bytes"] = int(cap * total)
        torch.cuda.set_per_process_memory_fraction(cap, 0)
        try:  # one batch of every row: far over the cap, so it splits until a batch fits
            return embed_inputs(self.fast, rows, token_budget=len(rows) * CHUNK_TOKENS)
        finally:
            torch.cuda.set_per_process_memory_fraction(1.0, 0)
            torch.cuda.empty_cache()

    def cpu_side(self) -> None:
        import pyarrow.parquet as pq

        from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
        from embedscale.engine.models.info import pad_batch

        docs = make_docs(
            400 * CHUNK_TOKENS if not self.cpu else 20 * CHUNK_TOKENS,
            words_per_doc=4 * CHUNK_TOKENS,
            seed=2,
        )
        settings = ChunkSettings.for_model(self.fast.info, CHUNK_TOKENS, 0)
        t0 = time.perf_counter()
        chunks = chunk_texts(docs, self.fast.tokenizer, settings)
        t1 = time.perf_counter()
        inputs = [self.fast.wrap(ids) for ids in chunks.content_ids]
        t2 = time.perf_counter()
        for i in range(0, len(inputs), 256):
            pad_batch(inputs[i : i + 256], 0)
        t3 = time.perf_counter()
        vectors = np.zeros((len(inputs), self.fast.info.dimension), np.float32)
        with tempfile.TemporaryDirectory() as tmp:
            pq.write_table(_rows(chunks, inputs, vectors), f"{tmp}/rows.parquet")
        t4 = time.perf_counter()
        n = max(1, len(inputs))
        self.figures["cpu_us_per_chunk"] = {
            "tokenize_and_chunk": round((t1 - t0) / n * 1e6, 1),
            "wrap": round((t2 - t1) / n * 1e6, 1),
            "pad": round((t3 - t2) / n * 1e6, 1),
            "parquet_write": round((t4 - t3) / n * 1e6, 1),
        }
        self.checks["cpu_side"] = len(inputs) > 0

    def placement(self) -> None:
        from embedscale.engine.cluster.start import ClusterSpec, start_cluster
        from embedscale.engine.models.devices import default_device

        if self.cpu:  # the job's own cluster is a plain one: checked there
            return
        spec = ClusterSpec(kind="local", n_workers=1, dashboard_address=None)
        with start_cluster(spec) as cluster:
            devices = set(cluster.client.run(default_device).values())
        self.figures["plain_worker_devices"] = sorted(devices)
        self.checks["plain_worker_on_cpu"] = devices == {"cpu"}

    def job(self) -> None:
        from embedscale.engine.cluster.gpu_stats import GpuSampler
        from embedscale.engine.cluster.start import ClusterSpec, start_cluster
        from embedscale.engine.models.cache import describe_model
        from embedscale.engine.models.devices import default_device

        spec = (
            ClusterSpec(
                kind="local",
                n_workers=1,
                threads_per_worker=self.size["threads"],
                dashboard_address=None,
            )
            if self.cpu
            else ClusterSpec(
                kind="local-cuda",
                cuda_visible_devices="0",
                threads_per_worker=self.size["threads"],
                dashboard_address=None,
            )
        )
        with tempfile.TemporaryDirectory() as tmp, start_cluster(spec) as cluster:
            client = cluster.client
            paths = write_partitions(Path(tmp), self.size["job_tokens"], self.size["partitions"])
            worker_devices = set(client.run(default_device).values())
            self.figures["job_worker_devices"] = sorted(worker_devices)
            client.gather([client.submit(describe_model, self.spec, pure=False)])  # warm
            with GpuSampler(0.1) as sampler:
                started = time.perf_counter()
                futures = [
                    client.submit(embed_file, p, self.spec, f"{p}.parquet", pure=False)
                    for p in paths
                ]
                results = client.gather(futures)
                seconds = time.perf_counter() - started
            import pyarrow.parquet as pq

            written = sum(pq.read_metadata(f"{p}.parquet").num_rows for p in paths)
            peaks = client.run(_worker_peak_memory)
        tokens = sum(r["tokens"] for r in results)
        chunks = sum(r["chunks"] for r in results)
        busy = sampler.busy_percent()
        self.figures.update(
            job_tokens=tokens,
            job_chunks=chunks,
            job_seconds=round(seconds, 2),
            end_to_end_tokens_per_s=round(tokens / seconds),
            job_devices=sorted({r["device"] for r in results}),
            job_dtypes=sorted({r["dtype"] for r in results}),
            job_embed_share=round(
                sum(r["embed_seconds"] for r in results)
                / max(1e-9, sum(r["seconds"] for r in results)),
                3,
            ),
            gpu_busy_percent=busy.get(0),
            gpu_busy_samples=len(sampler.samples),
            gpu_peak_memory_bytes=sampler.peak_memory().get(0),
            worker_peak_allocated_bytes=max(peaks.values()) if peaks else None,
        )
        self.checks["job"] = chunks > 0 and written == chunks
        self.checks["job_on_device"] = worker_devices == {self.device} and {
            r["device"] for r in results
        } == {self.device}

    def nvml(self) -> None:
        from embedscale.engine.cluster.gpu_stats import read_gpus

        readings = read_gpus()
        self.figures["nvml"] = [
            {
                "gpu": g.index,
                "up": g.up,
                "busy": g.busy_percent,
                "used": g.memory_used,
                "total": g.memory_total,
            }
            for g in readings
        ]
        self.checks["nvml"] = self.cpu or any(g.up for g in readings)

    def run(self) -> dict:
        for name in (
            "environment",
            "load",
            "cosine",
            "sweep",
            "oom_split",
            "cpu_side",
            "placement",
            "job",
            "nvml",
        ):
            if name != "environment" and name != "load" and not hasattr(self, "fast"):
                self.errors.setdefault(name, "skipped: the model did not load")
                self.checks[name] = False
                continue
            self.step(name, getattr(self, name))
        ok = bool(self.checks) and all(self.checks.values()) and not self.errors
        return {
            "ok": ok,
            "mode": "cpu" if self.cpu else "gpu",
            "checks": self.checks,
            "figures": self.figures,
            "errors": self.errors,
        }


# --- what runs on the job's worker ----------------------------------------------------------


def embed_file(path: str, spec, out: str) -> dict:
    """One partition: read a file of documents (one per line), chunk, embed with the worker's
    model (on the device its placement rule gives), write the rows to Parquet."""
    import pyarrow.parquet as pq

    from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
    from embedscale.engine.models.batching import embed_inputs
    from embedscale.engine.models.cache import get_model

    started = time.perf_counter()
    model = get_model(spec)
    docs = Path(path).read_text().splitlines()
    chunks = chunk_texts(
        docs, model.tokenizer, ChunkSettings.for_model(model.info, CHUNK_TOKENS, 0)
    )
    inputs = [model.wrap(ids) for ids in chunks.content_ids]
    embed_started = time.perf_counter()
    vectors = embed_inputs(model, inputs)
    embed_seconds = time.perf_counter() - embed_started
    pq.write_table(_rows(chunks, inputs, vectors), out)
    return {
        "tokens": int(sum(map(len, inputs))),
        "chunks": len(inputs),
        "device": model.device,
        "dtype": model.info.dtype,
        "embed_seconds": embed_seconds,
        "seconds": time.perf_counter() - started,
    }


def _worker_peak_memory() -> int | None:
    import torch

    return torch.cuda.max_memory_allocated() if torch.cuda.is_initialized() else None


def _rows(chunks, inputs: list[np.ndarray], vectors: np.ndarray):
    import pyarrow as pa

    n, dim = vectors.shape
    return pa.table(
        {
            "doc_index": chunks.doc_index,
            "chunk_index": chunks.chunk_index,
            "token_count": np.fromiter(map(len, inputs), np.int32, n),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        }
    )


# --- corpus and helpers ----------------------------------------------------------------------


def _vocabulary() -> list[str]:
    from embedscale.engine.models.registry import resolve_model

    words = []
    for folder in (os.environ.get("SMOKE_MODEL_DIR"), resolve_model("all-MiniLM-L6-v2").location):
        if folder and (Path(folder) / "vocab.txt").exists():
            words = [
                w
                for w in (Path(folder) / "vocab.txt").read_text().split()
                if w.isalpha() and w.isascii() and len(w) > 1
            ]
            break
    return words or ["embedding", "partition", "worker", "cluster", "vector", "token"]


def make_docs(n_words: int, words_per_doc: int, seed: int) -> list[str]:
    """Documents of words from the model's vocabulary: about one token per word, offline."""
    rng = random.Random(seed)
    words = rng.choices(_vocabulary(), k=n_words)
    return [" ".join(words[i : i + words_per_doc]) for i in range(0, n_words, words_per_doc)]


def write_partitions(folder: Path, tokens: int, partitions: int) -> list[str]:
    per = max(1, tokens // partitions)
    paths = []
    for i in range(partitions):
        path = folder / f"part-{i:03d}.txt"
        path.write_text("\n".join(make_docs(per, words_per_doc=4 * CHUNK_TOKENS, seed=10 + i)))
        paths.append(str(path))
    return paths


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return (a * b).sum(axis=1)


def _torch():
    import torch

    return torch


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        _torch().cuda.synchronize()


class _CountSplits(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "out of memory" in record.getMessage():
            self.count += 1


class _FailAbove:
    """--cpu's stand-in for a memory cap: the model, failing batches over `limit` rows with
    torch's OutOfMemoryError before computing them."""

    def __init__(self, model, limit: int) -> None:
        self._model, self.limit = model, limit
        self.info, self.device, self.token_budget = model.info, model.device, None

    def prepare(self, batch):
        return {"rows": len(batch), "features": self._model.prepare(batch)}

    def forward(self, prepared):
        self._check(prepared["rows"])
        return self._model.forward(prepared["features"])

    def embed_token_ids(self, batch):
        self._check(len(batch))
        return self._model.embed_token_ids(batch)

    def _check(self, rows: int) -> None:
        if rows > self.limit:
            raise _torch().OutOfMemoryError(f"stand-in cap: {rows} rows over {self.limit}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="GPU smoke check (one JSON line)")
    parser.add_argument("--cpu", action="store_true", help="the same path on the CPU, small")
    parser.add_argument(
        "--model", help="a sentence-transformers folder (default: the packaged all-MiniLM-L6-v2)"
    )
    args = parser.parse_args(argv)
    if args.model:
        os.environ["SMOKE_MODEL_DIR"] = str(Path(args.model).resolve())
    logging.basicConfig(level=logging.ERROR, stream=sys.stderr)
    started = time.perf_counter()
    report = Smoke(args.cpu, args.model).run()
    report["figures"]["total_seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, default=str), flush=True)
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
