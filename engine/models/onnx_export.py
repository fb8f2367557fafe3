"""A sentence-transformers model exported to ONNX once per host, kept on disk.

The export is the model's own pipeline (engine.models.onnx_pipeline) in one graph: transformer,
pooling and normalization, taking the same padded token ids as the torch backend. It is cached
under `EMBEDSCALE_ONNX_CACHE` (default ~/.cache/embedscale/onnx) in a folder named by a hash of
the model's files and of what shapes the graph (exporter version, torch and transformers
versions), so a changed weight file is a new export and a second job, a restarted worker or a
second worker process on the host load the file instead of exporting again. A folder appears
whole or not at all (exported into a temporary folder, then renamed), and an exclusive lock on
the host (fcntl.flock) makes concurrent loads export once: the others wait, then find it.
The opt-in int8 variant is the fp32 export statically quantized on the shipped calibration sample
(engine.models.onnx_quantize), cached the same way beside it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from embedscale.engine.errors import ModelError
from embedscale.engine.models import onnx_quantize
from embedscale.engine.models.onnx_pipeline import Pipeline

log = logging.getLogger(__name__)

CACHE_ENV = "EMBEDSCALE_ONNX_CACHE"
# Bump when the exported graph changes (inputs, outputs, pooling code, opset): old exports are
# then never reused.
EXPORT_FORMAT = "1"
OPSET = 17
MODEL_FILE = "model.onnx"
INPUTS = ("input_ids", "attention_mask")
OUTPUT = "sentence_embedding"
_HASH_BLOCK = 1 << 20


def cache_root() -> Path:
    """Where exports are kept on this host."""
    configured = os.environ.get(CACHE_ENV)
    if configured:
        return Path(configured).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "embedscale" / "onnx"


def export_key(folder: Path, pipeline: Pipeline) -> str:
    """A hash of every file of the model's folder (names and bytes) and of what shapes the
    exported graph: equal keys mean an export can be reused as it is."""
    import torch
    import transformers

    digest = hashlib.sha256()
    for token in (
        EXPORT_FORMAT,
        str(OPSET),
        torch.__version__,
        transformers.__version__,
        json.dumps(pipeline.as_dict(), sort_keys=True),
    ):
        digest.update(token.encode() + b"\0")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(str(path.relative_to(folder)).encode() + b"\0")
        with path.open("rb") as f:
            while block := f.read(_HASH_BLOCK):
                digest.update(block)
        digest.update(b"\0")
    return digest.hexdigest()[:32]


# The int8 sample, as the graph's input batches: (those that fix the ranges, those that score).
Sample = tuple[Sequence[onnx_quantize.Feed], Sequence[onnx_quantize.Feed]]


def exported_model(
    folder: Path,
    pipeline: Pipeline,
    precision: str = "fp32",
    sample: Callable[[], Sample] | None = None,
) -> Path:
    """The path of the model's ONNX file on this host, exporting it first if no process has;
    "int8" is the fp32 export, quantized on `sample()` (made only when it is), cached in turn."""
    key = export_key(folder, pipeline)
    fp32 = _cached(key, lambda target: export(folder, pipeline, target), pipeline)
    if precision == "fp32":
        return fp32
    if precision == "int8":
        import onnxruntime  # its quantizer makes the file: another version, another entry

        if sample is None:
            raise ModelError("an int8 export needs its calibration sample")
        made = sample  # for mypy: narrowed inside the lambda too
        return _cached(
            f"{key}-int8-{onnx_quantize.sample_key()}-ort{onnxruntime.__version__}",
            lambda target: onnx_quantize.quantize_int8(fp32, target, *made(), OUTPUT),
            pipeline,
        )
    raise ModelError(f"unknown ONNX precision {precision!r}: use fp32 or int8")


def _cached(key: str, make: Callable[[Path], object], pipeline: Pipeline) -> Path:
    """The model file of cache entry `key`, made by `make(target)` first if it is missing."""
    root = cache_root()
    final = root / key
    if (final / MODEL_FILE).is_file():
        return final / MODEL_FILE
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ModelError(
            f"cannot create the ONNX cache folder {root}: {exc}; set "
            f"{CACHE_ENV} to a writable folder"
        ) from None
    with _host_lock(root / f"{key}.lock"):
        if not (final / MODEL_FILE).is_file():  # another process may have made it meanwhile
            # Only the lock's holder makes temporary folders: any here now were left by a
            # process killed mid-export (rmtree never ran); each holds a model's worth of disk.
            for stale in root.glob(f".{key}-*"):
                shutil.rmtree(stale, ignore_errors=True)
            _make_into(final, make, pipeline)
    return final / MODEL_FILE


@contextlib.contextmanager
def _host_lock(path: Path) -> Iterator[None]:
    # flock, not a lock file's existence: the kernel drops it when a worker dies mid-export.
    with path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def _make_into(final: Path, make: Callable[[Path], object], pipeline: Pipeline) -> None:
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=final.parent))
    try:
        make(tmp / MODEL_FILE)
        (tmp / "pipeline.json").write_text(json.dumps(pipeline.as_dict(), indent=1))
        tmp.chmod(0o755)  # mkdtemp's 0700 would hide the export from the host's other users
        os.rename(tmp, final)  # a folder appears whole or not at all
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log.info("made the ONNX model %s", final)


def export(folder: Path, pipeline: Pipeline, target: Path) -> None:
    """Export the pipeline of the model in `folder` to `target` (the legacy TorchScript-based
    exporter: as close to torch as the dynamo one, measured, and needs only the onnx package)."""
    import torch
    from transformers import AutoModel
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # a bar per weight load: noise in a worker's log
    try:
        # Eager attention: the SDPA path traces into ops that do not export with dynamic axes.
        transformer = AutoModel.from_pretrained(
            str(pipeline.transformer_folder(folder)),
            attn_implementation="eager",
            dtype=torch.float32,
        )
    except Exception as exc:
        raise ModelError(
            f"cannot load {folder} for the ONNX export: {type(exc).__name__}: "
            f"{str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None
    module = _embedder(transformer, pipeline)
    # On the wrapper itself: torch.onnx.export restores the wrapper's training flag afterwards,
    # which would leave the whole model in train mode (dropout on) and export nothing useful.
    module.eval()
    ids = torch.full((2, 16), 1000, dtype=torch.int64)
    mask = torch.ones_like(ids)
    mask[1, 9:] = 0
    dynamic = {name: {0: "batch", 1: "tokens"} for name in INPUTS} | {OUTPUT: {0: "batch"}}
    with warnings.catch_warnings(), torch.no_grad():
        # The tracer warns about Python control flow it records as constants (shape checks in
        # transformers' mask code); the graph is checked against torch in the tests.
        warnings.simplefilter("ignore")
        try:
            torch.onnx.export(
                module,
                (ids, mask),
                str(target),
                input_names=list(INPUTS),
                output_names=[OUTPUT],
                dynamic_axes=dynamic,
                opset_version=OPSET,
                dynamo=False,
            )
        except Exception as exc:
            raise ModelError(
                f"cannot export {folder} to ONNX: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; use provider "
                "sentence-transformers for this model"
            ) from None


def _embedder_class():
    import torch

    class Embedder(torch.nn.Module):
        """Transformer, pooling and (if the pipeline has it) L2 normalization, as one module."""

        def __init__(self, transformer, pipeline: Pipeline) -> None:
            super().__init__()
            self.transformer = transformer
            self.pooling = pipeline.pooling
            self.normalize = pipeline.normalize

        def forward(self, input_ids, attention_mask):
            tokens = self.transformer(
                input_ids=input_ids, attention_mask=attention_mask
            ).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            if self.pooling == "cls":
                pooled = tokens[:, 0]
            elif self.pooling == "max":
                pooled = (tokens + (mask - 1.0) * 1e9).max(dim=1).values
            else:  # mean, or mean_sqrt_len: sentence-transformers' clamp, its divisor
                summed = (tokens * mask).sum(dim=1)
                count = mask.sum(dim=1).clamp(min=1e-9)
                pooled = summed / (count.sqrt() if self.pooling == "mean_sqrt_len" else count)
            if self.normalize:
                pooled = torch.nn.functional.normalize(pooled, p=2, dim=1)
            return pooled

    return Embedder


def _embedder(transformer, pipeline: Pipeline):
    # The class is made on first use: torch is imported by the process that exports only.
    return _embedder_class()(transformer, pipeline)
