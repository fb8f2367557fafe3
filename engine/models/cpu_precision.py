"""The precision a model runs in on a CPU worker, chosen by measurement against fp32.

A job's `precision` (auto, fp32, bf16, int8) reaches the worker in its ModelSpec. On a CPU:
- fp32: as before, no measurement.
- bf16: the faster of two bf16 forms, both measured on the calibration sample: fp32 weights
  under `torch.autocast("cpu", bfloat16)`, or the whole model cast to bf16 weights. Refused
  (ModelError naming `precision`) if neither keeps the guard; a CPU without bf16 kernels falls
  back to fp32 with one log line.
- auto: every candidate the CPU supports is measured against fp32 on the calibration sample, and
  the fastest whose minimum cosine to fp32 over every sample row is at least the guard
  ($EMBEDSCALE_PRECISION_MIN_COSINE, default 0.999) is kept, else fp32.
- int8: not a torch precision; it is provider onnx-int8 (jobs.spec refuses other pairings).

Measured on this project's machine (AMD EPYC, 2 cores, avx512_bf16, no AMX; all-MiniLM-L6-v2,
472 chunks of 150 words, one thread): fp32 37-44 s, bf16 autocast 21.6 s at minimum cosine
0.99996, bf16 weights 20.3 s at 0.99990: ~1.9-2x within the guard. int8 (onnx-int8, static):
~1.7-2x at minimum cosine 0.982-0.988 (benchmarks/bench_int8.py), below it, so auto never
reaches for it.

The calibration sample is `calibration_texts.json` beside this module (256 real chunks: pydoc
text of the standard library, 150 words each); a load measures its first
$EMBEDSCALE_PRECISION_SAMPLE (default 32) so a worker's first load stays within seconds. The
measurements are cached per host in a small JSON file, $EMBEDSCALE_PRECISION_CACHE (default
~/.cache/embedscale/precision.json), keyed by model, torch version, the CPU's flags and the
thread count: later workers and restarts on the host reuse them, and the guard is applied to
the cached figures afresh, so changing it needs no new measurement.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedscale.engine.errors import ModelError
from embedscale.engine.models.info import form_label

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "fp32", "bf16", "int8")
DEFAULT_MIN_COSINE = 0.999
MIN_COSINE_ENV = "EMBEDSCALE_PRECISION_MIN_COSINE"
SAMPLE_ENV = "EMBEDSCALE_PRECISION_SAMPLE"
CACHE_ENV = "EMBEDSCALE_PRECISION_CACHE"
DEFAULT_SAMPLE = 32
CALIBRATION_FILE = Path(__file__).with_name("calibration_texts.json")
# The forms a torch model can run in on a CPU: (precision, form).
FP32 = "fp32"
BF16_AUTOCAST = "bf16-autocast"
BF16_WEIGHTS = "bf16-weights"
CANDIDATES = (FP32, BF16_AUTOCAST, BF16_WEIGHTS)


@dataclass(frozen=True, slots=True)
class Measurement:
    """One candidate run on the calibration sample: its seconds and its minimum cosine to fp32."""

    candidate: str
    seconds: float
    min_cosine: float


@dataclass(frozen=True, slots=True)
class Choice:
    """The form a model runs in, and what was measured of it (None: nothing was measured)."""

    candidate: str  # one of CANDIDATES
    min_cosine: float | None = None
    speedup: float | None = None  # fp32 seconds / its seconds

    @property
    def precision(self) -> str:
        """fp32 or bf16, as a job names it."""
        return self.candidate.split("-")[0]

    def describe(self) -> str:
        """The form and what was measured of it, as logged (engine.models.info.form_label)."""
        return form_label(self.candidate, self.min_cosine, self.speedup)


def min_cosine_guard() -> float:
    """The guard: $EMBEDSCALE_PRECISION_MIN_COSINE, default 0.999."""
    raw = os.environ.get(MIN_COSINE_ENV, "").strip()
    if not raw:
        return DEFAULT_MIN_COSINE
    try:
        value = float(raw)
    except ValueError:
        raise ModelError(f"{MIN_COSINE_ENV}={raw!r} is not a number: give e.g. 0.999") from None
    if not 0.0 < value <= 1.0:
        raise ModelError(f"{MIN_COSINE_ENV}={raw!r} must lie in (0, 1]: give e.g. 0.999")
    return value


def candidates_for(
    requested: str, bf16_supported: bool, guard: float | None = None
) -> tuple[str, ...]:
    """The forms to measure for a `requested` precision on a CPU (fp32 always, the reference).
    auto under a `guard` of 1.0 measures nothing: no lower form gives fp32's vectors exactly,
    so fp32 is the only form it could keep (and a worker's first load costs no measurement);
    None: the guard is not known (the candidates do not depend on it otherwise)."""
    if requested not in PRECISIONS:
        raise ModelError(f"unknown precision {requested!r}: use one of {', '.join(PRECISIONS)}")
    if requested == "int8":
        raise ModelError(
            "precision 'int8' runs as provider onnx-int8 (its own tables): give "
            "provider onnx-int8 with it"
        )
    only_fp32_kept = requested == "auto" and guard is not None and guard >= 1.0
    if requested == "fp32" or not bf16_supported or only_fp32_kept:
        return (FP32,)
    return CANDIDATES


def choose(requested: str, measured: Mapping[str, Measurement], guard: float) -> Choice:
    """The form to run in, from the measurements (pure). auto: the fastest form meeting the
    guard, else fp32. bf16: the faster bf16 form meeting the guard (ModelError naming
    `precision` if none does); fp32, or no bf16 form measured (a CPU without bf16): fp32."""
    fp32 = measured.get(FP32)
    allowed = [BF16_AUTOCAST, BF16_WEIGHTS] if requested == "bf16" else list(CANDIDATES)
    options = [measured[c] for c in allowed if c in measured]
    if fp32 is None or requested == "fp32" or not [m for m in options if m.candidate != FP32]:
        return Choice(FP32)
    good = [m for m in options if m.min_cosine >= guard]
    if not good:
        if requested == "bf16":
            best = max(options, key=lambda m: m.min_cosine)
            raise ModelError(
                f"precision 'bf16' keeps a minimum cosine to fp32 of {best.min_cosine:.5f} on "
                f"this model, under the guard {guard} ({MIN_COSINE_ENV}): use precision fp32 "
                "or auto"
            )
        return Choice(FP32, 1.0, 1.0)
    best = min(good, key=lambda m: m.seconds)
    return Choice(best.candidate, best.min_cosine, fp32.seconds / max(best.seconds, 1e-9))


def cpu_bf16_supported() -> bool:
    """Whether torch has fast bf16 kernels on this CPU (oneDNN, and AVX-512 bf16 or AMX)."""
    import torch

    if not torch.backends.mkldnn.is_available():
        return False
    cpu = torch.cpu
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(bool(getattr(cpu, name, lambda: False)()) for name in checks)


def calibration_texts(count: int | None = None) -> list[str]:
    """The first `count` ($EMBEDSCALE_PRECISION_SAMPLE, default 32) texts of the sample."""
    if count is None:
        count = int(os.environ.get(SAMPLE_ENV) or DEFAULT_SAMPLE)
    texts = json.loads(CALIBRATION_FILE.read_text(encoding="utf-8"))["texts"]
    return list(texts[: max(1, count)])


def host_key(model: str, threads: int, bf16: bool) -> str:
    """The cache key: model, torch version, the CPU's flags and the thread count."""
    import platform

    import torch

    flags = _cpu_flags()
    digest = hashlib.sha256(" ".join(sorted(flags)).encode()).hexdigest()[:16]
    return "|".join(
        [model, torch.__version__, platform.machine(), digest, f"bf16={bf16}", f"t={threads}"]
    )


def _cpu_flags() -> set[str]:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("flags"):
                return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def cache_path() -> Path:
    """Where this host keeps its measurements."""
    raw = os.environ.get(CACHE_ENV)
    return Path(raw) if raw else Path.home() / ".cache" / "embedscale" / "precision.json"


def cached(key: str) -> dict[str, Measurement] | None:
    """The measurements cached for `key`, if any (a damaged file counts as none)."""
    try:
        entry = json.loads(cache_path().read_text())[key]
        return {c: Measurement(**m) for c, m in entry.items()}
    except (OSError, ValueError, KeyError, TypeError):
        return None


def store(key: str, measured: Mapping[str, Measurement]) -> None:
    """Add `measured` to the host's cache (written whole and renamed: readers never see half
    a file; two workers measuring at once both write the same figures' kind)."""
    path = cache_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            data = json.loads(path.read_text())
        except (OSError, ValueError):
            data = {}
        data[key] = {c: asdict(m) for c, m in measured.items()}
        with tempfile.NamedTemporaryFile("w", dir=path.parent, delete=False) as out:
            json.dump(data, out, indent=1)
        os.replace(out.name, path)
    except OSError as exc:  # a read-only home: measure again next time
        log.warning("cannot cache precision measurements in %s: %s", path, exc)


def measure(
    run: Callable[[str, list[str]], np.ndarray], candidates: tuple[str, ...], texts: list[str]
) -> dict[str, Measurement]:
    """Run each candidate on `texts` (after an untimed warm-up on a few of them) and compare
    its vectors with fp32's, row by row."""
    times: dict[str, float] = {}
    vectors: dict[str, np.ndarray] = {}
    for candidate in candidates:
        run(candidate, texts[:4])  # first calls build kernels: not the form's speed
        started = time.perf_counter()
        vectors[candidate] = np.asarray(run(candidate, texts), dtype=np.float32)
        times[candidate] = time.perf_counter() - started
    reference = vectors[FP32]
    return {c: Measurement(c, times[c], min_row_cosine(vectors[c], reference)) for c in candidates}


def min_row_cosine(a: np.ndarray, b: np.ndarray) -> float:
    """The least cosine between a row of `a` and the same row of `b`."""
    norms = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    return float(((a * b).sum(1) / np.maximum(norms, 1e-12)).min())
