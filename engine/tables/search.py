"""Search over a table: by meaning (vector), by words (text, BM25), or both (hybrid), with the
model and provider the table was embedded with.

Runs in the API or CLI process: a query model there stays on the CPU (the GPUs belong to the
workers, and one query needs none).

- vector: the chunks nearest to the query's embedding by cosine distance. With a vector index
  (engine.tables.indexes) its `nprobes` partitions are searched and `refine` x k candidates
  re-ranked by their exact distance; without one every row is compared (exact).
  `Hit.score` is the cosine similarity (1 best, -1 worst).
- text: BM25 over the full-text index on `text`: chunks holding the query's words (lower-cased,
  stemmed, stop words left out; any word matches, rarer words weigh more). `Hit.score` is the
  BM25 score: >= 0, higher is better, comparable only within one query.
- hybrid: both, each asked for HYBRID_DEPTH x k candidates, fused by reciprocal rank
  (engine.tables.fusion). `Hit.score` is the fused score: the sum of 1/(60 + rank) over the two
  rankings, at most 2/61.

Rows committed after an index was built are still found: Lance searches unindexed rows by
brute force beside the index (lancedb's `fast_search` stays off). A text or hybrid search of a
table without a full-text index builds that index first, once (one commit that changes no row:
table maintenance builds it too, but a small table may never reach maintenance, and its text
search should not fail for that).
"""

from __future__ import annotations

import functools
import json
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embedscale.engine.errors import TableError
from embedscale.engine.models.cache import get_model
from embedscale.engine.models.registry import (
    ONNX_PROVIDERS,
    ModelSpec,
    provider_spec,
    resolve_model,
)
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.schema import table_model, table_provider
from embedscale.engine.storage.locations import Location, StorageOptions
from embedscale.engine.tables.catalog import existing_table
from embedscale.engine.tables.filters import lance_filter
from embedscale.engine.tables.fusion import reciprocal_rank_fusion
from embedscale.engine.tables.indexes import METRIC, TEXT_COLUMN, ensure_text_index
from embedscale.engine.tables.search_options import (
    DEFAULT_MODE,
    SearchOptions,
    SearchParameterError,
    search_options,
)

_COLUMNS = [
    "id",
    "doc_id",
    "chunk_index",
    "text",
    "source",
    "metadata",
    "char_start",
    "char_end",
]
HYBRID_DEPTH = 2  # each leg of a hybrid search ranks 2k candidates: a chunk fair in both counts
_TEXT_INDEX_LOCK = threading.Lock()  # one lazy full-text index build at a time


@dataclass(frozen=True, slots=True)
class Hit:
    """One chunk found by a search. `score`, higher is better: the cosine similarity to the
    query (vector), the BM25 score (text), or the reciprocal-rank-fusion score (hybrid)."""

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
    *,
    mode: str = DEFAULT_MODE,
    nprobes: int | None = None,
    refine: int | None = None,
) -> list[Hit]:
    """The `k` chunks that best match `query` by `mode` (vector, text or hybrid), best first,
    optionally filtered by a SQL `where`; `nprobes` and `refine` tune a vector index's search
    (engine.tables.search_options: None takes the defaults). `storage` reaches tables on an
    object store (default: the AWS variables). A bad parameter is a SearchParameterError
    naming it, raised before anything is read."""
    options = search_options(k, mode, nprobes, refine)
    lance_where = checked_where(where)
    table = existing_table(data_dir, name, storage)
    if options.mode != "vector":
        with _TEXT_INDEX_LOCK:
            ensure_text_index(table.uri, table.storage)
    lance_table = open_table(table)
    vector = None
    if options.mode != "text":
        model_name, _ = table_model(lance_table.schema)
        if model_name is None:
            raise TableError(f"table '{name}' has no embedscale model metadata")
        model = get_model(query_model(lance_table.schema, model_name), device="cpu")
        vector = model.embed_texts([query])[0]
    return find(lance_table, options, query, vector, lance_where, where)


def checked_where(where: str | None) -> str | None:
    """A filter as Lance gets it, checked whole first (Lance alone would drop what follows a
    condition: engine.tables.filters); a bad one is a SearchParameterError of `where`."""
    if not where:
        return None
    try:
        return lance_filter(where)
    except TableError as exc:
        raise SearchParameterError("where", str(exc)) from None


@functools.cache
def _session() -> Any:
    """One cache of index and metadata for every search of this process: a table opened for
    each search still finds its IVF centroids and PQ codebooks in memory. lancedb is imported
    here, at the first search: its import (its namespace client's models) takes ~1 s of CPU,
    which a server, a CLI command or a worker that never searches need not pay."""
    import lancedb

    return lancedb.Session()


def open_table(table: ChunkTable) -> Any:
    """The table as lancedb opens it, sharing this process's index cache."""
    import lancedb

    db = lancedb.connect(str(table.root), storage_options=table.storage_options, session=_session())
    return db.open_table(table.name)


def find(
    lance_table: Any,
    options: SearchOptions,
    query: str,
    vector: Any = None,
    lance_where: str | None = None,
    where: str | None = None,
) -> list[Hit]:
    """The hits of a search of an open lancedb table: `query` is the text (text, hybrid),
    `vector` its embedding (vector, hybrid); `lance_where` the checked filter (checked_where)
    of the caller's `where`, which an error message quotes."""
    try:
        if options.mode == "vector":
            rows = _vector_rows(lance_table, vector, options.k, options, lance_where)
            return [_hit(r, 1.0 - float(r["_distance"])) for r in rows]
        if options.mode == "text":
            rows = _text_rows(lance_table, query, options.k, lance_where)
            return [_hit(r, float(r["_score"])) for r in rows]
        depth = HYBRID_DEPTH * options.k
        by_meaning = _vector_rows(lance_table, vector, depth, options, lance_where)
        by_words = _text_rows(lance_table, query, depth, lance_where)
    except Exception as exc:  # lancedb reports a bad filter as a generic error
        if not where:
            raise
        raise SearchParameterError(
            "where", f"invalid filter {where!r}: {str(exc).splitlines()[0]}"
        ) from None
    rows_by_id = {r["id"]: r for r in by_words} | {r["id"]: r for r in by_meaning}
    fused = reciprocal_rank_fusion([[r["id"] for r in by_meaning], [r["id"] for r in by_words]])
    return [_hit(rows_by_id[i], score) for i, score in fused[: options.k]]


def _vector_rows(
    lance_table: Any, vector: Any, limit: int, options: SearchOptions, lance_where: str | None
) -> list[dict[str, Any]]:
    query = (
        lance_table.search(vector, vector_column_name="vector")
        .distance_type(METRIC)
        .nprobes(options.nprobes)
        .refine_factor(options.refine)
        .limit(limit)
        .select([*_COLUMNS, "_distance"])
    )
    if lance_where:
        query = query.where(lance_where, prefilter=True)
    return query.to_list()


def _text_rows(
    lance_table: Any, text: str, limit: int, lance_where: str | None
) -> list[dict[str, Any]]:
    # A MatchQuery: the words of the query, any of them; never Lance's query syntax (quotes
    # would ask for a phrase, which an index without positions refuses).
    # (its keyword fields have pydantic defaults, which mypy does not see without the plugin)
    from lancedb.query import MatchQuery

    match = MatchQuery(text, TEXT_COLUMN)  # type: ignore[call-arg]
    query = lance_table.search(match, query_type="fts")
    query = query.limit(limit).select([*_COLUMNS, "_score"])
    if lance_where:
        query = query.where(lance_where, prefilter=True)
    return query.to_list()


def _hit(row: dict[str, Any], score: float) -> Hit:
    return Hit(
        row["doc_id"],
        row["chunk_index"],
        score,
        row["text"],
        row["source"],
        json.loads(row["metadata"] or "{}"),
        row["char_start"],
        row["char_end"],
        row["id"],
    )


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
