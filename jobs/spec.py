"""What a tenant asks for: a job spec, validated field by field (pydantic)."""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from engine.errors import TableError
from engine.models.registry import DEFAULT_MODEL
from engine.sink import TABLE_NAME_PATTERN, validate_table_name
from jobs.errors import ValidationError

Priority = Literal["low", "normal", "high", "critical"]
Mode = Literal["append", "overwrite", "upsert"]
MAX_INLINE_TEXTS = 10_000


class JobSpec(BaseModel):
    """One embedding job: a server-side source path, or inline texts, into a table."""

    model_config = ConfigDict(extra="forbid")

    # The pattern is published for clients; the validator below enforces it with a message
    # that says what a name may hold.
    table: str = Field(description="the tenant's LanceDB table to write",
                       json_schema_extra={"pattern": TABLE_NAME_PATTERN, "maxLength": 128})
    source: str | None = Field(None, description="directory, file or glob on the server")
    texts: list[str] | None = Field(None, max_length=MAX_INLINE_TEXTS,
                                    description="inline documents, for small jobs")
    ids: list[str] | None = Field(None, description="ids of the inline texts")
    metadata: list[dict[str, Any] | None] | None = Field(
        None, description="metadata of each inline text")
    model: str = Field(DEFAULT_MODEL, min_length=1, max_length=512)
    chunk_tokens: int | None = Field(None, gt=0, le=1_000_000)
    overlap_tokens: int | None = Field(None, ge=0, le=1_000_000)
    mode: Mode = "append"
    priority: Priority = "normal"
    text_field: str = Field("text", min_length=1, max_length=256)
    id_field: str = Field("id", min_length=1, max_length=256)
    labels: dict[str, str] = Field(default_factory=dict, description="free-form job metadata")

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
    CLI; an empty list: none at all). Raises ValidationError naming the field."""
    if allowed_roots is None:
        return source
    if not allowed_roots:
        raise ValidationError("source", "this service accepts no source paths (started "
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
    raise ValidationError("source", f"source {source!r} is outside the allowed roots")
