"""The job ledger, read: what the store records of a job's commits (jobs/store/ledger.py), and
what its table's commits after the newest version the store recorded show.

The runner commits to a table and then records the commit; a crash in between leaves a commit
only the table knows (its transaction properties, engine/tables/commit_log.py). Every commit such a
crash can leave unrecorded comes after the newest version the runner recorded for that table
(the runner records each commit before it makes the next), so that is where the table's commits
are read from: a bound set by what happened since, not a window of recent commits that a busy
table passes in minutes. Resume records what they show (`record_unrecorded`); sync and undo,
which may run after a crash without a resume (the CLI's cancel), add them to what they read.

A migrated table has several generations, physical tables of one name each with its own version
numbers (jobs/generations.py). Every reader here takes the generation of the table it is given
(`physical`, its folder: '' for generation 1, and for a table never migrated) and compares the
table's versions with what the ledger recorded of that generation only.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.commit_log import (
    TableCommit,
    commit_at,
    commits_after,
    committed_partitions,
    latest_version,
)
from embedscale.jobs.errors import NotFoundError
from embedscale.jobs.states import TERMINAL
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.ledger import PARTITION, LedgerRow
from embedscale.jobs.store.progress import PartitionDone


@dataclass(slots=True)
class JobLedger:
    """What one job did to its table, as a sync's end and an undo need it."""

    seen: set[str] = field(default_factory=set)  # documents and sources a sync read
    # (the version a commit read, the documents whose rows it deleted), oldest commit first
    replaced: list[tuple[int, list[str]]] = field(default_factory=list)
    overwritten_before: int | None = None  # the version just before its overwrite
    sync_deleted: int | None = None  # documents the end of a sync deleted (None: not yet)


def unrecorded_commits(
    store: Store, tenant: str, table: ChunkTable, physical: str = ""
) -> list[TableCommit]:
    """The commits of the tenant's `table` after the newest version the ledger recorded of
    it: every commit a crash can have left unrecorded (and the maintenance and cancels since,
    which name no partition). A table the ledger has recorded no commit of (a new table whose
    first commit a crash cut off, one written before the ledger existed) or whose recorded
    version is not the commit recorded (the table was dropped and made again) is read whole,
    once: the next commit recorded bounds the read again. (~0.4 ms a commit on local disk:
    4.4 s for 10,000.) `table` is the generation in `physical` ('' for generation 1)."""
    latest = latest_version(table)
    if not latest:
        return []
    newest = store.newest_recorded(tenant, table.name, latest, physical)
    if newest is not None:
        version, jobs = newest
        commit = commit_at(table, version)
        if commit is not None and commit.jobs() & jobs:
            return commits_after(table, version)
    return commits_after(table, 0)


def job_ledger(
    store: Store, tenant: str, table: ChunkTable, job_id: str, physical: str = ""
) -> JobLedger:
    """What `job_id` did to `table` (the generation in `physical` it writes): the store's
    ledger, with the table's unrecorded commits."""
    stored = store.job_ledger(job_id)
    unrecorded = [
        c
        for c in unrecorded_commits(store, tenant, table, physical)
        if c.version not in stored.versions
    ]
    found = JobLedger(seen=stored.seen, sync_deleted=stored.sync_deleted)
    replaced = [(v, read, docs) for v, read, docs in stored.replaced]
    overwrite = stored.overwrite
    for commit in unrecorded:
        found.seen.update(commit.seen.get(job_id, ()))
        if commit.replaced.get(job_id):
            replaced.append((commit.version, commit.read_version, commit.replaced[job_id]))
        if commit.overwrite == job_id:
            overwrite = (commit.read_version, commit.version)
        if found.sync_deleted is None and job_id in commit.sync_done:
            found.sync_deleted = commit.sync_done[job_id]
    found.replaced = [(read, docs) for _, read, docs in sorted(replaced, key=lambda r: r[0])]
    if overwrite is not None:
        read_version, version = overwrite
        if version is None:  # recorded before its commit only: did the commit land?
            version = next(
                (c.version for c in commits_after(table, read_version) if c.overwrite == job_id),
                None,
            )
        # Not the version it read: a commit landing in between is emptied by it too.
        found.overwritten_before = version - 1 if version is not None else None
    return found


def record_unrecorded(store: Store, tenant: str, table: ChunkTable, physical: str = "") -> None:
    """Record what the table's unrecorded commits show (a crash, or an outage of the store,
    came between them and their record), for every unfinished job of the tenant they name: the
    partitions committed (marked done and charged as usual, with their ledger rows), a sync's
    deletion, an overwrite. Jobs this store does not know (another data dir wrote them) are
    left out, and so are ended ones (their ledger is closed: nothing is charged for them now).
    `table` is the generation in `physical`."""
    owners: dict[str, bool] = {}

    def ours(job_id: str) -> bool:
        if job_id not in owners:
            owners[job_id] = _unfinished_of(store, tenant, job_id)
        return owners[job_id]

    done: list[PartitionDone] = []
    unrecorded = unrecorded_commits(store, tenant, table, physical)
    for commit in unrecorded:
        for job_id, partitions in commit.partitions.items():
            if not ours(job_id):
                continue
            # The commit's documents are the job's, not a partition's: on its first row.
            seen, replaced = commit.seen.get(job_id), commit.replaced.get(job_id, [])
            for partition, counts in partitions.items():
                row = LedgerRow(
                    job_id,
                    PARTITION,
                    commit.version,
                    commit.read_version,
                    partition,
                    seen,
                    replaced,
                )
                done.append(PartitionDone(job_id, tenant, partition, counts, ledger=row))
                seen, replaced = ([] if seen is not None else None), []
    if done:
        store.record_partitions_done(done)
        # A partition done already has its ledger row, unless an embedscale of before the
        # ledger recorded it (a job running across the upgrade): its commit is written now.
        recorded = store.recorded_commits({d.job_id for d in done})
        store.add_ledger_rows(
            [
                d.ledger
                for d in done
                if d.ledger is not None
                and (d.job_id, d.partition, d.ledger.version) not in recorded
            ]
        )
    for commit in unrecorded:
        for job_id in commit.sync_done:
            if ours(job_id):
                store.record_sync_deleted(
                    job_id, commit.read_version, commit.version, commit.replaced.get(job_id, [])
                )
        if commit.overwrite and ours(commit.overwrite):
            store.record_overwrite(commit.overwrite, commit.read_version, commit.version)


def unrecorded_chunks(
    store: Store, tenant: str, table: ChunkTable, job_id: str, physical: str = ""
) -> int:
    """Chunks of `job_id`'s partitions that its table (the generation in `physical`) holds and
    the ledger does not record yet (a commit is recorded just after it lands)."""
    commits = unrecorded_commits(store, tenant, table, physical)
    return sum(int(c.get("chunks", 0)) for c in committed_partitions(commits, job_id).values())


def _unfinished_of(store: Store, tenant: str, job_id: str) -> bool:
    """Whether `job_id` is an unfinished job of `tenant` in `store`."""
    try:
        record = store.get_job(job_id)
    except NotFoundError:
        return False
    return record.tenant == tenant and record.status not in TERMINAL


def versions_needed_from(
    store: Store, tenant: str, table: ChunkTable, physical: str = ""
) -> int | None:
    """The oldest version of the tenant's `table` that a cleanup must keep (with every later
    one), None when only the newest matters: the versions the commits of jobs not yet ended
    read (their undo brings rows back from them; their resume and sync read them), and the
    first commit of a job after the newest version the ledger recorded, if there is one (a
    commit a crash or a moment left unrecorded: resume finds it there). Versions the ledger
    recorded, and maintenance's own versions after them, are needed by nothing: with the
    recorded version removed, `unrecorded_commits` reads what history is left, all of it after
    the removed run. Reads the table's commits after the newest recorded version. `table` is
    the generation in `physical`: a version another generation recorded is not its own (taken
    for one, a commit this generation's resume needs would be cleaned up)."""
    latest = latest_version(table)
    if not latest:
        return None
    newest = store.newest_recorded(tenant, table.name, latest, physical)
    unrecorded = [c.version for c in commits_after(table, newest[0] if newest else 0) if c.jobs()]
    needed = [
        v
        for v in (
            store.oldest_read_by_unfinished(tenant, table.name, physical),
            min(unrecorded, default=None),
        )
        if v is not None
    ]
    return min(needed) if needed else None
