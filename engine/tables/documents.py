"""A table seen by document rather than by chunk: each document's content hash and size, and
the deletion of whole documents. What a migration plans from and reconciles two generations of
one table with (jobs/migrations/)."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import pyarrow.compute as pc

from embedscale.engine.sink.lance_sink import ChunkTable, Commit, require_table
from embedscale.engine.sink.replacement import commit_replacing, doc_predicate

RECONCILED_PROPERTY = "embedscale.reconciled"  # {"deleted": n} of a reconciling deletion


@dataclass(frozen=True, slots=True)
class StoredDocument:
    """One document of a table: its content hash, its size (the end of its last chunk, in
    characters) and its chunks."""

    content_hash: str
    size: int
    chunks: int


def documents(table: ChunkTable, version: int | None = None) -> dict[str, StoredDocument]:
    """doc_id -> the document as the table holds it (at `version`, default the latest)."""
    require_table(table.uri, table.storage)
    rows = table.dataset(version).to_table(columns=["doc_id", "content_hash", "char_end"])
    if not rows.num_rows:
        return {}
    grouped = rows.group_by("doc_id").aggregate(
        [("content_hash", "min"), ("char_end", "max"), ("char_end", "count")]
    )
    return {
        doc_id: StoredDocument(h, int(size), int(n))
        for doc_id, h, size, n in zip(
            grouped.column("doc_id").to_pylist(),
            grouped.column("content_hash_min").to_pylist(),
            pc.fill_null(grouped.column("char_end_max"), 0).to_pylist(),
            grouped.column("char_end_count").to_pylist(),
        )
    }


def delete_documents(table: ChunkTable, doc_ids: Sequence[str]) -> Commit | None:
    """Delete every row of `doc_ids` in one commit (None: nothing to delete)."""
    if not doc_ids:
        return None
    require_table(table.uri, table.storage)
    ds = table.dataset()
    version = commit_replacing(
        table.uri,
        ds,
        doc_predicate(list(doc_ids)),
        [],
        {RECONCILED_PROPERTY: json.dumps({"deleted": len(doc_ids)})},
        storage_options=table.storage_options,
    )
    return Commit(ds.version, version)
