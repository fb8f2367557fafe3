"""How much memory a model and its batches take: the token budget of a batch on a GPU, sized
from the device's free memory and the model's shape, and a model's own size (what the
per-process cache counts against its budget)."""

from __future__ import annotations

import os

from embedscale.engine.models.devices import dask_worker

# Bounds of a GPU batch, in padded tokens. Below 4096 a GPU idles on launch overheads; above
# 262144 (1024 inputs of 256) a batch no longer runs faster per token, while a partition's
# batches pipeline worse (fewer of them). benchmarks/gpu_smoke.py sweeps batch sizes to check.
MIN_GPU_TOKEN_BUDGET = 4096
MAX_GPU_TOKEN_BUDGET = 1 << 18
# The share of the free memory (at load time) one worker's batches may take: the rest is for
# the allocator's fragmentation, other models of the worker and other processes on the GPU.
GPU_MEMORY_SHARE = 0.5
MODEL_MEMORY_ENV = "EMBEDSCALE_MODEL_MEMORY"


def gpu_token_budget(
    free_bytes: int,
    *,
    hidden: int,
    intermediate: int,
    heads: int,
    max_tokens: int,
    dtype_bytes: int,
    threads: int = 1,
    share: float = GPU_MEMORY_SHARE,
) -> int:
    """Padded tokens per forward pass that fit in `share` of `free_bytes`, split between the
    worker's `threads` (each may run a batch at once).

    Per token, a transformer layer under inference_mode holds at its peak: the hidden state in
    and out, query, key, value and attention output (~6 x hidden), the feed-forward's
    intermediate activation before and after its nonlinearity (2 x intermediate), and one row
    of attention scores per head (heads x sequence) where the attention kernel materialises
    them. Layers run one after another and free their activations, so depth does not add up.
    """
    per_token = dtype_bytes * (6 * hidden + 2 * intermediate + heads * max_tokens)
    budget = int(free_bytes * share / max(1, threads) / max(1, per_token))
    return max(MIN_GPU_TOKEN_BUDGET, min(MAX_GPU_TOKEN_BUDGET, budget))


def device_token_budget(st, device: str, max_tokens: int, dtype: str) -> int:
    """gpu_token_budget for a loaded sentence-transformers model on a CUDA device, from the
    device's free memory now and the Dask worker's thread count."""
    import torch

    free, _total = torch.cuda.mem_get_info(torch.device(device))
    config = getattr(getattr(st[0], "auto_model", None), "config", None)
    hidden = int(getattr(config, "hidden_size", 1024))
    return gpu_token_budget(
        free,
        hidden=hidden,
        intermediate=int(getattr(config, "intermediate_size", 4 * hidden)),
        heads=int(getattr(config, "num_attention_heads", 16)),
        max_tokens=max_tokens,
        dtype_bytes=torch.empty((), dtype=_torch_dtype(dtype)).element_size(),
        threads=worker_threads(),
    )


def _torch_dtype(name: str):
    from embedscale.engine.models.precision import torch_dtype

    return torch_dtype(name)


def worker_threads() -> int:
    """The Dask worker's thread count (tasks that may run a batch at once); 1 elsewhere."""
    worker = dask_worker()
    return int(getattr(getattr(worker, "state", None), "nthreads", 1) or 1) if worker else 1


def model_bytes(module) -> int:
    """Bytes of a torch module's parameters and buffers (0 for what is not a module)."""
    try:
        tensors = list(module.parameters()) + list(module.buffers())
    except AttributeError:
        return 0
    return sum(t.numel() * t.element_size() for t in tensors)


def model_memory_budget(device: str) -> int:
    """Bytes of models one process keeps loaded on `device` before it evicts the least
    recently used: $EMBEDSCALE_MODEL_MEMORY (bytes, or with a unit: '8GiB'), else a quarter of
    the GPU's memory on CUDA (batches need the rest) and 4 GiB on the CPU."""
    configured = os.environ.get(MODEL_MEMORY_ENV)
    if configured:
        from dask.utils import parse_bytes

        return int(parse_bytes(configured))
    if device.split(":")[0] == "cuda":
        import torch

        return int(torch.cuda.get_device_properties(torch.device(device)).total_memory // 4)
    return 4 << 30
