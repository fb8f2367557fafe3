"""Nearest-chunk search over a table, with the model and provider the table was embedded with.

Runs in the API or CLI process: a query model there stays on the CPU (the GPUs belong to the
workers, and one query needs none).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lancedb

from embedscale.engine.errors import TableError
from embedscale.engine.models.cache import get_model
from embedscale.engine.models.registry import (
    ONNX_PROVIDERS,
    ModelSpec,
    provider_spec,
    resolve_model,
)
from embedscale.engine.sink.schema import table_model, table_provider
from embedscale.engine.storage.locations import Location, StorageOptions
from embedscale.engine.tables.catalog import existing_table
from embedscale.engine.tables.filters import lance_filter

_COLUMNS = [
    "id",
    "doc_id",
    "chunk_index",
    "text",
    "source",
    "metadata",
    "char_start",
    "char_end",
    "_distance",
]


@dataclass(frozen=True, slots=True)
class Hit:
    """One chunk found by a search; `score` is the cosine similarity to the query."""

    doc_id: str
    chunk_index: int
    score: float
    text: str
    source: str
    metadata: dict[str, Any]
    char_start: int
    char_end: int
    id: str


def search(
    data_dir: str | Path | Location,
    name: str,
    query: str,
    k: int = 5,
    where: str | None = None,
    storage: StorageOptions | None = None,
) -> list[Hit]:
    """The `k` chunks nearest to `query`, best first, optionally filtered by a SQL `where`.
    `storage` reaches tables on an object store (default: the AWS variables)."""
    if k < 1:
        raise TableError(f"k={k}: ask for at least one result")
    # Checked whole before anything is loaded: Lance alone would drop what follows a condition.
    lance_where = lance_filter(where) if where else None
    table = existing_table(data_dir, name, storage)
    lance_table = lancedb.connect(
        str(table.root), storage_options=table.storage_options
    ).open_table(name)
    model_name, _ = table_model(lance_table.schema)
    if model_name is None:
        raise TableError(f"table '{name}' has no embedscale model metadata")
    vector = get_model(query_model(lance_table.schema, model_name), device="cpu").embed_texts(
        [query]
    )[0]
    # lancedb types search() as the base LanceQueryBuilder; a vector's query is a
    # LanceVectorQueryBuilder, which has distance_type.
    query_builder = (
        lance_table.search(vector)
        .distance_type("cosine")  # type: ignore[attr-defined]
        .limit(k)
        .select(_COLUMNS)
    )
    if lance_where:
        query_builder = query_builder.where(lance_where, prefilter=True)
    try:
        rows = query_builder.to_list()
    except Exception as exc:  # lancedb reports a bad filter as a generic error
        if not where:
            raise
        raise TableError(f"invalid filter {where!r}: {str(exc).splitlines()[0]}") from None
    return [
        Hit(
            r["doc_id"],
            r["chunk_index"],
            1.0 - float(r["_distance"]),
            r["text"],
            r["source"],
            json.loads(r["metadata"] or "{}"),
            r["char_start"],
            r["char_end"],
            r["id"],
        )
        for r in rows
    ]


def query_model(schema, model_name: str) -> ModelSpec:
    """The model that embeds queries for a table: its own model, from its own provider (an
    HTTP provider at the endpoint its metadata names, with the key of this process's
    EMBEDSCALE_PROVIDER_API_KEY)."""
    provider, url = table_provider(schema)
    if provider == "sentence-transformers":
        return resolve_model(model_name)
    if provider in ONNX_PROVIDERS:
        return provider_spec(provider, model_name)
    if provider == "openai" and url:
        return ModelSpec(model_name, url, "openai")
    raise TableError(
        f"table of model '{model_name}' names provider {provider!r}"
        f"{' without an endpoint URL' if provider == 'openai' else ''}: "
        "this embedscale cannot embed its queries"
    )
