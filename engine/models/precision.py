"""The number format a model runs in, chosen explicitly per device and recorded in ModelInfo.

On CUDA, half precision: BERT-class encoders run ~2.5-3.5x faster in fp16/bf16 than in fp32
(tensor cores), and their vectors keep a cosine >= 0.999 to the fp32 ones (tests/test_gpu.py
checks every row on a real GPU). fp16 is the default there: its 10-bit mantissa keeps vectors
closer to fp32 than bf16's 7 bits, at the same speed on the GPUs that have both. bf16 is taken
when the checkpoint was trained in it (such models can overflow fp16) and the GPU supports it.
On the CPU, fp32: CPU kernels for half types are slower, not faster.

`EMBEDSCALE_DTYPE` (auto, float32, float16, bfloat16) overrides the choice, and
`EMBEDSCALE_TF32=1` lets fp32 matrix products use TF32 tensor cores on CUDA (faster, ~1e-3
relative error: an option, never the default).
"""

from __future__ import annotations

import os

from embedscale.engine.errors import ModelError

DTYPES = ("float32", "float16", "bfloat16")
DTYPE_ENV = "EMBEDSCALE_DTYPE"
TF32_ENV = "EMBEDSCALE_TF32"


def choose_dtype(
    device: str,
    requested: str | None = None,
    *,
    checkpoint_dtype: str | None = None,
    bf16_supported: bool | None = None,
) -> str:
    """The dtype a model runs in on `device`: `requested` (or $EMBEDSCALE_DTYPE) unless it is
    'auto' or unset; else fp32 on the CPU and fp16 on CUDA (bf16 for a bf16 checkpoint on a GPU
    that supports it). `bf16_supported` None asks torch."""
    requested = (requested or os.environ.get(DTYPE_ENV) or "auto").strip().lower()
    if requested not in ("auto", *DTYPES):
        raise ModelError(
            f"unknown dtype {requested!r} (from {DTYPE_ENV} or the request): "
            f"use auto, {', '.join(DTYPES)}"
        )
    on_cuda = device.split(":")[0] == "cuda"
    if requested != "auto":
        if requested == "bfloat16" and on_cuda and not _bf16_supported(bf16_supported, device):
            raise ModelError(
                f"dtype bfloat16 asked for, but {device} does not support it: use float16 or auto"
            )
        return requested
    if not on_cuda:
        return "float32"
    if checkpoint_dtype == "bfloat16" and _bf16_supported(bf16_supported, device):
        return "bfloat16"
    return "float16"


def _bf16_supported(known: bool | None, device: str) -> bool:
    if known is not None:
        return known
    import torch

    with torch.cuda.device(device):
        return bool(torch.cuda.is_bf16_supported())


def tf32_wanted() -> bool:
    """Whether $EMBEDSCALE_TF32 asks for TF32 matrix products on CUDA."""
    return os.environ.get(TF32_ENV, "").strip().lower() in ("1", "true", "yes", "on")


def apply_tf32(device: str, enabled: bool | None = None) -> bool:
    """Allow (or not) TF32 for fp32 matrix products on CUDA; returns what is in force. A no-op
    on the CPU. Process-wide in torch, so it is set from the environment, not per model."""
    if device.split(":")[0] != "cuda":
        return False
    import torch

    enabled = tf32_wanted() if enabled is None else enabled
    torch.backends.cuda.matmul.allow_tf32 = enabled
    torch.backends.cudnn.allow_tf32 = enabled
    return enabled


def torch_dtype(name: str):
    """The torch dtype of one of DTYPES."""
    import torch

    return {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[name]
