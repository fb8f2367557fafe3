"""The GPU host check runs here on the CPU (its --cpu mode, the same code), the model it carries
is the packaged one stored in float16, and the gpu extras are the ones that resolve at once."""

from __future__ import annotations

import json
import subprocess
import sys
import tomllib
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_smoke_check_runs_on_the_cpu_and_prints_one_json_line():
    done = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_smoke.py"), "--cpu"],
        capture_output=True,
        text=True,
        timeout=300,
        cwd=ROOT,
    )
    lines = done.stdout.strip().splitlines()
    assert len(lines) == 1, done.stdout + done.stderr[-3000:]
    report = json.loads(lines[0])
    assert report["ok"], (report["checks"], report["errors"])
    assert done.returncode == 0
    assert "lancedb" not in done.stderr  # nothing on its path imports it (too big to carry)
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


def test_the_smoke_path_imports_no_lancedb():
    code = (
        "import sys; sys.modules['lancedb'] = None; sys.modules['lance'] = None; "
        "import benchmarks.gpu_smoke, embedscale.engine.models.batching, "
        "embedscale.engine.chunking.chunker, embedscale.engine.cluster.start, "
        "embedscale.engine.models.cache, embedscale.engine.cluster.gpu_stats"
    )
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)


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
