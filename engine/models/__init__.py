"""Embedding models: a registry of names, backends that embed token ids, a per-worker cache."""

from embedscale.engine.models.cache import ModelPreloadPlugin, get_model
from embedscale.engine.models.info import EmbeddingModel, ModelInfo
from embedscale.engine.models.registry import DEFAULT_MODEL, ModelSpec, resolve_model

__all__ = [
    "DEFAULT_MODEL",
    "EmbeddingModel",
    "ModelInfo",
    "ModelPreloadPlugin",
    "ModelSpec",
    "get_model",
    "resolve_model",
]
