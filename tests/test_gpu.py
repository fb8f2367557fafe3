"""GPU paths. This machine has none: the NVML metrics are checked against a stand-in module,
and the real-path tests (marked gpu) run only where CUDA and pynvml exist."""

from __future__ import annotations

import sys
import time
import types

import numpy as np
import pytest

from embedscale.api.server.metrics import GPU_ONLY_METRICS, gpu_metrics
from embedscale.engine.cluster.gpu_stats import GpuReading, GpuSampler, read_gpus


def fake_pynvml(devices: list[tuple[int, int, int]]) -> types.ModuleType:
    """Stands in for NVML: (utilisation %, used bytes, total bytes) per device."""
    nvml = types.ModuleType("pynvml")
    nvml.nvmlInit = lambda: None
    nvml.nvmlShutdown = lambda: None
    nvml.nvmlDeviceGetCount = lambda: len(devices)
    nvml.nvmlDeviceGetHandleByIndex = lambda i: i
    nvml.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=devices[h][0])
    nvml.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(
        used=devices[h][1], total=devices[h][2]
    )
    return nvml


def test_gpu_metrics_report_every_device(monkeypatch):
    monkeypatch.setitem(
        sys.modules, "pynvml", fake_pynvml([(37, 1 << 30, 80 << 30), (90, 2 << 30, 80 << 30)])
    )
    families = {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in gpu_metrics()}
    assert families["embedscale_gpu_utilization_percent"] == {"0": 37, "1": 90}
    assert families["embedscale_gpu_memory_used_bytes"] == {"0": 1 << 30, "1": 2 << 30}
    assert families["embedscale_gpu_memory_total_bytes"]["1"] == 80 << 30


def test_no_gpu_metrics_without_nvml(monkeypatch):
    broken = types.ModuleType("pynvml")

    def no_driver():
        raise OSError("NVML Shared Library Not Found")

    broken.nvmlInit = no_driver
    monkeypatch.setitem(sys.modules, "pynvml", broken)
    assert list(gpu_metrics()) == []


def test_gpu_metrics_are_the_declared_gpu_only_names(monkeypatch):
    # The dashboard and alert rules may name these although a CPU machine does not serve them
    # (tests/test_ops.py): they must be exactly what gpu_metrics serves where there is a GPU.
    monkeypatch.setitem(sys.modules, "pynvml", fake_pynvml([(50, 1, 2)]))
    assert {f.name for f in gpu_metrics()} == set(GPU_ONLY_METRICS)


def failing_on(bad_handle: int, call, error: str):
    """An NVML call that raises `error` for one GPU and answers for the others."""

    def call_or_fail(handle):
        if handle == bad_handle:
            raise RuntimeError(error)
        return call(handle)

    return call_or_fail


def test_a_gpu_nvml_cannot_read_hides_no_other(monkeypatch):
    nvml = fake_pynvml([(37, 1 << 30, 80 << 30), (0, 0, 0), (90, 2 << 30, 80 << 30)])
    nvml.nvmlDeviceGetMemoryInfo = failing_on(
        1, nvml.nvmlDeviceGetMemoryInfo, "NVML_ERROR_GPU_IS_LOST"
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    families = {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in gpu_metrics()}
    assert families["embedscale_gpu_up"] == {"0": 1, "1": 0, "2": 1}
    assert families["embedscale_gpu_utilization_percent"] == {"0": 37, "2": 90}
    assert set(families["embedscale_gpu_memory_total_bytes"]) == {"0", "2"}


def test_a_mig_slice_without_utilisation_still_reports_its_memory(monkeypatch):
    nvml = fake_pynvml([(37, 1 << 30, 80 << 30), (0, 3 << 30, 10 << 30)])
    nvml.nvmlDeviceGetUtilizationRates = failing_on(
        1, nvml.nvmlDeviceGetUtilizationRates, "NVML_ERROR_NOT_SUPPORTED"
    )
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    families = {f.name: {s.labels["gpu"]: s.value for s in f.samples} for f in gpu_metrics()}
    assert families["embedscale_gpu_up"] == {"0": 1, "1": 1}
    assert families["embedscale_gpu_utilization_percent"] == {"0": 37}
    assert families["embedscale_gpu_memory_used_bytes"] == {"0": 1 << 30, "1": 3 << 30}


def test_a_failing_count_or_shutdown_fails_nothing(monkeypatch):
    nvml = fake_pynvml([(5, 1, 2)])

    def broken():
        raise RuntimeError("NVML_ERROR_UNKNOWN")

    nvml.nvmlShutdown = broken
    monkeypatch.setitem(sys.modules, "pynvml", nvml)
    assert [g.busy_percent for g in read_gpus()] == [5.0]
    nvml.nvmlDeviceGetCount = broken
    assert read_gpus() == [] and list(gpu_metrics()) == []


def test_the_sampler_reports_busy_and_peak_memory_per_gpu():
    readings = iter(
        [
            [GpuReading(0, True, 80.0, 5, 10), GpuReading(1, False)],
            [GpuReading(0, True, 100.0, 7, 10), GpuReading(1, True, None, 2, 10)],
        ]
    )
    sampler = GpuSampler(interval=0.001, read=lambda: next(readings, []))
    with sampler:
        while len(sampler.samples) < 3:
            time.sleep(0.001)
    assert sampler.busy_percent() == {0: 90.0}
    assert sampler.peak_memory() == {0: 7, 1: 2}
    assert sampler.unreadable() == [1]


def require_cuda() -> None:
    """Skip the test unless torch sees a CUDA device and NVML can be imported."""
    pytest.importorskip("pynvml")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")


@pytest.mark.gpu
def test_half_precision_keeps_every_vector_of_fp32():
    require_cuda()
    from embedscale.engine.models.batching import embed_inputs
    from embedscale.engine.models.registry import resolve_model
    from embedscale.engine.models.sentence_transformer import SentenceTransformerModel

    spec = resolve_model("all-MiniLM-L6-v2")
    half = SentenceTransformerModel(spec, "cuda")
    full = SentenceTransformerModel(spec, "cuda", dtype="float32")
    assert half.info.dtype in ("float16", "bfloat16") and full.info.dtype == "float32"
    rng = np.random.default_rng(0)
    words = [w for w in half.tokenizer.get_vocab() if w.isalpha() and len(w) > 2]
    texts = [" ".join(rng.choice(words, size=int(rng.integers(1, 300)))) for _ in range(512)]
    inputs = [
        half.wrap(np.asarray(e.ids[:254], dtype=np.int64))
        for e in half.tokenizer.encode_batch(texts, add_special_tokens=False)
    ]
    a, b = embed_inputs(half, inputs), embed_inputs(full, inputs)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999


@pytest.mark.gpu
def test_real_gpu_embeds_like_the_cpu_and_reports_nvml():
    require_cuda()
    from embedscale.engine.models.loading import load_model
    from embedscale.engine.models.registry import resolve_model

    spec = resolve_model("all-MiniLM-L6-v2")
    gpu, cpu = load_model(spec, "cuda"), load_model(spec, "cpu")
    inputs = [
        gpu.wrap(np.asarray(gpu.tokenizer.encode(t, add_special_tokens=False).ids))
        for t in ["a GPU worker runs the model on its GPU", "short"]
    ]
    np.testing.assert_allclose(
        gpu.embed_token_ids(inputs), cpu.embed_token_ids(inputs), atol=5e-3
    )  # the GPU runs in half precision
    names = {f.name for f in gpu_metrics()}
    assert "embedscale_gpu_utilization_percent" in names


@pytest.mark.gpu
def test_local_cuda_cluster_runs_a_job(tmp_path):
    pytest.importorskip("dask_cuda")
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("no CUDA device")
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster
    from embedscale.engine.models.devices import default_device
    from embedscale.jobs.local_run import EmbedRequest, run_embedding

    with start_cluster(ClusterSpec(kind="local-cuda", dashboard_address=":0")) as cluster:
        summary = run_embedding(
            EmbedRequest(table="t", texts=["one", "two"], data_dir=str(tmp_path)), cluster
        )
        devices = cluster.client.run(default_device)
    assert summary.ok and summary.chunks == 2 and set(devices.values()) == {"cuda"}
    from embedscale.jobs.store.duckdb_store import Store

    job = Store(tmp_path / "embedscale.duckdb").get_job(summary.job_id)
    assert job.gpu_peak_bytes > 0  # the worker's GPU held the model and its batches
