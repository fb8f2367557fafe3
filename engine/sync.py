"""The end of a sync job: rows of documents gone from the source are deleted, in one commit.

Which documents the source still has is what the job's own partitions read: each sync commit
records its documents and the sources it skipped (sink.SEEN_PROPERTY), so the answer survives a
crash of the driver. A document is kept when its source was skipped as unreadable, by a
partition or by the planner (a file that failed to open is not a file that was removed). The
deleting commit names the job and how many it deleted, so finishing again after a crash deletes
nothing twice and reports the same count.
"""
from __future__ import annotations

import json
from collections.abc import Collection

from engine.replacement import commit_replacing, doc_predicate, history
from engine.sink import REPLACED_PROPERTY, SEEN_PROPERTY, ChunkTable, require_table

SYNC_DONE_PROPERTY = "embedscale.sync-done"  # {job_id: documents deleted}


def delete_gone(table: ChunkTable, job_id: str, kept_sources: Collection[str] = ()) -> int:
    """Delete the documents of `table` that sync job `job_id` did not read from its source,
    except those whose source or id is in `kept_sources`; returns how many were deleted."""
    require_table(table.uri, table.storage)
    seen: set[str] = set()
    for _, props in history(table.uri, SYNC_DONE_PROPERTY, SEEN_PROPERTY,
                            storage_options=table.storage_options):
        if job_id in props.get(SYNC_DONE_PROPERTY, {}):
            return int(props[SYNC_DONE_PROPERTY][job_id])
        seen.update(props.get(SEEN_PROPERTY, {}).get(job_id, ()))
    kept = set(kept_sources)
    ds = table.dataset()
    rows = ds.to_table(columns=["doc_id", "source"])
    gone = sorted({doc_id for doc_id, source in zip(rows.column("doc_id").to_pylist(),
                                                     rows.column("source").to_pylist())
                   if doc_id not in seen and source not in seen
                   and doc_id not in kept and source not in kept})
    properties = {SYNC_DONE_PROPERTY: json.dumps({job_id: len(gone)})}
    if gone:
        properties[REPLACED_PROPERTY] = json.dumps({job_id: gone})
    commit_replacing(table.uri, ds, doc_predicate(gone) if gone else None, [], properties,
                     storage_options=table.storage_options)
    return len(gone)
