"""What a tenant asks for: a job spec, validated field by field (pydantic)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.chunking import ChunkSettings
from engine.errors import ChunkingError, ModelError, TableError
from engine.models.backend import ModelInfo
from engine.models.limits import model_limits
from engine.models.registry import DEFAULT_MODEL, registered_name, resolve_model
from engine.sink import TABLE_NAME_PATTERN, validate_table_name
from jobs.errors import InvalidFieldError
from jobs.textcheck import NameStr, Utf8Json, Utf8Str

Priority = Literal["low", "normal", "high", "critical"]
Mode = Literal["append", "overwrite", "upsert", "sync"]
MAX_INLINE_TEXTS = 10_000


class JobSpec(BaseModel):
    """One embedding job: a server-side source path, or inline texts, into a table."""

    model_config = ConfigDict(extra="forbid")

    # The pattern is published for clients; the validator below enforces it with a message
    # that says what a name may hold.
    # Every string is UTF-8 text (jobs.textcheck); names and paths hold no NUL either. Numbers
    # are strict: `true` or "10" is no chunk size.
    table: NameStr = Field(description="the tenant's LanceDB table to write",
                           json_schema_extra={"pattern": TABLE_NAME_PATTERN, "maxLength": 128})
    source: NameStr | None = Field(None, max_length=4096,
                                   description="directory, file or glob on the server")
    texts: list[Utf8Str] | None = Field(None, max_length=MAX_INLINE_TEXTS,
                                        description="inline documents, for small jobs")
    ids: list[Utf8Str] | None = Field(None, description="ids of the inline texts")
    metadata: list[Annotated[dict[str, Any], Utf8Json] | None] | None = Field(
        None, description="metadata of each inline text")
    model: NameStr = Field(DEFAULT_MODEL, min_length=1, max_length=512,
                           description="the default model, or one the service allows")
    chunk_tokens: int | None = Field(None, gt=0, le=1_000_000, strict=True)
    overlap_tokens: int | None = Field(None, ge=0, le=1_000_000, strict=True)
    mode: Mode = Field("append", description=(
        "append; overwrite (the table's rows are replaced by the job's); upsert (changed "
        "documents replace their rows, unchanged ones are skipped); sync (upsert, and "
        "documents gone from the source are deleted)"))
    allow_empty: bool = Field(False, strict=True, description=(
        "sync only: a source that lists no documents deletes every row (refused without "
        "this, as an unmounted folder or an empty prefix looks the same)"))
    priority: Priority = "normal"
    text_field: NameStr = Field("text", min_length=1, max_length=256)
    id_field: NameStr = Field("id", min_length=1, max_length=256)
    labels: dict[Utf8Str, Utf8Str] = Field(default_factory=dict,
                                           description="free-form job metadata")

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        try:
            return validate_table_name(value)
        except TableError as exc:
            raise ValueError(str(exc)) from None

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if (self.source is None) == (self.texts is None):
            raise ValueError("give exactly one of 'source' (a server-side path) or 'texts'")
        if self.texts is not None:
            if not self.texts:
                raise ValueError("'texts' is empty: nothing to embed")
            for name in ("ids", "metadata"):
                given = getattr(self, name)
                if given is not None and len(given) != len(self.texts):
                    raise ValueError(f"'{name}' has {len(given)} entries but 'texts' has "
                                     f"{len(self.texts)}")
            if self.ids is not None and len(set(self.ids)) != len(self.ids):
                raise ValueError("'ids' are not unique")
        elif self.ids is not None or self.metadata is not None:
            raise ValueError("'ids' and 'metadata' go with 'texts', not with 'source'")
        if (self.chunk_tokens is not None and self.overlap_tokens is not None
                and self.overlap_tokens >= self.chunk_tokens):
            raise ValueError(f"overlap_tokens={self.overlap_tokens} must be less than "
                             f"chunk_tokens={self.chunk_tokens}")
        return self


def check_source_allowed(source: str, allowed_roots: list[str] | None) -> str:
    """`source` resolved, if it lies under one of `allowed_roots` (None: any path, as for the
    CLI; an empty list: none at all). Raises InvalidFieldError naming the field."""
    if allowed_roots is None:
        return source
    if not allowed_roots:
        raise InvalidFieldError("source", "this service accepts no source paths (started "
                                          "without --allow-root); send 'texts' instead")
    # Resolve links and '..' on the part before any glob character.
    plain = []
    for part in Path(source).parts:
        if any(ch in part for ch in "*?["):
            break
        plain.append(part)
    base = Path(os.path.realpath(os.path.join(*plain))) if plain else Path("/")
    for root in allowed_roots:
        root_path = Path(os.path.realpath(root))
        if base == root_path or root_path in base.parents:
            if ".." in Path(source).parts:
                break
            return source
    raise InvalidFieldError("source", f"source {source!r} is outside the allowed roots")


# One text for every refused model, whatever the name: a tenant learns nothing of the server's
# folders from it (a name is never looked up on disk before it is found allowed).
MODEL_NOT_ALLOWED = ("model not offered by this service: use one of {names} (the operator "
                     "offers others with `embedscale serve --allow-model NAME`)")


def check_model_allowed(name: str, allowed: list[str] | None) -> str:
    """`name` if the service may load it: anything when `allowed` is None (the CLI's trusted
    user); else the default model (under any alias) or a name on the operator's list (a
    registered alias matches its model). Raises InvalidFieldError("model") with one fixed text."""
    if allowed is None:
        return name
    offered = {DEFAULT_MODEL} | {registered_name(a) or a for a in allowed}
    if (registered_name(name) or name) in offered:
        return name
    raise InvalidFieldError("model", MODEL_NOT_ALLOWED.format(names=", ".join(sorted(offered))))


def check_model(spec: JobSpec, allowed: list[str] | None) -> ModelInfo | None:
    """The spec's model allowed (check_model_allowed) and its chunk sizes within the model's
    bounds, when the model's files tell them without loading it (engine.models.limits); the
    rule is ChunkSettings.for_model's, which the job applies again when it starts. Returns
    those limits (None where only loading the model tells them), for the quota estimate."""
    check_model_allowed(spec.model, allowed)
    try:
        info = model_limits(resolve_model(spec.model))
    except ModelError as exc:  # only where any name is allowed: the CLI's local folders
        raise InvalidFieldError("model", str(exc)) from None
    if info is None:
        return None
    # The size alone first (with the default overlap, always valid), so a failure with the
    # given overlap is the overlap's.
    for field, overlap in (("chunk_tokens", None), ("overlap_tokens", spec.overlap_tokens)):
        try:
            ChunkSettings.for_model(info, spec.chunk_tokens, overlap)
        except ChunkingError as exc:
            raise InvalidFieldError(field, str(exc)) from None
    return info
