"""What a tenant asks for: a job spec, validated field by field (pydantic)."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Annotated, Any, Literal
from urllib.parse import urlsplit

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from embedscale.engine.chunking.chunker import ChunkSettings
from embedscale.engine.errors import ChunkingError, ModelError, TableError
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.limits import model_limits
from embedscale.engine.models.registry import (
    DEFAULT_MODEL,
    DEFAULT_PROVIDER,
    ModelSpec,
    provider_spec,
    registered_name,
)
from embedscale.engine.sink.lance_sink import TABLE_NAME_PATTERN, validate_table_name
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.store.records import shown_spec
from embedscale.jobs.textcheck import NameStr, Utf8Json, Utf8Str

Priority = Literal["low", "normal", "high", "critical"]
Mode = Literal["append", "overwrite", "upsert", "sync"]
# engine.models.registry.PROVIDERS
Provider = Literal["sentence-transformers", "onnx", "onnx-int8", "openai"]
# engine.models.cpu_precision.PRECISIONS
Precision = Literal["auto", "fp32", "bf16", "int8"]
MAX_INLINE_TEXTS = 10_000


class JobSpec(BaseModel):
    """One embedding job: a server-side source path, or inline texts, into a table."""

    model_config = ConfigDict(extra="forbid")

    # The pattern is published for clients; the validator below enforces it with a message
    # that says what a name may hold.
    # Every string is UTF-8 text (jobs.textcheck); names and paths hold no NUL either. Numbers
    # are strict: `true` or "10" is no chunk size.
    table: NameStr = Field(
        description="the tenant's LanceDB table to write",
        json_schema_extra={"pattern": TABLE_NAME_PATTERN, "maxLength": 128},
    )
    source: NameStr | None = Field(
        None,
        max_length=4096,
        description=(
            "directory (recursive), file or glob of documents, where the job runs (a server's "
            "own paths), or an object-store URI such as s3://bucket/docs/"
        ),
    )
    texts: list[Utf8Str] | None = Field(
        None, max_length=MAX_INLINE_TEXTS, description="inline documents, for small jobs"
    )
    ids: list[Utf8Str] | None = Field(None, description="ids of the inline texts")
    metadata: list[Annotated[dict[str, Any], Utf8Json] | None] | None = Field(
        None, description="metadata of each inline text"
    )
    model: NameStr = Field(
        DEFAULT_MODEL,
        min_length=1,
        max_length=512,
        description=(
            "registered name, sentence-transformers hub id or local folder (a service offers its "
            "default and the models its operator allows)"
        ),
    )
    provider: Provider = Field(
        DEFAULT_PROVIDER,
        description=(
            "where vectors come from: sentence-transformers (torch on the cluster's workers), onnx "
            "(the same model exported to ONNX, run by onnxruntime on the workers; its vectors may "
            "share a table with sentence-transformers'), onnx-int8 (that export quantized: faster "
            "on CPUs, cosine to fp32 0.98 at worst, its own tables) or openai (an "
            "OpenAI-compatible endpoint at provider_url, key from the workers' "
            "EMBEDSCALE_PROVIDER_API_KEY)"
        ),
    )
    provider_url: NameStr | None = Field(
        None,
        max_length=2048,
        validate_default=True,
        description="provider openai: the endpoint's base URL, e.g. https://api.openai.com/v1",
    )
    tokenizer: NameStr | None = Field(
        None,
        min_length=1,
        max_length=512,
        description=(
            "provider openai: the model whose tokenizer cuts chunks (default: the model itself, "
            "when known locally); the job record names the one used"
        ),
    )
    precision: Precision = Field(
        "auto",
        description=(
            "the number format the model runs in: auto (on a CPU worker, the fastest of fp32 "
            "and bf16 whose vectors keep a minimum cosine of 0.999 to fp32 on a calibration "
            "sample, measured on the worker's first load; on a GPU, fp16), fp32, bf16 (their "
            "vectors share a table), or int8 (with provider onnx-int8 only: its own tables)"
        ),
    )
    chunk_tokens: int | None = Field(
        None,
        gt=0,
        le=1_000_000,
        strict=True,
        description="tokens per chunk, the model's special tokens included (default: the "
        "model's maximum input)",
    )
    overlap_tokens: int | None = Field(
        None,
        ge=0,
        le=1_000_000,
        strict=True,
        description="tokens shared by neighbouring chunks (default: 32, at most a quarter of a "
        "chunk)",
    )
    mode: Mode = Field(
        "append",
        description=(
            "append; overwrite (the table's rows are replaced by the job's); upsert (changed "
            "documents replace their rows, unchanged ones are skipped); sync (upsert, and "
            "documents gone from the source are deleted)"
        ),
    )
    allow_empty: bool = Field(
        False,
        strict=True,
        description=(
            "sync only: a source that lists no documents deletes every row (refused without "
            "this, as an unmounted folder or an empty prefix looks the same)"
        ),
    )
    priority: Priority = Field(
        "normal",
        description="low, normal, high or critical: higher starts first, among the tenant's "
        "queued jobs and on the workers",
    )
    text_field: NameStr = Field(
        "text",
        min_length=1,
        max_length=256,
        description="the field that holds the text, in json, jsonl, csv and parquet documents",
    )
    id_field: NameStr = Field(
        "id",
        min_length=1,
        max_length=256,
        description="the field that holds a record's id, in json, jsonl, csv and parquet documents",
    )
    labels: dict[Utf8Str, Utf8Str] = Field(
        default_factory=dict, description="free-form job metadata"
    )

    @field_validator("table")
    @classmethod
    def _table_name(cls, value: str) -> str:
        try:
            return validate_table_name(value)
        except TableError as exc:
            raise ValueError(str(exc)) from None

    @field_validator("provider_url")
    @classmethod
    def _provider_url(cls, value: str | None, info) -> str | None:
        provider = info.data.get("provider")
        if value is None:
            if provider == "openai":
                raise ValueError(
                    "provider 'openai' needs provider_url, the endpoint's base URL "
                    "(e.g. https://api.openai.com/v1)"
                )
            return None
        if provider != "openai":
            raise ValueError(f"provider_url goes with provider 'openai', not {provider!r}")
        return check_provider_url(value)

    @model_validator(mode="after")
    def _consistent(self) -> JobSpec:
        if self.tokenizer is not None and self.provider != "openai":
            raise ValueError(
                "'tokenizer' goes with provider 'openai' (the other providers "
                "chunk with their model's own tokenizer)"
            )
        if self.precision == "int8" and self.provider != "onnx-int8":
            raise ValueError(
                "precision 'int8' runs as provider onnx-int8 (minimum cosine to fp32 0.98, "
                "under the 0.999 guard: its own tables): give provider onnx-int8, or precision "
                "auto, fp32 or bf16"
            )
        if self.precision in ("fp32", "bf16") and self.provider != "sentence-transformers":
            raise ValueError(
                f"precision {self.precision!r} goes with provider sentence-transformers (the "
                f"{self.provider} provider runs in its own precision): use precision auto"
            )
        if (self.source is None) == (self.texts is None):
            raise ValueError("give exactly one of 'source' (a server-side path) or 'texts'")
        if self.texts is not None:
            if not self.texts:
                raise ValueError("'texts' is empty: nothing to embed")
            for name in ("ids", "metadata"):
                given = getattr(self, name)
                if given is not None and len(given) != len(self.texts):
                    raise ValueError(
                        f"'{name}' has {len(given)} entries but 'texts' has {len(self.texts)}"
                    )
            if self.ids is not None and len(set(self.ids)) != len(self.ids):
                raise ValueError("'ids' are not unique")
        elif self.ids is not None or self.metadata is not None:
            raise ValueError("'ids' and 'metadata' go with 'texts', not with 'source'")
        if (
            self.chunk_tokens is not None
            and self.overlap_tokens is not None
            and self.overlap_tokens >= self.chunk_tokens
        ):
            raise ValueError(
                f"overlap_tokens={self.overlap_tokens} must be less than "
                f"chunk_tokens={self.chunk_tokens}"
            )
        return self


def check_source_allowed(source: str, allowed_roots: list[str] | None) -> str:
    """`source` resolved, if it lies under one of `allowed_roots` (None: any path, as for the
    CLI; an empty list: none at all). Raises InvalidFieldError naming the field."""
    if allowed_roots is None:
        return source
    if not allowed_roots:
        raise InvalidFieldError(
            "source",
            "this service accepts no source paths (started "
            "without --allow-root); send 'texts' instead",
        )
    if "://" in source:
        return _check_uri_allowed(source, allowed_roots)
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


def _check_uri_allowed(source: str, allowed_roots: list[str]) -> str:
    """An object-store source (s3://bucket/docs/, globs too) under an allowed URI prefix."""
    from embedscale.engine.sources.remote_files import RemoteRefused, check_allowed, glob_root

    try:
        check_allowed(source, None)  # no '.' or '..' segment anywhere, globs' tails too
        check_allowed(glob_root(source), tuple(r.rstrip("/") for r in allowed_roots))
    except RemoteRefused as exc:
        raise InvalidFieldError("source", f"source {source!r}: {exc.reason}") from None
    return source


# One text for every refused model, whatever the name: a tenant learns nothing of the server's
# folders from it (a name is never looked up on disk before it is found allowed).
MODEL_NOT_ALLOWED = (
    "model not offered by this service: use one of {names} (the operator "
    "offers others with `embedscale serve --allow-model NAME`)"
)


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


def check_provider_url(url: str) -> str:
    """`url` if it can be an embeddings endpoint's base URL: http(s), a host, no credentials
    (a key belongs in EMBEDSCALE_PROVIDER_API_KEY, never in a job record)."""
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 -- raises on a port out of range or not a number
    except ValueError as exc:
        raise ValueError(f"provider_url {url!r} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"provider_url {url!r} is not an http(s) URL with a host")
    if parts.username or parts.password:
        raise ValueError(
            "provider_url carries credentials; put the key in the workers' "
            "EMBEDSCALE_PROVIDER_API_KEY instead"
        )
    return url


def model_spec(spec: JobSpec) -> ModelSpec:
    """The ModelSpec a job's provider, model, endpoint and tokenizer name (ModelError if it
    cannot be resolved)."""
    resolved = provider_spec(spec.provider, spec.model, spec.provider_url, spec.tokenizer)
    if spec.provider == "sentence-transformers" and spec.precision != "auto":
        return dataclasses.replace(resolved, precision=spec.precision)
    return resolved


def as_recorded(spec: JobSpec) -> JobSpec:
    """The spec as the job record keeps it: an HTTP provider's job names the tokenizer its
    chunks are cut with, also when it was the model's own by default."""
    if spec.provider == "openai" and spec.tokenizer is None:
        return spec.model_copy(update={"tokenizer": spec.model})
    return spec


def recorded_spec(spec: JobSpec) -> dict[str, Any]:
    """The spec as a job's record keeps it (after as_recorded): inline texts as their count,
    without their ids and metadata, as listings show them. The texts are stored once, in the
    job's partitions, each with its id and metadata: the partitions are what runs (and what a
    resume reads), and the texts leave with them when the job's retention ends
    (jobs/store/retention.py). Before, a job of 10,000 texts kept them twice in DuckDB, and once
    more in every record of it read into memory."""
    return shown_spec(spec.model_dump(mode="json"))


def spec_to_run(recorded: dict[str, Any]) -> JobSpec:
    """A job record's spec, checked again as a JobSpec, for running its job. A record keeps
    its inline texts as their count (recorded_spec): the job reads them from its partitions,
    never from its spec, so the count stands in the spec as one empty text. A record written
    before that keeps its texts, and is read as it is."""
    if isinstance(recorded.get("texts"), int):
        recorded = {**recorded, "texts": [""]}
    return JobSpec.model_validate(recorded)


def check_provider(spec: JobSpec, allowed_urls: list[str] | None) -> None:
    """An HTTP provider's endpoint must be one the operator lists (`serve
    --allow-provider-url`): the workers send it their EMBEDSCALE_PROVIDER_API_KEY, which a
    tenant must not be able to send anywhere else. None: any (the CLI's trusted user)."""
    if spec.provider != "openai" or allowed_urls is None:
        return
    if (spec.provider_url or "").rstrip("/") not in {u.rstrip("/") for u in allowed_urls}:
        raise InvalidFieldError(
            "provider_url",
            "endpoint not offered by this service (the "
            "operator offers one with `embedscale serve "
            "--allow-provider-url URL`)",
        )


def check_model_allowed_as(name: str, allowed: list[str] | None, field: str) -> str:
    """check_model_allowed, the refusal naming `field`."""
    try:
        return check_model_allowed(name, allowed)
    except InvalidFieldError as exc:
        raise InvalidFieldError(field, str(exc)) from None


def check_model(spec: JobSpec, allowed: list[str] | None) -> ModelInfo | None:
    """The spec's model allowed (check_model_allowed) and its chunk sizes within the model's
    bounds, when the model's files tell them without loading it (engine.models.limits); the
    rule is ChunkSettings.for_model's, which the job applies again when it starts. Returns
    those limits (None where only loading the model tells them), for the quota estimate."""
    field = "tokenizer" if spec.tokenizer is not None else "model"
    if spec.provider == "openai":
        # The endpoint's model is loaded nowhere here; its tokenizer is, on the workers.
        check_model_allowed_as(spec.tokenizer or spec.model, allowed, field)
    else:
        check_model_allowed(spec.model, allowed)
    try:
        resolved = model_spec(spec)
        info = model_limits(resolved.tokenizer or resolved)
    except ModelError as exc:  # only where any name is allowed: the CLI's local folders
        raise InvalidFieldError(field, str(exc)) from None
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
