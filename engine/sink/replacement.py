"""Replacing rows in one Lance commit: the deletion of old rows and the fragments of new ones go
into a single Update transaction, so a reader sees either the old version of a document or the
new one, never neither (two commits, a delete and then an append, showed a gap) nor both.

Deleting is done the way Lance's own delete does it, one fragment at a time: a fragment whose
rows all go is removed; one that keeps some gets a new deletion file (written now, invisible
until the commit references it).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import lance

DOC_IDS_PER_CLAUSE = 1000  # doc ids per IN (...) list; longer lists are OR-ed


def sql_string(value: str) -> str:
    """A SQL string literal for Lance filters."""
    return "'" + value.replace("'", "''") + "'"


def doc_predicate(doc_ids: Sequence[str], column: str = "doc_id") -> str:
    """A Lance filter matching rows whose `column` is one of `doc_ids` (not empty)."""
    step = DOC_IDS_PER_CLAUSE
    lists = [
        ", ".join(sql_string(d) for d in doc_ids[i : i + step])
        for i in range(0, len(doc_ids), step)
    ]
    return " OR ".join(f"({column} IN ({values}))" for values in lists)


def commit_replacing(
    uri: str,
    ds: lance.LanceDataset,
    predicate: str | None,
    new_fragments: Sequence,
    properties: Mapping[str, str],
    storage_options: dict[str, str] | None = None,
) -> int:
    """Delete the rows of `ds` (the version read) matching `predicate` (None: none) and add
    `new_fragments`, in one commit carrying `properties`; returns the new version.
    `storage_options` reach a table on an object store (engine.storage.locations)."""
    removed, updated = _deletions(ds, predicate) if predicate else ([], [])
    operation: lance.LanceOperation.BaseOperation
    if removed or updated:
        operation = lance.LanceOperation.Update(
            removed_fragment_ids=removed,
            updated_fragments=updated,
            new_fragments=list(new_fragments),
        )
    else:
        operation = lance.LanceOperation.Append(list(new_fragments))
    tx = lance.Transaction(
        read_version=ds.version, operation=operation, transaction_properties=dict(properties)
    )
    return lance.LanceDataset.commit(uri, tx, storage_options=storage_options).version


def _deletions(ds: lance.LanceDataset, predicate: str) -> tuple[list[int], list]:
    """(ids of fragments left empty, fragments with a new deletion file) for `predicate`.
    Only the fragments holding a matching row are touched: their ids come from the row
    addresses of one filtered scan (the fragment id is the address's upper 32 bits)."""
    hits = ds.to_table(columns=["doc_id"], filter=predicate, with_row_address=True)
    fragment_ids = sorted({address >> 32 for address in hits.column("_rowaddr").to_pylist()})
    removed, updated = [], []
    for fragment_id in fragment_ids:
        fragment = ds.get_fragment(fragment_id)
        assert fragment is not None  # it holds a row of this version's scan
        metadata = fragment.delete(predicate)
        if metadata is None:
            removed.append(fragment_id)
        else:
            updated.append(metadata)
    return removed, updated


def rows_of_version(
    uri: str,
    version: int,
    predicate: str | None = None,
    storage_options: dict[str, str] | None = None,
):
    """The rows of an earlier version of the table (all, or those matching `predicate`)."""
    ds = lance.dataset(uri, version=version, storage_options=storage_options)
    return ds.to_table(filter=predicate)
