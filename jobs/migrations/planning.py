"""What a migration job embeds: the documents of the active generation of a table, read back from
their own chunk rows as of one version (engine/tasks/stored_documents.py), in partitions.

Chunks are reused or cut again. When the old and the new model tokenize alike (their tokenizers'
definitions are equal: the same vocabulary, normalizer and pre-tokenizer), each chunk keeps its
text, span and number, and only its vector changes: the chunks users have seen and cited stay
as they were, and no document is tokenized as a whole again. Otherwise the documents are rebuilt
from their chunks and chunked afresh with the new model's tokenizer and default sizes: another
tokenizer counts other tokens, so the old boundaries could exceed the new model's input or waste
it. (A chunk that would not fit the new model even with one tokenizer makes its partition be
chunked afresh too: nothing is truncated.) Row ids follow the data contract whichever way: a hash
of doc_id, chunk_index and the model, so the new generation's ids are its own.
"""

from __future__ import annotations

from embedscale.engine.models.limits import local_tokenizer
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sources.enumeration import (
    MAX_PARTITION_BYTES,
    MIN_PARTITION_BYTES,
    PARTITIONS_PER_WORKER,
    SourcePlan,
)
from embedscale.engine.sources.partitions import Partition, TableDocs
from embedscale.engine.tables.documents import StoredDocument

MAX_DOCS_PER_PARTITION = 2048  # a partition's ids travel in its record and its task


def tokenizers_agree(old: ModelSpec, new: ModelSpec) -> bool:
    """Whether two models cut text into the same tokens: both tokenizers are local files with
    equal definitions. Unknown (a hub id, a missing file): False, and the documents are
    chunked afresh, which is always right."""
    try:
        a = local_tokenizer(old.tokenizer or old)
        b = local_tokenizer(new.tokenizer or new)
    except Exception:  # no tokenizer file here (a hub id, an endpoint): chunk afresh
        return False
    return bool(a.to_str() == b.to_str())


def plan_documents(
    table: ChunkTable,
    version: int,
    docs: dict[str, StoredDocument],
    doc_ids: list[str] | None = None,
    parallelism: int = 1,
) -> SourcePlan:
    """Partitions of the documents `doc_ids` (default: all of `docs`) of `table` at `version`,
    each about the same size, enough for every worker to have several."""
    ids = sorted(docs if doc_ids is None else doc_ids)
    total = sum(docs[d].size for d in ids)
    target = total // max(1, parallelism * PARTITIONS_PER_WORKER)
    target = min(MAX_PARTITION_BYTES, max(MIN_PARTITION_BYTES, target))
    partitions: list[Partition] = []
    batch: list[str] = []
    size = 0

    def close() -> None:
        nonlocal batch, size
        if batch:
            item = TableDocs(table.uri, version, tuple(batch), size)
            partitions.append(Partition(len(partitions), (item,)))
        batch, size = [], 0

    for doc_id in ids:
        batch.append(doc_id)
        size += docs[doc_id].size
        if size >= target or len(batch) >= MAX_DOCS_PER_PARTITION:
            close()
    close()
    return SourcePlan(partitions, [], table.uri, len(ids), total)
