"""The Arrow schema of a chunk table (one row per chunk) and the metadata that pins its model."""

from __future__ import annotations

import pyarrow as pa

SCHEMA_VERSION = "1"
MODEL_KEY = b"embedscale.model"
DIMENSION_KEY = b"embedscale.dimension"
VERSION_KEY = b"embedscale.schema_version"
# Where the vectors come from: a table keeps one model and one provider family. Tables made
# before providers existed have no such key and count as sentence-transformers.
PROVIDER_KEY = b"embedscale.provider"
PROVIDER_URL_KEY = b"embedscale.provider_url"  # "openai": the endpoint search asks for queries
LEGACY_PROVIDER = "sentence-transformers"


def chunk_schema(
    model: str, dimension: int, provider: str = LEGACY_PROVIDER, provider_url: str | None = None
) -> pa.Schema:
    """Schema of the rows of a table embedded with `model` (vectors of `dimension` floats) by
    `provider` (at `provider_url`, for an HTTP provider)."""
    extra = {PROVIDER_URL_KEY: provider_url.encode()} if provider_url else {}
    return pa.schema(
        [
            pa.field("id", pa.string(), nullable=False),  # hash of doc_id, chunk_index, model
            pa.field("doc_id", pa.string(), nullable=False),
            pa.field("chunk_index", pa.int32(), nullable=False),
            pa.field("text", pa.large_string(), nullable=False),
            pa.field("vector", pa.list_(pa.float32(), dimension), nullable=False),
            pa.field("token_count", pa.int32(), nullable=False),  # model input, specials included
            pa.field("char_start", pa.int64(), nullable=False),
            pa.field("char_end", pa.int64(), nullable=False),
            pa.field("content_hash", pa.string(), nullable=False),  # of the whole document
            pa.field("source", pa.string(), nullable=False),
            pa.field("metadata", pa.string(), nullable=False),  # JSON text
            pa.field("job_id", pa.string(), nullable=False),
            pa.field("model", pa.string(), nullable=False),
            pa.field("created_at", pa.timestamp("us", tz="UTC"), nullable=False),
        ],
        metadata={
            MODEL_KEY: model.encode(),
            DIMENSION_KEY: str(dimension).encode(),
            VERSION_KEY: SCHEMA_VERSION.encode(),
            PROVIDER_KEY: provider.encode(),
            **extra,
        },
    )


def table_model(schema: pa.Schema) -> tuple[str | None, int | None]:
    """The model name and vector dimension a table was made for (None where unknown)."""
    meta = schema.metadata or {}
    model = meta.get(MODEL_KEY)
    vector = schema.field("vector").type if "vector" in schema.names else None
    dim = vector.list_size if isinstance(vector, pa.FixedSizeListType) else None
    return (model.decode() if model else None), dim


def table_provider(schema: pa.Schema) -> tuple[str, str | None]:
    """The provider a table's vectors come from, and its endpoint URL (None but for "openai");
    a table made before providers existed is sentence-transformers'."""
    meta = schema.metadata or {}
    provider = meta.get(PROVIDER_KEY)
    url = meta.get(PROVIDER_URL_KEY)
    return (provider.decode() if provider else LEGACY_PROVIDER), (url.decode() if url else None)
