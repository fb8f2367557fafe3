"""Where models run and in what: the device rule (dask-cuda workers on their GPU, plain workers
on the CPU), the dtype choice, local-cuda refusing a machine without CUDA, partitions planned for
GPU clusters, and the model cache's least-recently-used eviction and plugin teardown. No GPU
here: CUDA's presence is stood in for where the rule only asks torch whether there is one."""

from __future__ import annotations

import types

import pytest

from embedscale.engine.cluster.placement import (
    MIN_GPU_PARTITION_BYTES,
    GpuCount,
    gpu_workers,
    plan_target,
)
from embedscale.engine.errors import EmbedscaleError, ModelError
from embedscale.engine.models import cache, devices, loading
from embedscale.engine.models.precision import choose_dtype
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.sources.enumeration import MIN_PARTITION_BYTES, plan_source

# --- dtype ---------------------------------------------------------------------------------


def test_dtype_is_float32_on_cpu_and_half_on_cuda(monkeypatch):
    monkeypatch.delenv("EMBEDSCALE_DTYPE", raising=False)
    assert choose_dtype("cpu") == "float32"
    assert choose_dtype("cuda", bf16_supported=True) == "float16"
    assert choose_dtype("cuda:1", bf16_supported=False) == "float16"
    # A checkpoint trained in bf16 keeps it where the GPU has it (fp16 could overflow).
    assert choose_dtype("cuda", checkpoint_dtype="bfloat16", bf16_supported=True) == "bfloat16"
    assert choose_dtype("cuda", checkpoint_dtype="bfloat16", bf16_supported=False) == "float16"
    assert choose_dtype("cpu", checkpoint_dtype="float16") == "float32"


def test_dtype_can_be_asked_for(monkeypatch):
    assert choose_dtype("cuda", "float32") == "float32"
    monkeypatch.setenv("EMBEDSCALE_DTYPE", "bfloat16")
    assert choose_dtype("cuda", bf16_supported=True) == "bfloat16"
    with pytest.raises(ModelError, match="does not support it"):
        choose_dtype("cuda", bf16_supported=False)
    monkeypatch.setenv("EMBEDSCALE_DTYPE", "fp8")
    with pytest.raises(ModelError, match="unknown dtype 'fp8'"):
        choose_dtype("cpu")


def test_the_loaded_model_records_its_dtype(model):
    assert model.device == "cpu" and model.info.dtype == "float32"


# --- device --------------------------------------------------------------------------------


class _Plugin:
    pass


def _worker(*plugin_modules: str):
    plugins = {}
    for i, module in enumerate(plugin_modules):
        cls = type("CPUAffinity", (_Plugin,), {"__module__": module})
        plugins[f"p{i}"] = cls()
    return types.SimpleNamespace(plugins=plugins)


@pytest.fixture
def cuda_present(monkeypatch):
    import torch

    monkeypatch.delenv("EMBEDSCALE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)


def test_plain_dask_workers_stay_on_the_cpu_of_a_gpu_machine(cuda_present, monkeypatch):
    monkeypatch.setattr(devices, "dask_worker", lambda: _worker("distributed.shuffle"))
    assert devices.default_device() == "cpu"


def test_dask_cuda_workers_use_their_gpu(cuda_present, monkeypatch):
    monkeypatch.setattr(devices, "dask_worker", lambda: _worker("dask_cuda.plugins"))
    assert devices.default_device() == "cuda"


def test_outside_a_worker_the_gpu_and_an_explicit_device_wins(cuda_present, monkeypatch):
    monkeypatch.setattr(devices, "dask_worker", lambda: None)
    assert devices.default_device() == "cuda"
    monkeypatch.setenv("EMBEDSCALE_DEVICE", "cuda:3")
    monkeypatch.setattr(devices, "dask_worker", lambda: _worker("distributed.shuffle"))
    assert devices.default_device() == "cuda:3"


def test_no_cuda_means_the_cpu(monkeypatch):
    import torch

    monkeypatch.delenv("EMBEDSCALE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "dask_worker", lambda: _worker("dask_cuda.plugins"))
    assert devices.default_device() == "cpu"


def test_workers_of_a_real_local_cluster_run_on_the_cpu(cluster):
    where = cluster.client.run(devices.default_device)
    assert set(where.values()) == {"cpu"}


def test_local_cuda_refuses_to_start_without_cuda(monkeypatch):
    import torch

    from embedscale.engine.cluster.start import ClusterSpec, start_cluster

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(EmbedscaleError, match="needs a GPU that torch can use"):
        start_cluster(ClusterSpec(kind="local-cuda", dashboard_address=None))


# --- planning ------------------------------------------------------------------------------


def test_partitions_are_planned_for_gpus(tmp_path):
    for i in range(12):  # 12 files of 1 MiB
        (tmp_path / f"doc{i:02d}.txt").write_text(("word " * 200 + "\n") * 1048)
    cpu = plan_target(threads=8, gpus=0)
    gpu = plan_target(threads=2, gpus=1)
    assert cpu.min_partition_bytes == MIN_PARTITION_BYTES
    assert gpu.min_partition_bytes == MIN_GPU_PARTITION_BYTES >= 4 << 20
    on_cpus = plan_source(
        tmp_path, parallelism=cpu.parallelism, min_partition_bytes=cpu.min_partition_bytes
    )
    on_gpu = plan_source(
        tmp_path, parallelism=gpu.parallelism, min_partition_bytes=gpu.min_partition_bytes
    )
    assert len(on_cpus.partitions) == 12
    assert len(on_gpu.partitions) == 3
    assert all(p.size_bytes >= MIN_GPU_PARTITION_BYTES for p in on_gpu.partitions)


def test_gpu_workers_are_counted_from_their_resource():
    info = {
        "workers": {
            "a": {"resources": {"GPU": 1}},
            "b": {"resources": {}},
            "c": {"resources": {"GPU": 1.0}},
            "d": {},
        }
    }
    assert gpu_workers(info) == 2

    class Client:
        asked = 0

        def scheduler_info(self, n_workers=-1):
            Client.asked += 1
            return info

    count = GpuCount(max_age=60)
    assert count(Client()) == 2 and count(Client()) == 2 and Client.asked == 1


def test_a_real_cpu_cluster_counts_no_gpu(cluster):
    assert GpuCount()(cluster.client) == 0


# --- model cache ---------------------------------------------------------------------------


class _Fake:
    def __init__(self, spec: ModelSpec, device) -> None:
        self.spec, self.device, self.memory_bytes = spec, "cpu", 100


@pytest.fixture
def fake_cache(monkeypatch):
    monkeypatch.setattr(cache, "load_model", _Fake)
    monkeypatch.setattr(cache, "_models", {})
    monkeypatch.setattr(cache, "_used", {})
    monkeypatch.setattr(cache, "_loads", {})
    monkeypatch.setenv("EMBEDSCALE_MODEL_MEMORY", "250")  # two fakes fit, not three


def _spec(name: str) -> ModelSpec:
    return ModelSpec(name, f"/models/{name}", local=True)


def test_least_recently_used_models_are_evicted_over_the_budget(fake_cache):
    a, b, c = _spec("a"), _spec("b"), _spec("c")
    first_a = cache.get_model(a)
    cache.get_model(b)
    assert cache.get_model(a) is first_a  # a used again: b is now the least recent
    cache.get_model(c)
    assert cache.loaded_models() == ["a", "c"]
    cache.get_model(b)  # loaded again; a is the least recent now
    assert cache.loaded_models() == ["c", "b"]
    assert cache.load_count(b) == 2 and cache.load_count(a) == 1


def test_a_model_over_the_budget_alone_still_loads(fake_cache, monkeypatch):
    monkeypatch.setenv("EMBEDSCALE_MODEL_MEMORY", "10")
    cache.get_model(_spec("a"))
    cache.get_model(_spec("b"))
    assert cache.loaded_models() == ["b"]


def test_the_preload_plugin_frees_its_models_at_teardown(fake_cache):
    a, b = _spec("a"), _spec("b")
    plugin = cache.ModelPreloadPlugin([a])
    plugin.setup(worker=None)
    cache.get_model(b)
    assert cache.loaded_models() == ["a", "b"]
    plugin.teardown(worker=None)
    assert cache.loaded_models() == ["b"]
    assert cache.release_model(a) is False


def test_a_closing_worker_process_ends_with_its_models_and_frees_nothing_first(fake_cache):
    from types import SimpleNamespace

    from distributed.core import Status

    a = _spec("a")
    plugin = cache.ModelPreloadPlugin([a])
    plugin.setup(worker=None)
    plugin.teardown(SimpleNamespace(status=Status.closing, nanny="tcp://127.0.0.1:1"))
    assert cache.loaded_models() == ["a"]  # the process ends: no garbage collection for it
    plugin.teardown(SimpleNamespace(status=Status.closing, nanny=None))  # in-process worker
    assert cache.loaded_models() == []


@pytest.mark.slow
def test_search_embeds_its_query_on_the_cpu_of_a_gpu_machine(cluster, tmp_path, monkeypatch):
    import torch

    from embedscale.engine.tables.search import search
    from tests.helpers import run

    assert run(
        cluster,
        table="t",
        texts=["GPUs embed partitions", "CPUs serve queries"],
        data_dir=str(tmp_path),
    ).ok
    monkeypatch.delenv("EMBEDSCALE_DEVICE", raising=False)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # as on a GPU box
    loads = []
    monkeypatch.setattr(
        cache,
        "load_model",
        lambda spec, device: loads.append(device) or loading.load_model(spec, device),
    )
    monkeypatch.setattr(cache, "_models", {})
    hits = search(tmp_path, "t", "who serves queries?", k=1)
    assert hits and loads == ["cpu"]
