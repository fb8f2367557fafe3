"""The sentence-transformers provider: a model on torch that embeds token ids made by its own
tokenizer, so the ids made while chunking feed the model directly: each text is tokenized
exactly once."""

from __future__ import annotations

import logging

import numpy as np

from embedscale.engine.errors import ModelError
from embedscale.engine.models import cpu_precision
from embedscale.engine.models.devices import default_device
from embedscale.engine.models.info import ModelInfo, hub_offline, pad_batch
from embedscale.engine.models.memory import device_token_budget, model_bytes
from embedscale.engine.models.precision import apply_tf32, choose_dtype, torch_dtype
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.models.tokenization import chunking_tokenizer

log = logging.getLogger(__name__)


class SentenceTransformerModel:
    """A sentence-transformers model on torch, fed with pre-tokenized, padded id tensors, in
    the dtype engine.models.precision chooses for its device (`dtype` overrides it)."""

    def __init__(
        self, spec: ModelSpec, device: str | None = None, dtype: str | None = None
    ) -> None:
        from sentence_transformers import SentenceTransformer

        self.device = device or default_device()
        _quiet_transformers()
        try:
            with hub_offline(spec.local):
                self._st = SentenceTransformer(spec.location, device=self.device)
        except Exception as exc:
            raise ModelError(
                f"cannot load model '{spec.name}' from {spec.location}: "
                f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            ) from None
        self._st.eval()
        self._cuda = self.device.split(":")[0] == "cuda"
        self._autocast = False  # fp32 weights under torch.autocast(bfloat16): a CPU bf16 form
        # On CUDA a job's precision maps onto the device's dtype logic (auto: its default).
        requested = dtype or (_CUDA_DTYPES.get(spec.precision) if self._cuda else None)
        self.dtype = choose_dtype(
            self.device, requested, checkpoint_dtype=_checkpoint_dtype(self._st)
        )
        self._st.to(torch_dtype(self.dtype))  # a float16-stored checkpoint runs in fp32 on CPU
        apply_tf32(self.device)
        choice = cpu_precision.Choice(_PRECISION_OF[self.dtype])
        if not self._cuda and self.dtype == "float32" and (dtype or "auto") == "auto":
            choice = self._choose_cpu_form(spec)
        hf_tokenizer = self._st.tokenizer
        chunking = chunking_tokenizer(hf_tokenizer, spec.name)
        self.tokenizer = chunking.tokenizer
        self._prefix, self._suffix, self._pad_id = chunking.prefix, chunking.suffix, chunking.pad_id
        self._wants_token_types = "token_type_ids" in hf_tokenizer.model_input_names
        # Renamed in sentence-transformers 6; the old name still exists with a warning.
        dim_of = getattr(self._st, "get_embedding_dimension", None)
        dim = dim_of() if dim_of else self._st.get_sentence_embedding_dimension()
        max_seq_length = self._st.max_seq_length
        if dim is None or max_seq_length is None:  # sentence-transformers: "not known"
            unknown = "embedding dimension" if dim is None else "input limit (max_seq_length)"
            raise ModelError(f"model '{spec.name}' does not say its {unknown}")
        self.info = ModelInfo(
            name=spec.name,
            dimension=int(dim),
            max_tokens=int(max_seq_length),
            special_tokens=len(self._prefix) + len(self._suffix),
            dtype=self.dtype,
            precision=choice.candidate,
            precision_cosine=choice.min_cosine,
            precision_speedup=choice.speedup,
        )
        # Padded tokens per forward pass: on a GPU, sized from its free memory and the model's
        # shape (engine.models.memory); None leaves the CPU default of engine.models.batching.
        self.token_budget = (
            device_token_budget(self._st, self.device, self.info.max_tokens, self.dtype)
            if self._cuda
            else None
        )
        self.memory_bytes = model_bytes(self._st)
        log.info(
            "model %s loaded on %s in %s (%d MB; token budget %s)",
            spec.name,
            self.device,
            self.dtype,
            self.memory_bytes >> 20,
            self.token_budget or "the device default",
        )

    def wrap(self, content_ids: np.ndarray) -> np.ndarray:
        """The model's input for one chunk: its special tokens around the content ids."""
        return np.concatenate([self._prefix, content_ids, self._suffix]).astype(np.int64)

    def embed_token_ids(self, batch: list[np.ndarray]) -> np.ndarray:
        """Embed a batch of full inputs (already wrapped); returns float32 [len(batch), dim]."""
        return self.forward(self.prepare(batch))

    def prepare(self, batch: list[np.ndarray]) -> dict:
        """The batch padded and on the model's device: the CPU half of a forward pass, which
        engine.models.batching runs for the next batch while the device computes this one. On CUDA
        the ids go through pinned host memory with a non-blocking copy."""
        import torch

        input_ids, attention = pad_batch(batch, self._pad_id)
        features = {
            "input_ids": torch.from_numpy(input_ids),
            "attention_mask": torch.from_numpy(attention),
        }
        if self._cuda:
            features = {
                k: v.pin_memory().to(self.device, non_blocking=True) for k, v in features.items()
            }
        if self._wants_token_types:
            features["token_type_ids"] = torch.zeros_like(features["input_ids"])
        return features

    def forward(self, features: dict) -> np.ndarray:
        """Run a prepared batch; float32 [rows, dim] on the host."""
        import torch

        with torch.inference_mode(), self._bf16_autocast():
            out = self._st.forward(features)["sentence_embedding"]
        return out.float().cpu().numpy()

    def embed_texts(self, texts: list[str]) -> np.ndarray:
        """Embed short texts such as search queries (truncated to the model's limit)."""
        with self._bf16_autocast():
            return _encode(self._st, texts)

    def _bf16_autocast(self):
        import torch

        return torch.autocast("cpu", dtype=torch.bfloat16, enabled=self._autocast)

    def _choose_cpu_form(self, spec: ModelSpec) -> cpu_precision.Choice:
        """The form the model runs in on this CPU for the job's precision (engine.models.
        cpu_precision: measured on the calibration sample, cached per host), applied to it."""
        import copy

        import torch

        requested = spec.precision
        bf16 = cpu_precision.cpu_bf16_supported()
        # The guard, read once, where a lower form could be kept (fp32 and CPUs without bf16
        # never need it, so a bad $EMBEDSCALE_PRECISION_MIN_COSINE does not stop them).
        guard = cpu_precision.min_cosine_guard() if bf16 and requested != "fp32" else None
        candidates = cpu_precision.candidates_for(requested, bf16, guard)
        if requested in ("auto", "bf16") and not bf16:
            # A warning where bf16 was asked for; auto's fp32 on such a CPU is what it is for,
            # and `run` and `search` would otherwise print it on every call there.
            log.log(
                logging.WARNING if requested == "bf16" else logging.INFO,
                "model %s: this CPU has no bf16 kernels (torch.backends.mkldnn, avx512_bf16 or "
                "AMX): precision %s falls back to fp32",
                spec.name,
                requested,
            )
        if candidates == (cpu_precision.FP32,):
            return cpu_precision.Choice(cpu_precision.FP32)
        key = cpu_precision.host_key(spec.location, torch.get_num_threads(), bf16)
        measured = cpu_precision.cached(key)
        if measured is None or not set(candidates) <= set(measured):
            texts = cpu_precision.calibration_texts()
            bf16_copy = copy.deepcopy(self._st).to(torch.bfloat16)

            def run(candidate: str, sample: list[str]) -> np.ndarray:
                model = bf16_copy if candidate == cpu_precision.BF16_WEIGHTS else self._st
                with torch.autocast(
                    "cpu", dtype=torch.bfloat16, enabled=candidate == cpu_precision.BF16_AUTOCAST
                ):
                    return _encode(model, sample)

            measured = cpu_precision.measure(run, candidates, texts)
            del bf16_copy
            cpu_precision.store(key, measured)
        assert guard is not None  # a lower form was a candidate: the guard was read
        choice = cpu_precision.choose(requested, measured, guard)
        if choice.candidate == cpu_precision.BF16_WEIGHTS:
            self._st.to(torch.bfloat16)
        self._autocast = choice.candidate == cpu_precision.BF16_AUTOCAST
        if choice.precision == "bf16":
            self.dtype = "bfloat16"
        log.info(
            "model %s on cpu: precision %s -> %s (guard %s)",
            spec.name,
            requested,
            choice.describe(),
            guard,
        )
        return choice


# A job's precision as the CUDA dtype logic names it (auto: that logic's own default).
_CUDA_DTYPES = {"fp32": "float32", "bf16": "bfloat16"}
_PRECISION_OF = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}


def _encode(st, texts: list[str]) -> np.ndarray:
    """sentence-transformers' encode as float32 numpy, whatever dtype the model computes in."""
    out = st.encode(texts, batch_size=32, convert_to_tensor=True, show_progress_bar=False)
    return out.float().cpu().numpy()


def _checkpoint_dtype(st) -> str | None:
    """The dtype the checkpoint was saved in, as its transformers config says."""
    try:
        config = st[0].auto_model.config
    except Exception:
        return None
    dtype = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    return str(dtype).removeprefix("torch.") if dtype is not None else None


def _quiet_transformers() -> None:
    # transformers draws a progress bar per weight load: noise in every worker's log.
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()
