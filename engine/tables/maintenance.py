"""Keeping a table compact: every committed partition adds at least one fragment to its Lance
table, and a table of small jobs soon has thousands of tiny fragments. Each read then opens
them all: the id check every partition makes (sink.existing_hashes) took 10 ms at 10
fragments, 82 ms at 500 and 149 ms at 1,500 (measured on this project's 2-core machine), time
taken from every tenant's work on the workers and the runner. Compaction rewrites them into a
few large fragments through Lance's own `compact_files`, as one more commit: the rows, their
ids and every older version stay as they were.

Only the caller knows what else writes to the table; it must not commit deletions to the table
while a compaction runs (jobs/runner/table_maintenance.py keeps the runner's own writes apart).
"""

from __future__ import annotations

from dataclasses import dataclass

import lance

from embedscale.engine.storage.locations import NO_OPTIONS, StorageOptions, lance_options


@dataclass(frozen=True, slots=True)
class Compacted:
    """What a compaction did."""

    fragments_before: int
    fragments_after: int
    version: int


def compact(uri: str, storage: StorageOptions = NO_OPTIONS) -> Compacted:
    """Merge the table's small fragments into large ones (one commit; nothing else changes)."""
    ds = lance.dataset(uri, storage_options=lance_options(uri, storage))
    before = len(ds.get_fragments())
    ds.optimize.compact_files()
    ds = lance.dataset(uri, storage_options=lance_options(uri, storage))
    return Compacted(before, len(ds.get_fragments()), ds.version)
