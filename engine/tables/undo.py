"""Cancelling a job undoes it in one commit: its rows go, and the rows it replaced come back.

What a job replaced, the control plane's ledger says (it is passed in): the version before an
overwrite's emptying commit holds the old rows; each commit of an upsert or a sync names the
documents whose rows it deleted, and the version that commit read holds those rows. The old
versions are the table's own: Lance keeps them (nothing here cleans them up). A row comes back
only if no other job has since written its document: what others wrote after the cancelled job
is theirs to keep.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import pyarrow as pa
import pyarrow.compute as pc
from lance.fragment import write_fragments

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.replacement import (
    commit_replacing,
    doc_predicate,
    rows_of_version,
    sql_string,
)

UNDO_PROPERTY = "embedscale.undo"  # the job whose rows a commit removed and restored


def undo_job(
    table: ChunkTable,
    job_id: str,
    replaced: Sequence[tuple[int, Sequence[str]]] = (),
    overwritten_before: int | None = None,
) -> int:
    """Remove every row `job_id` wrote to `table` and put back the rows it replaced, in one
    commit; returns how many rows came back. `replaced`: (the version a commit of the job read,
    the documents whose rows that commit deleted), in the order of the commits;
    `overwritten_before`: the version just before the job's overwrite emptied the table. A
    table without the job's rows and without anything to restore is left as it is."""
    if not table.exists():
        return 0
    restored = _replaced_rows(table, job_id, replaced, overwritten_before)
    ds = table.dataset()
    own = f"job_id = {sql_string(job_id)}"
    if restored is not None and restored.num_rows:
        others = ds.to_table(columns=["doc_id"], filter=f"NOT ({own})").column("doc_id")
        taken = set(others.to_pylist())
        keep = [d not in taken for d in restored.column("doc_id").to_pylist()]
        restored = restored.filter(pa.array(keep, pa.bool_()))
    fragments = (
        write_fragments(
            restored, table.uri, schema=ds.schema, storage_options=table.storage_options
        )
        if restored is not None and restored.num_rows
        else []
    )
    if not fragments and not ds.count_rows(filter=own):
        return 0
    commit_replacing(
        table.uri,
        ds,
        own,
        fragments,
        {UNDO_PROPERTY: json.dumps(job_id)},
        storage_options=table.storage_options,
    )
    return sum(f.physical_rows for f in fragments)


def _replaced_rows(
    table: ChunkTable,
    job_id: str,
    replaced: Sequence[tuple[int, Sequence[str]]],
    overwritten_before: int | None,
) -> pa.Table | None:
    """The rows the job's commits replaced, as they were before, or None when it replaced
    nothing."""
    parts: list[pa.Table] = []
    uri, options = table.uri, table.storage_options
    if overwritten_before is not None:  # all of it, as before the overwrite
        parts.append(rows_of_version(uri, overwritten_before, storage_options=options))
    for before, doc_ids in replaced:
        if doc_ids:
            rows = rows_of_version(
                uri, before, doc_predicate(sorted(set(doc_ids))), storage_options=options
            )
            rows = rows.filter(pc.not_equal(rows.column("job_id"), job_id))
            parts.append(rows)
    if not parts:
        return None
    return _first_per_chunk(pa.concat_tables(parts))


def _first_per_chunk(rows: pa.Table) -> pa.Table:
    """Each chunk id once, from the earliest part: a document the job replaced twice (a
    partition run again after a clash) comes back as it was before the first time."""
    seen: set[str] = set()
    keep = []
    for chunk_id in rows.column("id").to_pylist():
        keep.append(chunk_id not in seen)
        seen.add(chunk_id)
    return rows.filter(pa.array(keep, pa.bool_()))
