"""Loading a model with the provider its spec names. The providers' own dependencies (torch,
onnxruntime, httpx) are imported on their path only, so an HTTP provider never loads torch."""

from __future__ import annotations

from embedscale.engine.errors import ModelError
from embedscale.engine.models.info import EmbeddingModel
from embedscale.engine.models.registry import ModelSpec


def load_model(spec: ModelSpec, device: str | None = None) -> EmbeddingModel:
    """Load a model with the backend its spec names."""
    if spec.backend == "sentence-transformers":
        from embedscale.engine.models.sentence_transformer import SentenceTransformerModel

        return SentenceTransformerModel(spec, device)
    if spec.backend == "openai":
        from embedscale.engine.models.openai_http import OpenAIHTTPModel  # no torch on this path

        return OpenAIHTTPModel(spec)
    if spec.backend in ("onnx", "onnx-int8"):
        from embedscale.engine.models.onnx_model import (
            load_onnx_model,  # onnxruntime only on this path
        )

        return load_onnx_model(spec, device)
    raise ModelError(f"unknown model backend '{spec.backend}' for model '{spec.name}'")
