"""What a table's own commits say about the jobs that made them: the tie-breaker of the job ledger.

The ledger of what each job did lives in the control plane (DuckDB), written just after each
Lance commit. A crash between the two leaves a commit that only the table knows; every commit
carries its proof as transaction properties (engine.sink.lance_sink, engine.tables.sync), read
here. The control
plane reads only the commits after the newest version its ledger recorded, so the read is
bounded by what happened since, not by a window of recent commits that a busy table passes in
minutes (tens of commits a second under small-job load).
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field

from embedscale.engine.sink.lance_sink import (
    COMMITS_PROPERTY,
    OVERWRITE_PROPERTY,
    REPLACED_PROPERTY,
    SEEN_PROPERTY,
    ChunkTable,
)
from embedscale.engine.tables.sync import SYNC_DONE_PROPERTY


@dataclass(frozen=True, slots=True)
class TableCommit:
    """One commit of a table, as its transaction properties tell it."""

    version: int  # the version it made
    read_version: int  # the version it read: it holds the rows the commit replaced
    partitions: dict[str, dict[int, dict[str, int]]] = field(default_factory=dict)
    replaced: dict[str, list[str]] = field(default_factory=dict)  # job -> doc ids deleted
    seen: dict[str, list[str]] = field(default_factory=dict)  # sync job -> doc ids read
    overwrite: str | None = None  # the job whose overwrite emptied the table
    sync_done: dict[str, int] = field(default_factory=dict)  # sync job -> documents deleted

    def jobs(self) -> set[str]:
        """The jobs this commit names."""
        return {*self.partitions, *self.replaced, *self.seen, *self.sync_done} | (
            {self.overwrite} if self.overwrite else set()
        )


def commits_after(table: ChunkTable, version: int) -> list[TableCommit]:
    """The commits of `table` after `version` that name a job, oldest first."""
    if not table.exists():
        return []
    ds = table.dataset()
    return _decoded(
        ds.version, ds.get_transactions(ds.version - version) if ds.version > version else []
    )


def commit_at(table: ChunkTable, version: int) -> TableCommit | None:
    """The commit that made `version` of `table`, if it names a job (None otherwise, or when the
    table has no such version: it was dropped and made again since)."""
    if version < 1 or not table.exists():
        return None
    ds = table.dataset()
    if version > ds.version:
        return None
    found = _decoded(version, table.dataset(version).get_transactions(1))
    return found[0] if found else None


def latest_version(table: ChunkTable) -> int:
    """The table's newest version (0: no table)."""
    return table.dataset().version if table.exists() else 0


def committed_partitions(commits: Iterable[TableCommit], job_id: str) -> dict[int, dict[str, int]]:
    """The partitions of `job_id` in `commits`, with their counts (the first commit of each)."""
    done: dict[int, dict[str, int]] = {}
    for commit in commits:
        for partition, counts in commit.partitions.get(job_id, {}).items():
            done.setdefault(partition, counts)
    return done


def _decoded(newest: int, transactions: list) -> list[TableCommit]:
    """`transactions` (newest first, the first made `newest`) that name a job, oldest first."""
    found = []
    for offset, tx in enumerate(transactions):
        props = (tx.transaction_properties or {}) if tx is not None else {}
        if not any(key in props for key in _KEYS):
            continue
        commits = json.loads(props.get(COMMITS_PROPERTY, "{}"))
        found.append(
            TableCommit(
                newest - offset,
                tx.read_version,
                {
                    job: {int(p): counts for p, counts in parts.items()}
                    for job, parts in commits.items()
                },
                json.loads(props.get(REPLACED_PROPERTY, "{}")),
                json.loads(props.get(SEEN_PROPERTY, "{}")),
                json.loads(props[OVERWRITE_PROPERTY]) if OVERWRITE_PROPERTY in props else None,
                json.loads(props.get(SYNC_DONE_PROPERTY, "{}")),
            )
        )
    found.reverse()
    return found


_KEYS = (COMMITS_PROPERTY, REPLACED_PROPERTY, SEEN_PROPERTY, OVERWRITE_PROPERTY, SYNC_DONE_PROPERTY)
