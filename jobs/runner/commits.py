"""Committing a batch of finished partitions: row-id clashes, quotas, one Lance commit per
table, one DuckDB transaction.

Order matters for exactly-once: a partition is committed to its table (the rows become
visible, the commit records its counts) and only then recorded in DuckDB with its usage charge
and its ledger row (the versions its commit read and made, the documents it read and replaced:
jobs/store/ledger.py). A crash in between is repaired at resume from the table's own commits
after the newest the ledger recorded (jobs/ledger.py).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from embedscale.engine.errors import error_line
from embedscale.engine.sink.lance_sink import ChunkTable, Commit, existing_hashes, partition_counts
from embedscale.engine.tasks.partition_task import PartitionResult
from embedscale.jobs.policies.conflicts import clashing
from embedscale.jobs.policies.decisions import FinishedPartition, is_done, split_by_quota
from embedscale.jobs.runner.preparation import RunningJob
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import PartitionDone, Store
from embedscale.jobs.store.ledger import PARTITION, LedgerRow
from embedscale.jobs.store.records import JobRecord
from embedscale.jobs.tenants.tiers import Tier

log = logging.getLogger(__name__)
Finished = tuple[RunningJob, PartitionResult]


@dataclass
class CommitOutcome:
    """What a batch did: records of the jobs that progressed (those that ended succeeded are
    among them, recorded in the same transaction), and the jobs that must fail, with the
    reason and the error line."""

    records: dict[str, JobRecord] = field(default_factory=dict)
    committed: list[Finished] = field(default_factory=list)
    commits: dict[str, Commit] = field(default_factory=dict)  # table uri -> its commit
    succeeded: list[str] = field(default_factory=list)
    # Sync jobs with every partition done: they succeed once what is gone from their source
    # is deleted (the runner does it: engine/tables/sync.py).
    sync_due: list[RunningJob] = field(default_factory=list)
    failed: dict[str, tuple[str, str]] = field(default_factory=dict)
    # Jobs the runner found done whose success the store refused (a partition of theirs is
    # not recorded done): they run again from what the store and the table show.
    unconfirmed: list[RunningJob] = field(default_factory=list)


def commit_batch(store: Store, tier_of, results: list[Finished]) -> CommitOutcome:
    """Commit and record `results` (finished partitions of any jobs and tables). Partitions
    that would repeat a row id committed meanwhile go back to their jobs' pending queues."""
    outcome = CommitOutcome()
    results = _without_clashes(results)
    tiers: dict[str, Tier] = {}
    for job, _ in results:  # limits may have changed mid-job
        job.tier = tiers.setdefault(job.record.tenant, tier_of(job.record.tenant))
    used = {t: store.usage(t)[0] for t, tier in tiers.items() if tier.daily_chunks is not None}
    accepted_at, exhausted = split_by_quota(
        [
            FinishedPartition(j.record.id, j.record.tenant, r.partition, r.chunks)
            for j, r in results
        ],
        used,
        lambda tenant: tiers[tenant].daily_chunks,
    )
    accepted = [results[i] for i in accepted_at]
    outcome.failed.update(
        {job_id: ("quota_exhausted", error) for job_id, error in exhausted.items()}
    )
    by_table: dict[str, tuple[ChunkTable, dict[str, list[PartitionResult]]]] = {}
    for job, result in accepted:
        _, per_job = by_table.setdefault(job.table.uri, (job.table, {}))
        per_job.setdefault(job.record.id, []).append(result)
    for table, per_job in by_table.values():
        try:
            commit = table.commit(per_job)
        except Exception as exc:  # the table vanished, its disk failed, its store is down
            _remove_orphans(table)
            outcome.failed.update(
                {
                    job_id: (
                        "commit_failed",
                        f"commit to table '{table.name}' failed: {error_line(exc)}",
                    )
                    for job_id in per_job
                }
            )
            continue
        if commit is not None:
            outcome.commits[table.uri] = commit
        outcome.committed += [(j, r) for j, r in accepted if j.record.id in per_job]
    if outcome.committed:
        _record(store, outcome)
    return outcome


def _remove_orphans(table: ChunkTable) -> None:
    """Clean up after a failed commit, best effort: a store that is down now (the likely
    reason the commit failed) must not turn the failure of some jobs into a stuck runner."""
    try:
        table.remove_orphan_files()
    except Exception:
        log.warning("could not remove the orphaned files of table %r", table.name, exc_info=True)


def _record(store: Store, outcome: CommitOutcome) -> None:
    """Record committed partitions; jobs with nothing left succeed in the same transaction,
    unless they fail otherwise (a partition of theirs was refused in this very batch)."""
    jobs = {job.record.id: job for job, _ in outcome.committed}
    done = [job for job_id, job in jobs.items() if job_id not in outcome.failed and is_done(job)]
    finishing = [job.record.id for job in done if job.config.mode != "sync"]
    outcome.sync_due = [job for job in done if job.config.mode == "sync"]
    outcome.records = store.record_partitions_done(
        [
            PartitionDone(
                job.record.id,
                job.record.tenant,
                result.partition,
                {**partition_counts(result), **gpu_counts(result)},
                tuple(result.skipped),
                _ledger_row(job, result, outcome.commits),
            )
            for job, result in outcome.committed
        ],
        succeeded=finishing,
    )
    for job in jobs.values():
        job.record = outcome.records[job.record.id]
    for job_id in finishing:
        status = outcome.records[job_id].status
        if status == JobStatus.SUCCEEDED:
            outcome.succeeded.append(job_id)
        elif status == JobStatus.RUNNING:  # not a cancel that came first: the store refused
            outcome.unconfirmed.append(jobs[job_id])


def _ledger_row(
    job: RunningJob, result: PartitionResult, commits: dict[str, Commit]
) -> LedgerRow | None:
    """What the partition's commit did, for the ledger (None: nothing was committed)."""
    commit = commits.get(job.table.uri)
    if commit is None:
        return None
    return LedgerRow(
        job.record.id,
        PARTITION,
        commit.version,
        commit.read_version,
        result.partition,
        result.seen_doc_ids,
        result.replaced_doc_ids,
    )


def gpu_counts(result: PartitionResult) -> dict[str, float]:
    """A partition's GPU figures as the job record adds them up: its time on a GPU that NVML
    could read, the part of it the GPU was busy, and the worker's peak GPU memory."""
    if result.gpu_busy_percent is None:
        return {"gpu_peak_bytes": result.gpu_peak_bytes or 0}
    return {
        "gpu_seconds": result.seconds,
        "gpu_busy_seconds": result.seconds * result.gpu_busy_percent / 100.0,
        "gpu_peak_bytes": result.gpu_peak_bytes or 0,
    }


def _without_clashes(results: list[Finished]) -> list[Finished]:
    """The results whose documents can be committed without repeating a row id; the others
    (a document committed by other work since the worker looked) run again."""
    by_table: dict[str, list[Finished]] = {}
    for job, result in results:
        by_table.setdefault(job.table.uri, []).append((job, result))
    keep: list[Finished] = []
    for uri, group in by_table.items():
        ids = sorted({d for _, r in group for d in r.doc_ids})
        storage = group[0][0].table.storage  # reaches a table on an object store
        try:
            in_table = set(existing_hashes(uri, ids, storage)) if ids else set()
        except Exception:  # no table: the commit reports it
            in_table = set()
        rerun = set(clashing([r for _, r in group], in_table))
        for position, (job, result) in enumerate(group):
            if position not in rerun:
                keep.append((job, result))
                continue
            log.info(
                "job %s partition %d wrote documents committed meanwhile by other work; "
                "running it again",
                job.record.id,
                result.partition,
                extra={"job_id": job.record.id, "tenant": job.record.tenant},
            )
            job.pending.appendleft(result.partition)
    return keep
