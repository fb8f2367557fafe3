"""A sentence-transformers model's pipeline, read from its folder's files (modules.json).

The ONNX provider rebuilds that pipeline in one graph, so it must know every step: a
Transformer, one Pooling of a mode it reproduces, and optionally Normalize. Anything else (a
Dense layer, several pooling modes, weighted-mean or last-token pooling) is refused with a
ModelError naming the step, rather than exported into vectors that differ from the model's.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

from embedscale.engine.errors import ModelError

# sentence-transformers' pooling flags (its config files, old and new) -> our mode names.
_POOLING_FLAGS = {
    "pooling_mode_cls_token": "cls",
    "pooling_mode_mean_tokens": "mean",
    "pooling_mode_max_tokens": "max",
    "pooling_mode_mean_sqrt_len_tokens": "mean_sqrt_len",
    "pooling_mode_weightedmean_tokens": "weightedmean",
    "pooling_mode_lasttoken": "lasttoken",
}
_MODE_NAMES = {"mean_sqrt_len_tokens": "mean_sqrt_len"}
SUPPORTED_POOLING = ("mean", "cls", "max", "mean_sqrt_len")


@dataclass(frozen=True, slots=True)
class Pipeline:
    """What the exported graph computes after the transformer."""

    transformer_path: str  # the Transformer module's folder, relative to the model's ("" itself)
    pooling: str  # one of SUPPORTED_POOLING
    normalize: bool  # an L2 Normalize step follows the pooling
    dimension: int
    max_seq_length: int | None  # None: the tokenizer's and the model's own limit

    def transformer_folder(self, folder: Path) -> Path:
        return folder / self.transformer_path if self.transformer_path else folder

    def as_dict(self) -> dict:
        return asdict(self)


def read_pipeline(folder: Path) -> Pipeline:
    """The pipeline of the sentence-transformers model in `folder`; ModelError if the folder is
    not one, or if its pipeline has a step the ONNX provider does not reproduce."""
    try:
        modules = json.loads((folder / "modules.json").read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"{folder} has no readable modules.json ({exc}): the ONNX provider "
            "exports sentence-transformers models only; use provider "
            "sentence-transformers"
        ) from None
    kinds = [str(m.get("type", "")).rsplit(".", 1)[-1] for m in modules]
    if kinds not in (["Transformer", "Pooling"], ["Transformer", "Pooling", "Normalize"]):
        raise ModelError(
            f"model {folder} has the pipeline {' -> '.join(kinds)}; the ONNX "
            "provider reproduces Transformer -> Pooling [-> Normalize] only: use "
            "provider sentence-transformers for this model"
        )
    transformer_path = str(modules[0].get("path") or "")
    pooling_config = _read_json(folder / modules[1]["path"] / "config.json")
    pooling = _pooling_mode(pooling_config, folder)
    dimension = pooling_config.get(
        "word_embedding_dimension", pooling_config.get("embedding_dimension")
    )
    if not isinstance(dimension, int):
        raise ModelError(f"model {folder}: its pooling config names no embedding dimension")
    st_config = folder / transformer_path / "sentence_bert_config.json"
    max_seq = _read_json(st_config).get("max_seq_length") if st_config.is_file() else None
    return Pipeline(
        transformer_path,
        pooling,
        len(kinds) == 3,
        dimension,
        max_seq if isinstance(max_seq, int) else None,
    )


def _pooling_mode(config: dict, folder: Path) -> str:
    mode = config.get("pooling_mode")
    if mode is None:
        modes = [name for flag, name in _POOLING_FLAGS.items() if config.get(flag)]
    else:
        modes = [mode] if isinstance(mode, str) else list(mode)
    modes = [_MODE_NAMES.get(m, m) for m in modes]
    if len(modes) != 1 or modes[0] not in SUPPORTED_POOLING:
        raise ModelError(
            f"model {folder} pools with {' + '.join(modes) or 'no mode'}; the ONNX "
            f"provider reproduces one of {', '.join(SUPPORTED_POOLING)}: use "
            "provider sentence-transformers for this model"
        )
    return modes[0]


def _read_json(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise ModelError(f"cannot read {path}: {exc}") from None
    if not isinstance(data, dict):
        raise ModelError(f"{path} holds no JSON object")
    return data
