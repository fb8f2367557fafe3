"""Documents read back from a table's own chunk rows, for a migration to embed them again with
another model (jobs/migrations/).

A table keeps each chunk's text and its character span in its document (`char_start`,
`char_end`), so a document's text is rebuilt by laying its chunks at their spans: overlapping
chunks agree on the characters they share. What no chunk covers (whitespace the tokenizer
dropped between two chunks without overlap, before the first token, after the last) comes back
as spaces, so every chunk's span still indexes its text exactly. The document keeps its id,
source, metadata and content hash as the rows hold them: a later upsert of the same source text
finds it unchanged.

With `reuse`, the chunks themselves are kept: the same spans and chunk numbers, their text
tokenized again by the new model's tokenizer (the same tokenizer gives the same ids: chunks are
cut at word starts, engine/chunking/chunker.py). A partition with a chunk that would not fit the
new model is chunked afresh instead (`reused_chunks` returns None): nothing is truncated.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedscale.engine.chunking.chunker import Chunks
from embedscale.engine.sink.replacement import doc_predicate
from embedscale.engine.sources.documents import Document, Skipped
from embedscale.engine.sources.partitions import TableDocs
from embedscale.engine.storage.locations import StorageOptions, lance_options

_COLUMNS = [
    "doc_id",
    "chunk_index",
    "text",
    "char_start",
    "char_end",
    "content_hash",
    "source",
    "metadata",
]


@dataclass(frozen=True, slots=True)
class StoredChunks:
    """One document's chunks as its rows hold them, in chunk order."""

    chunk_index: np.ndarray  # int32
    char_start: np.ndarray  # int64
    char_end: np.ndarray  # int64


def rebuild_text(starts: list[int], ends: list[int], texts: list[str]) -> str:
    """A document's text from its chunks' spans and texts (any order); gaps become spaces."""
    pieces: list[str] = []
    at = 0
    for start, end, text in sorted(zip(starts, ends, texts)):
        if end <= at:
            continue  # inside what earlier chunks laid already
        if start > at:
            pieces.append(" " * (start - at))
            at = start
        pieces.append(text[at - start :])
        at = end
    return "".join(pieces)


def read_stored(
    item: TableDocs, storage: StorageOptions
) -> tuple[list[Document], list[Skipped], dict[str, StoredChunks]]:
    """The documents of `item` as of its version, in its order, with their chunks; a
    document the version does not hold is skipped with the reason."""
    if not item.doc_ids:
        return [], [], {}
    ds = lance.dataset(
        item.uri, version=item.version, storage_options=lance_options(item.uri, storage)
    )
    rows = ds.to_table(columns=_COLUMNS, filter=doc_predicate(list(item.doc_ids)))
    rows = rows.take(pc.sort_indices(rows, [("doc_id", "ascending"), ("chunk_index", "ascending")]))
    found: dict[str, tuple[Document, StoredChunks]] = {}
    for doc_id, group in _groups(rows):
        starts = group.column("char_start").to_numpy().astype(np.int64)
        ends = group.column("char_end").to_numpy().astype(np.int64)
        text = rebuild_text(starts.tolist(), ends.tolist(), group.column("text").to_pylist())
        first = group.slice(0, 1).to_pylist()[0]
        metadata = _metadata(first["metadata"])
        doc = Document(doc_id, text, first["source"], metadata, first["content_hash"])
        chunks = StoredChunks(group.column("chunk_index").to_numpy().astype(np.int32), starts, ends)
        found[doc_id] = (doc, chunks)
    docs = [found[d][0] for d in item.doc_ids if d in found]
    skipped = [
        Skipped(d, f"not in the table at version {item.version}")
        for d in item.doc_ids
        if d not in found
    ]
    return docs, skipped, {d: found[d][1] for d in found}


def reused_chunks(
    docs: list[Document], stored: dict[str, StoredChunks], tokenizer, max_tokens: int, special: int
) -> Chunks | None:
    """The chunks of `docs` as they were, their text tokenized by `tokenizer`; None when one
    would not fit the model (`max_tokens`, with its `special` tokens): chunk afresh then."""
    doc_index: list[np.ndarray] = []
    chunk_index: list[np.ndarray] = []
    char_start: list[np.ndarray] = []
    char_end: list[np.ndarray] = []
    texts: list[str] = []
    for d, doc in enumerate(docs):
        chunks = stored.get(doc.doc_id)
        if chunks is None:
            return None
        doc_index.append(np.full(len(chunks.chunk_index), d, dtype=np.int32))
        chunk_index.append(chunks.chunk_index)
        char_start.append(chunks.char_start)
        char_end.append(chunks.char_end)
        texts += [doc.text[s:e] for s, e in zip(chunks.char_start, chunks.char_end)]
    encodings = tokenizer.encode_batch(texts, add_special_tokens=False) if texts else []
    content_ids = [np.asarray(e.ids, dtype=np.int64) for e in encodings]
    if any(len(ids) + special > max_tokens or not len(ids) for ids in content_ids):
        return None
    empty = np.zeros(0, dtype=np.int64)
    return Chunks(
        np.concatenate(doc_index) if doc_index else empty.astype(np.int32),
        np.concatenate(chunk_index) if chunk_index else empty.astype(np.int32),
        np.concatenate(char_start) if char_start else empty,
        np.concatenate(char_end) if char_end else empty,
        content_ids,
    )


def _groups(rows: pa.Table):
    """(doc_id, its rows) of rows sorted by doc_id."""
    ids = rows.column("doc_id").to_pylist()
    start = 0
    for i in range(1, len(ids) + 1):
        if i == len(ids) or ids[i] != ids[start]:
            yield ids[start], rows.slice(start, i - start)
            start = i


def _metadata(raw: str | None) -> dict:
    try:
        value = json.loads(raw or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
