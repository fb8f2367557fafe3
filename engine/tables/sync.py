"""The end of a sync job: rows of documents gone from the source are deleted, in one commit.

Which documents the source still has is what the job's own partitions read: the control plane
keeps, in its ledger, the documents each sync partition read and the sources it skipped, and
passes them here (a ledger, not the table's recent commits, which a busy table passes in
minutes). A document is kept when its source was skipped as unreadable, by a partition or by
the planner (a file that failed to open is not a file that was removed). The deleting commit
names the job and how many it deleted (SYNC_DONE_PROPERTY), and the documents it deleted
(sink.REPLACED_PROPERTY, what a cancel puts back), so that a crash before the control plane
records it neither deletes twice nor loses the count (engine/tables/commit_log.py).
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import dataclass

from embedscale.engine.sink.lance_sink import REPLACED_PROPERTY, ChunkTable, Commit, require_table
from embedscale.engine.sink.replacement import commit_replacing, doc_predicate

SYNC_DONE_PROPERTY = "embedscale.sync-done"  # {job_id: documents deleted}


@dataclass(frozen=True, slots=True)
class Deletion:
    """What the end of a sync deleted: the documents, in the commit that deleted them."""

    commit: Commit
    gone: list[str]


def delete_gone(
    table: ChunkTable, job_id: str, seen: Collection[str], kept_sources: Collection[str] = ()
) -> Deletion:
    """Delete the documents of `table` that sync job `job_id` did not read from its source
    (`seen`: the documents and skipped sources its partitions read), except those whose source
    or id is in `kept_sources`; one commit, made even when nothing is gone (it records that
    the job's deletion is done)."""
    require_table(table.uri, table.storage)
    seen = seen if isinstance(seen, (set, frozenset)) else set(seen)
    kept = set(kept_sources)
    ds = table.dataset()
    rows = ds.to_table(columns=["doc_id", "source"])
    gone = sorted(
        {
            doc_id
            for doc_id, source in zip(
                rows.column("doc_id").to_pylist(), rows.column("source").to_pylist()
            )
            if doc_id not in seen
            and source not in seen
            and doc_id not in kept
            and source not in kept
        }
    )
    properties = {SYNC_DONE_PROPERTY: json.dumps({job_id: len(gone)})}
    if gone:
        properties[REPLACED_PROPERTY] = json.dumps({job_id: gone})
    version = commit_replacing(
        table.uri,
        ds,
        doc_predicate(gone) if gone else None,
        [],
        properties,
        storage_options=table.storage_options,
    )
    return Deletion(Commit(ds.version, version), gone)
