"""What a table's own commits say about the jobs that made them: the tie-breaker of the job ledger.

The ledger of what each job did lives in the control plane (DuckDB), written just after each
Lance commit. A crash between the two leaves a commit that only the table knows; every commit
carries its proof as transaction properties (engine.sink.lance_sink, engine.tables.sync), read
here, as do a cancel's (engine.tables.undo) and a restore's (engine.tables.versions). The control
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
from embedscale.engine.sink.transactions import recent_transactions, transaction_of
from embedscale.engine.tables.sync import SYNC_DONE_PROPERTY
from embedscale.engine.tables.undo import UNDO_PROPERTY

RESTORE_PROPERTY = "embedscale.restore"  # the version a restore brought back (its commit's)


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
    undone: str | None = None  # the cancelled job whose rows this commit removed
    restored: int | None = None  # the version this commit brought back (engine.tables.versions)

    def jobs(self) -> set[str]:
        """The jobs whose own work this commit holds (not a cancel's job: it removed that
        job's rows)."""
        return {*self.partitions, *self.replaced, *self.seen, *self.sync_done} | (
            {self.overwrite} if self.overwrite else set()
        )


def commits_after(table: ChunkTable, version: int) -> list[TableCommit]:
    """The commits of `table` after `version` that name a job, a cancel or a restore, oldest
    first. Where a cleanup removed part of that history, the commits after it: Lance's
    transactions are read back from the newest and stop at the first version gone, and a
    cleanup removes only whole runs of old versions (engine.tables.versions.cleanup)."""
    if not table.exists():
        return []
    ds = table.dataset()
    return _decoded(ds.version, recent_transactions(ds, ds.version - version))


def commit_at(table: ChunkTable, version: int) -> TableCommit | None:
    """The commit that made `version` of `table`, if it names a job (None otherwise, or when the
    table has no such version: it was dropped and made again since, or its history cleaned up)."""
    if version < 1 or not table.exists():
        return None
    ds = table.dataset()
    if version > ds.version:
        return None
    try:
        old = ds.checkout_version(version)
    except (OSError, ValueError):
        if version in {ref["version"] for ref in ds.version_refs()}:
            raise  # there, and unreadable: not ours to hide
        return None  # removed by a cleanup (engine.tables.versions.cleanup)
    found = _decoded(version, [transaction_of(old)])
    return found[0] if found else None


def decoded_commit(version: int, transaction: object | None) -> TableCommit | None:
    """The commit that made `version`, from its Lance transaction, if it names a job, a
    cancel or a restore (None otherwise)."""
    found = _decoded(version, [transaction])
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
                json.loads(props[UNDO_PROPERTY]) if UNDO_PROPERTY in props else None,
                json.loads(props[RESTORE_PROPERTY]) if RESTORE_PROPERTY in props else None,
            )
        )
    found.reverse()
    return found


_KEYS = (
    COMMITS_PROPERTY,
    REPLACED_PROPERTY,
    SEEN_PROPERTY,
    OVERWRITE_PROPERTY,
    SYNC_DONE_PROPERTY,
    UNDO_PROPERTY,
    RESTORE_PROPERTY,
)
