"""The job ledger of a migrated table, generation by generation (issue 18 part 2).

A table's generations are physical LanceDB tables of one name (jobs/generations.py), each with
its own version numbers; the ledger records the versions of every job of the table name. Each
generation's versions must be compared with its own only: a version recorded for generation 2
says nothing of what generation 1's commits after it hold, and a cleanup that took it for
generation 1's newest recorded version would remove a commit a resume still needs. Real tables
and a real store, no cluster: commits are made as the runner makes them (tests/table_commits)."""

from __future__ import annotations

import uuid

from embedscale.engine.sink.lance_sink import partition_counts
from embedscale.engine.sources.partitions import InlineText, Partition
from embedscale.jobs.generation_states import GenerationState
from embedscale.jobs.generations import generation_table, job_physical, job_table
from embedscale.jobs.ledger import unrecorded_commits, versions_needed_from
from embedscale.jobs.runner.preparation import record_committed
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.ledger import PARTITION, LedgerRow
from embedscale.jobs.store.progress import PartitionDone
from embedscale.jobs.store.records import MIGRATION
from embedscale.jobs.table_verify import verify_table
from tests.table_commits import (
    MODEL,
    FakePartition,
    commit_docs,
    ledger_job,
    new_table,
    queued_record,
)

TENANT = "local"
FIRST, TARGET = ("test-model", "sentence-transformers"), ("other", "sentence-transformers")


def migration_job(
    store: Store, table, physical: str, batches: list[list[str]], ends: bool = True
) -> str:
    """A migration job building the generation in `physical` (its details name it, as
    jobs/migrations/driver.py writes them): one partition a batch, each committed to `table`
    and recorded with its ledger row as the runner records it, then succeeded (left running,
    unless it `ends`)."""
    job_id = uuid.uuid4().hex
    record = queued_record(
        job_id,
        TENANT,
        table,
        [d for b in batches for d in b],
        partitions_total=len(batches),
        kind=MIGRATION,
        details={"generation": 2, "physical": physical, "phase": "build"},
    )
    partitions = [
        Partition(i, tuple(InlineText(d, f"text of {d}") for d in b)) for i, b in enumerate(batches)
    ]
    store.insert_job(record, partitions)
    store.start_jobs([job_id])
    for index, docs in enumerate(batches):
        made = commit_docs(table, job_id, docs, partition=index)
        row = LedgerRow(job_id, PARTITION, made.version, made.read_version, index)
        counts = partition_counts(FakePartition(index, [], len(docs), len(docs)))
        store.record_partitions_done([PartitionDone(job_id, TENANT, index, counts, ledger=row)])
    if ends:
        store.finish(job_id, JobStatus.SUCCEEDED)
    return job_id


def test_a_cleanup_of_generation_1_keeps_its_unrecorded_commit_past_generation_2s_versions(
    tmp_path,
):
    """Generation 2 recorded versions up to 4 while generation 1's version 3 is a commit a
    crash left unrecorded: generation 1 must keep version 3 (its resume records it from
    there), however far generation 2's own versions went."""
    store = Store(tmp_path / "s.duckdb")
    home = tmp_path / "data"
    first = new_table(home)  # version 1
    ledger_job(store, first, ["a"])  # version 2, recorded
    cut_off = ledger_job(store, first, ["b"], status=JobStatus.RUNNING, recorded=False)  # 3
    g = store.reserve_generation(TENANT, "docs", FIRST, TARGET, "manual", True)
    second = generation_table(home, g)
    second.prepare(MODEL, "append")  # version 1 of generation 2
    migration_job(store, second, g.physical, [["a"], ["b"], ["c"]])  # versions 2, 3, 4
    assert first.dataset().version == 3 and second.dataset().version == 4

    # Generation 1 (the table never migrated: physical '') against its own versions only.
    assert [c.jobs() for c in unrecorded_commits(store, TENANT, first)] == [{cut_off}]
    assert versions_needed_from(store, TENANT, first) == 3
    # Generation 2's commits are all recorded, and its job ended: only the newest matters.
    assert unrecorded_commits(store, TENANT, second, physical=g.physical) == []
    assert versions_needed_from(store, TENANT, second, physical=g.physical) is None
    store.close()


def test_what_an_unfinished_job_read_is_kept_in_its_own_generation_only(tmp_path):
    """A migration job still building generation 2 read its versions 1 to 3 (its undo brings
    rows back from them): generation 2 keeps them; generation 1, whose jobs all ended recorded,
    needs only its newest version, whatever generation 2's jobs read."""
    store = Store(tmp_path / "s.duckdb")
    home = tmp_path / "data"
    first = new_table(home)
    for docs in (["a"], ["b"], ["c"], ["d"]):
        ledger_job(store, first, docs)  # versions 2 to 5, recorded, ended
    g = store.reserve_generation(TENANT, "docs", FIRST, TARGET, "manual", True)
    second = generation_table(home, g)
    second.prepare(MODEL, "append")
    migration_job(store, second, g.physical, [["a"], ["b"], ["c"]], ends=False)  # reads 1-3
    assert versions_needed_from(store, TENANT, first) is None
    assert versions_needed_from(store, TENANT, second, physical=g.physical) == 1
    store.close()


def test_a_job_keeps_the_generation_it_started_on_across_a_switch(tmp_path):
    """A job records the generation it writes as it starts; a resume after the table switched
    to another generation writes and reads that one still, and its commit cut off from its
    record is found there. A job started after the switch writes the new generation."""
    store = Store(tmp_path / "s.duckdb")
    home = tmp_path / "data"
    first = new_table(home)
    cut_off = ledger_job(store, first, ["a"], status=JobStatus.RUNNING, recorded=False)
    assert store.get_job(cut_off).details == {"physical": ""}  # pinned as it started
    g = store.reserve_generation(TENANT, "docs", FIRST, TARGET, "manual", True)
    second = generation_table(home, g)
    second.prepare(MODEL, "append")
    # A switch however it came about (the store's switch refuses one while a job runs: this
    # stands for one that did not, or a job of before the generations were pinned).
    store.update_generation(TENANT, "docs", 2, [GenerationState.BUILDING], state="built")
    store.update_generation(TENANT, "docs", 1, [GenerationState.ACTIVE], state="retired")
    store.update_generation(TENANT, "docs", 2, [GenerationState.BUILT], state="active")
    assert store.active_generation(TENANT, "docs").generation == 2

    record = store.get_job(cut_off)
    assert job_table(store, home, record).uri == first.uri and job_physical(store, record) == ""
    record_committed(store, record, job_table(store, home, record))  # what a resume does
    assert [p.status for p in store.partitions(cut_off)] == ["done"]
    store.finish(cut_off, JobStatus.SUCCEEDED)

    later = ledger_job(store, second, ["b"])  # started after the switch: generation 2
    assert store.get_job(later).details == {"physical": g.physical}
    assert job_table(store, home, store.get_job(later)).uri == second.uri
    # Each generation held against its own jobs: both hold what their ledgers record.
    assert verify_table(store, first, TENANT, physical="").ok
    assert verify_table(store, second, TENANT, physical=g.physical).ok
    store.close()
