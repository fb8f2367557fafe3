"""Embedding models: a registry of names, backends that embed token ids, a per-worker cache."""
from engine.models.backend import EmbeddingModel, ModelInfo
from engine.models.cache import ModelPreloadPlugin, get_model
from engine.models.registry import DEFAULT_MODEL, ModelSpec, resolve_model

__all__ = [
    "DEFAULT_MODEL", "EmbeddingModel", "ModelInfo", "ModelPreloadPlugin", "ModelSpec",
    "get_model", "resolve_model",
]
