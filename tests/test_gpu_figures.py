"""GPU figures of a job: each partition's NVML busy share of its worker's GPU, sampled on the
worker while it ran, adds up into the job record (busy %, peak memory) through the same commit
path as its chunks. No GPU here: the worker's sampler reads a stand-in."""

from __future__ import annotations

import time

import pytest

from embedscale.engine.cluster.gpu_stats import (
    DeviceBusy,
    gpu_busy_since,
    gpu_peak_bytes,
    nvml_device,
)
from embedscale.engine.sources.enumeration import plan_texts
from embedscale.engine.tasks.partition_task import PartitionResult
from embedscale.jobs.runner.commits import gpu_counts
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.records import JobRecord


def _job(job_id: str) -> JobRecord:
    now = utcnow()
    return JobRecord(
        job_id,
        "acme",
        {"table": "t"},
        JobStatus.QUEUED,
        "normal",
        "t",
        [("queued", now.isoformat())],
        now,
        now,
    )


def test_partitions_gpu_figures_add_up_in_the_job_record(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.create_tenant("acme", "free")
    store.insert_job(_job("j"), plan_texts(["a", "b", "c"], docs_per_partition=1).partitions)
    store.set_status("j", JobStatus.RUNNING)
    parts = [
        PartitionResult(
            0,
            chunks=1,
            tokens=9,
            seconds=2.0,
            device="cuda",
            gpu_busy_percent=90.0,
            gpu_peak_bytes=5 << 30,
        ),
        PartitionResult(
            1,
            chunks=1,
            tokens=9,
            seconds=1.0,
            device="cuda",
            gpu_busy_percent=60.0,
            gpu_peak_bytes=3 << 30,
        ),
        # NVML could not read the GPU: no busy figure, but its memory peak counts.
        PartitionResult(2, chunks=1, tokens=9, seconds=4.0, device="cuda", gpu_peak_bytes=7 << 30),
    ]
    for result in parts:
        counts = {
            "documents": 1,
            "chunks": result.chunks,
            "tokens": result.tokens,
            **gpu_counts(result),
        }
        job = store.record_partition_done("j", "acme", result.partition, counts)
    assert job.gpu_busy_percent == 80.0  # (2 s x 90% + 1 s x 60%) / 3 s
    assert job.gpu_peak_bytes == 7 << 30
    again = store.record_partition_done(
        "j", "acme", 0, {"documents": 1, "chunks": 1, "tokens": 9, **gpu_counts(parts[0])}
    )
    assert again.gpu_busy_percent == 80.0  # recording twice adds nothing
    data = store.get_job("j").to_dict()
    assert data["gpu_busy_percent"] == 80.0 and data["gpu_peak_memory_bytes"] == 7 << 30


def test_a_cpu_job_has_no_gpu_figures(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.create_tenant("acme", "free")
    store.insert_job(_job("j"), plan_texts(["a"]).partitions)
    result = PartitionResult(0, chunks=1, tokens=3, seconds=1.0, device="cpu")
    job = store.record_partition_done(
        "j", "acme", 0, {"documents": 1, "chunks": 1, "tokens": 3, **gpu_counts(result)}
    )
    assert job.gpu_busy_percent is None
    assert job.to_dict()["gpu_peak_memory_bytes"] is None


def test_the_worker_sampler_averages_over_a_partitions_run():
    readings = iter([50.0, None, 100.0])
    busy = DeviceBusy(0, interval=0.001, read=lambda: next(readings, 100.0))
    started = time.perf_counter()
    while len(busy.samples) < 5:
        time.sleep(0.001)
    assert 50.0 <= busy.mean_since(0.0) <= 100.0
    assert busy.mean_since(started) is not None
    assert busy.mean_since(time.perf_counter() + 60) is None


def test_the_worker_gpu_is_found_as_dask_cuda_lists_it(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "3,0,1,2")
    assert nvml_device("cuda") == 3 and nvml_device("cuda:1") == 0
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "GPU-1b2c,GPU-9f")
    assert nvml_device("cuda:0") == "GPU-1b2c"
    monkeypatch.delenv("CUDA_VISIBLE_DEVICES")
    assert nvml_device("cuda:2") == 2


def test_cpu_partitions_sample_nothing():
    assert gpu_busy_since("cpu", 0.0) is None and gpu_peak_bytes("cpu") is None


@pytest.mark.slow
def test_a_real_job_on_the_cpu_records_its_device_and_no_gpu(cluster, tmp_path):
    from embedscale.jobs.local_run import EmbedRequest, run_embedding

    summary = run_embedding(
        EmbedRequest(table="t", texts=["one text", "another"], data_dir=str(tmp_path)), cluster
    )
    assert summary.ok
    job = Store(tmp_path / "embedscale.duckdb").get_job(summary.job_id)
    assert job.gpu_busy_percent is None and job.gpu_peak_bytes == 0
