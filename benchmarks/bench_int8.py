"""int8 ONNX against fp32 ONNX on held-out chunks: seconds and cosine to fp32, one thread.

Compares the fp32 export, onnxruntime's dynamic int8 (what onnx-int8 was), and the static int8
of engine.models.onnx_quantize as exported (and with nothing kept in fp32, if it kept some), on
chunks the quantization never saw: the calibration file's texts past the sample, 256-token
windows of the Debian docs (another kind of text), and queries (their first 12 words); then
whether an input's vector depends on what it is batched with. Prints the quantization's report.

    python -m benchmarks.bench_int8 [--chunks 128] [--repeat 1]
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from benchmarks.corpus import debian_docs
from embedscale.engine.models import onnx_quantize
from embedscale.engine.models.cpu_precision import CALIBRATION_FILE
from embedscale.engine.models.onnx_export import OUTPUT, exported_model
from embedscale.engine.models.onnx_model import OnnxModel, _batches, graph_inputs
from embedscale.engine.models.onnx_pipeline import read_pipeline
from embedscale.engine.models.registry import provider_spec


def held_out(model: OnnxModel, chunks: int) -> dict[str, list[np.ndarray]]:
    """Full inputs of chunks the quantization never saw, per kind."""
    texts = json.loads(CALIBRATION_FILE.read_text())["texts"][onnx_quantize.sample_size() :]
    sets = {"pydoc": model._inputs(texts[-chunks:])}
    # Search queries of an int8 table are embedded by the int8 model: short inputs, as
    # bench_throughput makes them (the first 12 words of a chunk).
    sets["queries"] = model._inputs([" ".join(t.split()[:12]) for t in texts[-chunks:]])
    room = model.info.max_tokens - model.info.special_tokens
    windows = []
    for _, text in debian_docs(chunks * 4000):
        ids = model.tokenizer.encode(text, add_special_tokens=False).ids
        windows += [ids[s : s + room] for s in range(0, len(ids) - room, room * 4)]
    if windows:
        step = max(1, len(windows) // chunks)
        sets["debian"] = [model.wrap(np.asarray(w, dtype=np.int64)) for w in windows[::step]][
            :chunks
        ]
    return sets


def embed(
    path: Path, inputs: list[np.ndarray], pad_id: int, repeat: int = 1
) -> tuple[np.ndarray, float]:
    """The vectors of `inputs` by the model at `path` on one thread, and its seconds: CPU time
    of the thread that runs the model (onnxruntime runs it in the caller with one thread), the
    least of `repeat` runs, so that other work on the machine counts as little as it can."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    batches = _batches(inputs, pad_id)
    session.run([OUTPUT], batches[0])  # first calls build kernels: not the model's speed
    order = sorted(range(len(inputs)), key=lambda i: len(inputs[i]))  # as _batches sorts
    seconds = np.inf
    for _ in range(repeat):
        started = time.thread_time()
        out = np.concatenate([session.run([OUTPUT], b)[0] for b in batches])
        seconds = min(seconds, time.thread_time() - started)
    vectors = np.empty_like(out)
    vectors[order] = out
    return vectors, seconds


def batch_dependence(path: Path, inputs: list[np.ndarray], pad_id: int) -> float:
    """The least cosine between an input's vector embedded alone and in one batch with all the
    others: 1.0 for a model whose vectors do not depend on their batch."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    alone = np.concatenate([session.run([OUTPUT], graph_inputs([x], pad_id))[0] for x in inputs])
    together = session.run([OUTPUT], graph_inputs(inputs, pad_id))[0]
    return float(cosines(alone, together).min())


def cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def dynamic_int8(source: Path, target: Path) -> None:
    """What onnx-int8 was: the weight MatMuls quantized dynamically, weights per channel."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        str(source),
        str(target),
        op_types_to_quantize=["MatMul"],
        per_channel=True,
        weight_type=QuantType.QInt8,
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--chunks", type=int, default=128, help="held-out chunks per kind")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs of each (the least)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import torch

    torch.set_num_threads(1)
    spec = provider_spec("onnx", "all-MiniLM-L6-v2")
    model = OnnxModel(spec, "cpu")
    fp32 = exported_model(Path(spec.location), read_pipeline(Path(spec.location)))
    sets = held_out(model, args.chunks)
    with tempfile.TemporaryDirectory() as tmp:
        variants = {"fp32": fp32, "dynamic int8": Path(tmp) / "dynamic.onnx"}
        dynamic_int8(fp32, variants["dynamic int8"])
        calibrate, score = model._int8_sample()
        # As exported; then, if it kept MatMuls in fp32, with none kept, to show what they buy.
        for name, most in (("static int8 (onnx-int8)", onnx_quantize.MOST_KEPT), ("none kept", 0)):
            target = Path(tmp) / str(most) / "model.onnx"
            target.parent.mkdir()
            started = time.process_time()
            report = onnx_quantize.quantize_int8(fp32, target, calibrate, score, OUTPUT, most)
            print(
                f"{name}: quantized in {time.process_time() - started:.0f} s of CPU (this "
                f"process's threads), kept in fp32: {report.kept_fp32 or 'none'}, min cosine "
                f"{report.min_cosine} on the sample"
            )
            variants[name] = target
            if not report.kept_fp32:
                break
        print(f"\n{'':26}" + "".join(f"{k} ({len(v)})".rjust(42) for k, v in sets.items()))
        reference = {k: embed(fp32, v, model._pad_id)[0] for k, v in sets.items()}
        mixed = sets["pydoc"][:16] + sets["queries"][:16]
        for name, path in variants.items():
            cells = []
            for kind, inputs in sets.items():
                vectors, seconds = embed(path, inputs, model._pad_id, args.repeat)
                cos = cosines(vectors, reference[kind])
                cells.append(f"{seconds:6.1f} s  min {cos.min():.4f}  mean {cos.mean():.4f}")
            print(f"{name:26}" + "".join(c.rjust(42) for c in cells))
        print("\nan input alone against in one batch of 16 chunks and 16 queries, least cosine:")
        for name, path in variants.items():
            print(f"{name:26}{batch_dependence(path, mixed, model._pad_id):.5f}")


if __name__ == "__main__":
    main()
