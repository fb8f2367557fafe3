"""Which completed partitions would break the uniqueness of row ids if committed now.

A worker checks its documents against the table before embedding them, but other jobs (or
other partitions of the same job) may commit the same document ids between that check and this
commit. The runner asks, once per table and batch, which of the batch's document ids the table
already holds, and `clashing` says which results must not be committed: their fragments stay
invisible and the partition runs again, and the worker then finds those documents in the table
(unchanged, replaced by an upsert, or skipped with the reason). Pure: tested without a cluster.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence
from typing import Protocol


class WrittenDocuments(Protocol):
    """What a completed partition says about the documents it wrote (PartitionResult)."""

    doc_ids: list[str]
    replaced_doc_ids: list[str]


def clashing(results: Sequence[WrittenDocuments], in_table: Collection[str]) -> list[int]:
    """Positions of `results` (in commit order, all for one table) that must run again: they
    wrote a document the table already holds and that they were not replacing, or one that an
    earlier result of the same batch writes."""
    taken: set[str] = set()
    rerun = []
    for position, result in enumerate(results):
        ids = set(result.doc_ids)
        unexpected = (ids & set(in_table)) - set(result.replaced_doc_ids)
        if unexpected or ids & taken:
            rerun.append(position)
        else:
            taken |= ids
    return rerun
