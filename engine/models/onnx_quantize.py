"""Static int8 quantization of an ONNX export (provider onnx-int8), calibrated on the shipped
sample, with the MatMuls whose quantization loses the most kept in fp32.

Why static rather than onnxruntime's dynamic int8 (what onnx-int8 was): dynamic quantization
takes each MatMul input's range from the batch it is in, so a chunk's vector depends on the other
chunks batched with it (the same chunk alone and in a batch: cosine 0.986 at worst, as far apart
as int8 is from fp32), and a cosine measured on a sample says little of a job's batches. Static
ranges make a chunk's vector its own, at the same speed (2.0-2.3x fp32 on one thread) and the same
accuracy on chunks; short inputs (search queries) lose a little more (min cosine 0.982 against
0.988). Figures: benchmarks/bench_int8.py, the table in docs/providers.md.

What is quantized (all-MiniLM-L6-v2; minimum cosine to fp32 over 128 held-out chunks, measured
while choosing, with onnxruntime's calibrators):
- The MatMuls with a weight (attention Q, K, V and output, both FFN layers): weights int8 per
  output channel, each one's input uint8 per tensor with a range fixed by calibration
  (engine.models.onnx_calibration: Percentile 0.985; MinMax 0.982, Entropy the same here,
  clipping at 99.99% 0.78: the outliers of BERT's activations carry meaning).
- QDQ format, which onnxruntime fuses into one integer MatMul with a float output; QOperator
  quantizes the MatMuls' outputs too (0.86), as do QDQ's defaults (0.84), hence
  OpTypesToExcludeOutputQuantization. uint8 activations: int8 ones have no fused kernel here
  (2x slower).
- The attention's activation-by-activation MatMuls (QK^T, probabilities x V) stay float (0.971
  with them, against 0.982).
- Nothing else: the embedding tables, LayerNorms and GELU stay float (the embeddings' Gather in
  int8 too cost far more: 0.88, measured with dynamic int8).
Activation rounding is most of the loss (the weights alone in int8: 0.9988) and it is spread over
every layer: no one MatMul kept in fp32 buys more than a few thousandths of minimum cosine, so
int8 stays under the 0.999 guard, with its own tables.

Kept in fp32, chosen at export on the sample, deterministically: the CANDIDATES MatMuls of
largest local error (onnx_calibration.local_errors) are tried; greedily, the one whose return to
fp32 raises the sample's minimum cosine to fp32 the most is kept, while that gain is MIN_GAIN at
least, MOST_KEPT times at most (each costs speed).

The sample is the first $EMBEDSCALE_INT8_SAMPLE (default 96) chunks of calibration_texts.json,
each with a short input of its first tokens (split_sample): two thirds fix the ranges, the rest
score the exclusions. About a minute of CPU, once per host (the export is cached).
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
import os
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from embedscale.engine.errors import ModelError
from embedscale.engine.models.cpu_precision import calibration_texts, min_row_cosine
from embedscale.engine.models.onnx_calibration import (
    Feed,
    cpu_session,
    input_ranges,
    local_errors,
    matmul_inputs,
)

log = logging.getLogger(__name__)

SAMPLE_ENV = "EMBEDSCALE_INT8_SAMPLE"
DEFAULT_SAMPLE = 96
SHORT = (4, 8, 16, 32, 64)  # tokens of the short inputs the sample's chunks also give
# Bump when what is quantized, or how, changes: an old int8 export is then never reused.
INT8_FORMAT = "static1"  # its inputs too: SHORT, split_sample
CANDIDATES = 4
MOST_KEPT = 2
# Of minimum cosine on the sample, for each MatMul kept in fp32: one costs ~10% of the speed.
MIN_GAIN = 0.001
REPORT_FILE = "quantization.json"


@dataclass(frozen=True, slots=True)
class Int8Report:
    """What one quantization did: the MatMuls quantized and kept, and the cosine it kept."""

    quantized: tuple[str, ...]  # MatMul nodes in int8
    kept_fp32: tuple[str, ...]  # weight MatMuls left in fp32 (the most sensitive)
    min_cosine: float  # to fp32, over the scoring part of the sample
    inputs: int  # of the sample: its chunks and their short inputs


def sample_size() -> int:
    """How many chunks of the calibration sample the quantization uses ($EMBEDSCALE_INT8_SAMPLE)."""
    raw = os.environ.get(SAMPLE_ENV, "").strip()
    try:
        value = int(raw) if raw else DEFAULT_SAMPLE
    except ValueError:
        value = 0
    if value < 3:
        raise ModelError(f"{SAMPLE_ENV}={raw!r} must be a whole number >= 3: give e.g. 96")
    return value


def sample_texts() -> list[str]:
    """The texts of the sample: the first sample_size() of the calibration file."""
    return calibration_texts(sample_size())


def sample_key() -> str:
    """What an int8 export depends on besides the fp32 one: format, sample size and texts."""
    texts = sample_texts()
    digest = hashlib.sha256("\0".join(texts).encode()).hexdigest()[:12]
    return f"{INT8_FORMAT}-n{len(texts)}-{digest}"


def split_sample(contents: list[np.ndarray]) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The sample's content ids that fix the ranges (two thirds) and those that score the
    exclusions; each chunk also gives a short input, its first SHORT tokens in turn, as search
    queries and documents' last chunks are short: static ranges suit them least (min cosine on
    queries 0.981 against 0.985 on chunks, measured), so what is kept in fp32 is chosen for
    them too."""
    short = [ids[:n] for ids, n in zip(contents, itertools.cycle(SHORT))]
    cut = max(1, len(contents) * 2 // 3)
    return contents[:cut] + short[:cut], contents[cut:] + short[cut:]


def choose_kept(
    score: Callable[[tuple[str, ...]], float],
    candidates: Sequence[str],
    most: int = MOST_KEPT,
    min_gain: float = MIN_GAIN,
) -> tuple[tuple[str, ...], float]:
    """Greedy (pure): from nothing kept, keep the candidate whose exclusion scores best while
    it gains `min_gain` at least, `most` times at most. Returns what is kept and its score."""
    kept: tuple[str, ...] = ()
    best = score(kept)
    for _ in range(most):
        trials = [(score((*kept, name)), name) for name in candidates if name not in kept]
        if not trials:
            break
        value, name = max(trials, key=lambda t: t[0])  # the first of equals: candidates' order
        if value < best + min_gain:
            break
        kept, best = (*kept, name), value
    return kept, best


def quantize_int8(
    source: Path,
    target: Path,
    calibration: Sequence[Feed],
    scoring: Sequence[Feed],
    output: str,
    most_kept: int = MOST_KEPT,
) -> Int8Report:
    """Quantize the fp32 model `source` into `target` (see the module's docstring); the report
    is written beside it as quantization.json."""
    import onnx

    if not calibration or not scoring:
        raise ModelError(f"int8 quantization needs a sample of 3 chunks at least ({SAMPLE_ENV})")
    model = onnx.load(str(source))
    inputs = matmul_inputs(model)
    with tempfile.TemporaryDirectory(prefix=".quantize-", dir=target.parent) as scratch:
        try:
            ranges = input_ranges(model, sorted(set(inputs.values())), calibration)
            # Two inputs of each length class: the ranking sees short and long inputs alike.
            errors = local_errors(model, inputs, ranges, [_rows(f, 2) for f in scoring])
            ranked = sorted(inputs, key=lambda n: -errors[n])
            reference = _run(model.SerializeToString(), scoring, output)
            base = Path(scratch) / "int8.onnx"
            _quantize(source, base, inputs, ranges, _rows(scoring[0], 1))
            quantized_model = onnx.load(str(base))

            def score(kept: tuple[str, ...]) -> float:
                trial = _kept_in_fp32(quantized_model, model, kept)
                value = min_row_cosine(_run(trial.SerializeToString(), scoring, output), reference)
                log.debug("int8 with %s in fp32: min cosine %.5f", kept or "nothing", value)
                return value

            kept, min_cosine = choose_kept(score, ranked[:CANDIDATES], most_kept)
            onnx.save(_kept_in_fp32(quantized_model, model, kept), str(target))
        except ModelError:
            raise
        except Exception as exc:
            raise ModelError(
                f"cannot quantize {source} to int8: {type(exc).__name__}: "
                f"{str(exc).splitlines()[0] if str(exc) else ''}; use provider onnx"
            ) from None
    count = sum(len(f["input_ids"]) for f in (*calibration, *scoring))
    quantized = tuple(n for n in inputs if n not in kept)
    report = Int8Report(quantized, kept, round(min_cosine, 6), count)
    (target.parent / REPORT_FILE).write_text(json.dumps(asdict(report), indent=1))
    log.info(
        "quantized %s to int8: %d MatMuls, kept in fp32: %s; min cosine to fp32 %.4f on the sample",
        source,
        len(quantized),
        ", ".join(kept) or "none",
        min_cosine,
    )
    return report


def _rows(feed: Feed, count: int) -> Feed:
    return {name: array[:count] for name, array in feed.items()}


class _Reader:
    """A CalibrationDataReader over ready batches (onnxruntime only calls get_next)."""

    def __init__(self, feeds: Sequence[Feed]) -> None:
        self._feeds = iter(feeds)

    def get_next(self) -> Feed | None:
        return next(self._feeds, None)


def _quantize(
    source: Path,
    target: Path,
    inputs: dict[str, str],
    ranges: dict[str, tuple[float, float]],
    tiny: Feed,
) -> None:
    """quantize_static on every weight MatMul, with the ranges of the calibration sample."""
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    # The ranges, given as overrides: quantize_static's own calibration (it always runs one)
    # then sees one short input only, and every range it would use is replaced.
    overrides = {
        tensor: [{"rmin": np.float32(ranges[tensor][0]), "rmax": np.float32(ranges[tensor][1])}]
        for tensor in set(inputs.values())
    }
    quiet = _DropRecords("Please consider")
    root = logging.getLogger()
    root.addFilter(quiet)  # two root-logger warnings per call, about an optional pre-processing
    try:
        quantize_static(
            str(source),
            str(target),
            _Reader([tiny]),
            quant_format=QuantFormat.QDQ,
            op_types_to_quantize=["MatMul"],
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_quantize=list(inputs),
            extra_options={
                "OpTypesToExcludeOutputQuantization": ["MatMul"],
                "TensorQuantOverrides": overrides,
            },
        )
    finally:
        root.removeFilter(quiet)


def _kept_in_fp32(quantized, fp32, kept: tuple[str, ...]):
    """The quantized model with the MatMuls `kept` given back their fp32 input and weight, and
    the Q/DQ nodes and int8 weights nothing uses any more removed. Not quantize_static's
    nodes_to_exclude: that keeps an input shared with quantized MatMuls (Q, K and V share one)
    rounded to int8 while the MatMul runs in fp32 (measured), the cost without the accuracy."""
    import onnx

    trial = onnx.ModelProto()
    trial.CopyFrom(quantized)
    graph = trial.graph
    original = {n.name: n for n in fp32.graph.node if n.name in kept}
    weights = {i.name: i for i in fp32.graph.initializer}
    present = {i.name for i in graph.initializer}
    for node in graph.node:
        if node.name in original:
            del node.input[:]
            node.input.extend(original[node.name].input)
            for name in node.input:
                if name in weights and name not in present:
                    graph.initializer.append(weights[name])
                    present.add(name)
    while True:  # a DQ left unused, then its Q
        used = {name for node in graph.node for name in node.input}
        used |= {o.name for o in graph.output}
        dead = [
            node
            for node in graph.node
            if node.op_type in ("QuantizeLinear", "DequantizeLinear")
            and not any(name in used for name in node.output)
        ]
        if not dead:
            break
        for node in dead:
            graph.node.remove(node)
    used = {name for node in graph.node for name in node.input}
    live = [i for i in graph.initializer if i.name in used]
    del graph.initializer[:]
    graph.initializer.extend(live)
    return trial


def _run(model: bytes, feeds: Sequence[Feed], output: str) -> np.ndarray:
    session = cpu_session(model)
    return np.concatenate([session.run([output], feed)[0] for feed in feeds]).astype(np.float32)


class _DropRecords(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)
