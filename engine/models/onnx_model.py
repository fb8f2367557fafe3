"""The ONNX Runtime providers: a sentence-transformers model exported once per host
(engine.models.onnx_export) and run by onnxruntime, fed with the same pre-tokenized ids as the
torch backend (one tokenization). "onnx" (fp32) makes the torch model's vectors (cosine >=
0.9999 on every row, tests/test_onnx_provider.py), so its rows may share a table with them.
"onnx-int8" (opt-in) is the export with its weight MatMuls statically quantized to int8 on the
shipped calibration sample (engine.models.onnx_quantize): 1.7-2x faster than fp32 on this
project's CPUs, cosine to fp32 0.993 on average and 0.982-0.988 at worst over 128 held-out
chunks or queries (benchmarks/bench_int8.py), so its vectors are their own space, kept out of
fp32 tables.

Speed, measured on this project's 2-core CPU machine (AVX-512), all-MiniLM-L6-v2, one thread,
64 inputs of 256 tokens: onnxruntime 5.3 s, sentence-transformers' torch model (SDPA attention)
5.1 s, the same torch model with eager attention 7.9 s. fp32 ONNX is no faster than torch here;
its use is a torch-free, portable runtime with the same vectors. ORT's offline transformer
optimizer fuses every attention layer but gains nothing over ORT_ENABLE_ALL at session start,
so the session's own optimizer is all that is used.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
from pathlib import Path

import numpy as np

from embedscale.engine.errors import ModelError
from embedscale.engine.models.devices import default_device
from embedscale.engine.models.info import EmbeddingModel, ModelInfo, hub_offline, pad_batch
from embedscale.engine.models.onnx_export import INPUTS, OUTPUT, Sample, exported_model
from embedscale.engine.models.onnx_pipeline import read_pipeline
from embedscale.engine.models.onnx_quantize import sample_texts, split_sample
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.models.sentence_transformer import SentenceTransformerModel
from embedscale.engine.models.tokenization import chunking_tokenizer

log = logging.getLogger(__name__)
CUDA_PROVIDER = "CUDAExecutionProvider"


def load_onnx_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """The ONNX instance of `spec` on `device`; on a CUDA device that this onnxruntime cannot
    use, the torch model instead (same vectors), said in one log line. The int8 variant runs
    on the CPU (its vectors are its own: torch cannot stand in for it)."""
    device = device or default_device()
    if spec.backend == "onnx-int8" and device.startswith("cuda"):
        log.warning(
            "provider onnx-int8: model '%s' runs on the CPU, not on %s (int8 is a CPU "
            "variant; use provider onnx or sentence-transformers on GPUs)",
            spec.name,
            device,
        )
        device = "cpu"
    if device.startswith("cuda"):
        import onnxruntime

        if CUDA_PROVIDER not in onnxruntime.get_available_providers():
            log.warning(
                "provider onnx: onnxruntime here has no %s (install onnxruntime-gpu); "
                "model '%s' runs on torch on %s instead, with the same vectors",
                CUDA_PROVIDER,
                spec.name,
                device,
            )
            return SentenceTransformerModel(
                dataclasses.replace(spec, backend="sentence-transformers"), device
            )
    return OnnxModel(spec, device)


class OnnxModel:
    """A sentence-transformers model's ONNX export in an onnxruntime session."""

    def __init__(self, spec: ModelSpec, device: str | None = None) -> None:
        import onnxruntime
        from transformers import AutoTokenizer

        self.device = device or default_device()
        folder = _model_folder(spec)
        pipeline = read_pipeline(folder)
        transformer = pipeline.transformer_folder(folder)
        with hub_offline(True):
            hf_tokenizer = AutoTokenizer.from_pretrained(str(transformer))
        chunking = chunking_tokenizer(hf_tokenizer, spec.name)  # as the torch backend's
        self.tokenizer = chunking.tokenizer
        self._prefix, self._suffix, self._pad_id = chunking.prefix, chunking.suffix, chunking.pad_id
        int8 = spec.backend == "onnx-int8"
        self.info = ModelInfo(
            name=spec.name,
            dimension=pipeline.dimension,
            max_tokens=pipeline.max_seq_length or _model_limit(transformer, hf_tokenizer),
            special_tokens=len(self._prefix) + len(self._suffix),
            provider=spec.backend,
            precision="int8" if int8 else "fp32",
        )
        path = exported_model(folder, pipeline, "int8" if int8 else "fp32", self._int8_sample)
        self._session = onnxruntime.InferenceSession(
            str(path), _session_options(), providers=_providers(self.device)
        )
        # For the process's model memory budget (engine.models.cache): the weights are the file.
        self.memory_bytes = path.stat().st_size

    def wrap(self, content_ids: np.ndarray) -> np.ndarray:
        """The model's input for one chunk: its special tokens around the content ids."""
        return np.concatenate([self._prefix, content_ids, self._suffix]).astype(np.int64)

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray:
        """Embed a batch of full inputs (already wrapped); returns float32 [len(batch), dim]."""
        out = self._session.run([OUTPUT], graph_inputs(batch, self._pad_id))[0]
        return np.asarray(out, dtype=np.float32)

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed short texts such as search queries (truncated to the model's limit)."""
        return self.embed_token_ids(self._inputs(texts))

    def _inputs(self, texts: list[str]) -> list[np.ndarray]:
        """Each text's full input, its content truncated to the model's limit."""
        return [self.wrap(ids) for ids in self._contents(texts)]

    def _contents(self, texts: list[str]) -> list[np.ndarray]:
        room = self.info.max_tokens - self.info.special_tokens
        return [
            np.asarray(e.ids[:room], dtype=np.int64)
            for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)
        ]

    def _int8_sample(self) -> Sample:
        """The int8 quantization's sample (engine.models.onnx_quantize), fed as jobs feed the
        model: full inputs of the model's own tokenizer, sorted by length, padded per batch."""
        calibrate, score = split_sample(self._contents(sample_texts()))
        return (
            _batches([self.wrap(c) for c in calibrate], self._pad_id),
            _batches([self.wrap(c) for c in score], self._pad_id),
        )


def graph_inputs(batch: list[np.ndarray], pad_id: int) -> dict[str, np.ndarray]:
    """The exported graph's inputs for a batch of full inputs: ids padded to the longest, and
    the attention mask (engine.models.info.pad_batch, as the torch path pads)."""
    return dict(zip(INPUTS, pad_batch(batch, pad_id)))


def _batches(inputs: list[np.ndarray], pad_id: int, size: int = 16) -> list[dict[str, np.ndarray]]:
    # Sorted by length, as engine.models.batching makes a job's batches: little padding.
    ordered = sorted(inputs, key=len)
    return [graph_inputs(ordered[i : i + size], pad_id) for i in range(0, len(ordered), size)]


def _model_folder(spec: ModelSpec) -> Path:
    """The model's files on this host: its folder, or a hub id's snapshot (downloaded once,
    as sentence-transformers would, where the hub is reachable)."""
    if os.path.isdir(spec.location):
        return Path(spec.location)
    try:
        from huggingface_hub import snapshot_download

        with hub_offline(spec.local):
            return Path(snapshot_download(spec.location))
    except Exception as exc:
        raise ModelError(
            f"cannot load model '{spec.name}' from {spec.location}: "
            f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        ) from None


def _model_limit(transformer: Path, hf_tokenizer) -> int:
    # sentence-transformers' rule when sentence_bert_config.json names no max_seq_length.
    config = json.loads((transformer / "config.json").read_text())
    limits = [config.get("max_position_embeddings"), hf_tokenizer.model_max_length]
    return int(min(v for v in limits if isinstance(v, int) and v > 0))


def _session_options():
    import onnxruntime
    import torch

    options = onnxruntime.SessionOptions()
    # As many threads as torch uses in this process: one in a Dask worker (its nanny sets
    # OMP_NUM_THREADS=1; the worker's task threads are its parallelism), so the workers of a
    # host do not oversubscribe its cores; the cores' count elsewhere.
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    options.inter_op_num_threads = 1  # one graph, run sequentially: no parallel branches
    options.execution_mode = onnxruntime.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = onnxruntime.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.log_severity_level = 3  # errors only: its warnings name internal graph nodes
    return options


def _providers(device: str) -> list:
    if not device.startswith("cuda"):
        return ["CPUExecutionProvider"]
    index = int(device.split(":", 1)[1]) if ":" in device else 0
    return [(CUDA_PROVIDER, {"device_id": index}), "CPUExecutionProvider"]
