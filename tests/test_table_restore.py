"""Restores and maintenance through the control plane (issue 17 items 1 and 4): a restore is a
new commit recorded in the job ledger, `embedscale verify` still passes after it, and an
operator's restore, optimize or drop is refused (nothing changed) while a job of the table is
unfinished or another action holds the table. No cluster: jobs are recorded as the runner
records them (tests/table_commits.py)."""

from __future__ import annotations

import time
from datetime import timedelta

import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.undo import undo_job
from embedscale.engine.tables.versions import cleanup
from embedscale.jobs.errors import ConflictError, InvalidFieldError
from embedscale.jobs.ledger import (
    record_unrecorded,
    unrecorded_chunks,
    unrecorded_commits,
    versions_needed_from,
)
from embedscale.jobs.service import JobService
from embedscale.jobs.states import TERMINAL, JobStatus
from embedscale.jobs.store.records import MAINTENANCE, JobRecord
from tests.table_commits import ledger_job, new_table

TENANT = "local"


@pytest.fixture
def service(tmp_path):
    with JobService(tmp_path / "data") as service:
        yield service


@pytest.fixture
def table(service) -> ChunkTable:
    return new_table(service.tenant_data_dir(TENANT))


def doc_ids(table: ChunkTable) -> list[str]:
    return sorted(table.dataset().to_table(columns=["doc_id"]).column("doc_id").to_pylist())


def maintenance_jobs(service: JobService) -> list[JobRecord]:
    """The maintenance runs and restores of the data dir, newest first."""
    return [j for j in service.list()[0] if j.kind == MAINTENANCE]


def test_history_names_the_jobs_of_the_ledger(service, table):
    first = ledger_job(service.store, table, ["a", "b"])
    second = ledger_job(service.store, table, ["c"])
    listed = service.table_history(TENANT, "docs")
    assert [(v.version, v.jobs) for v in listed] == [(3, (second,)), (2, (first,)), (1, ())]


def test_a_restore_is_recorded_and_verify_passes_after_it(service, table):
    ledger_job(service.store, table, ["a", "b"])
    later = ledger_job(service.store, table, ["c"])
    done = service.restore_table(TENANT, "docs", 2)
    assert (done.version, done.made) == (2, 4)
    assert doc_ids(table) == ["a", "b"]  # the later job's rows are gone: what was asked
    newest = service.table_history(TENANT, "docs", limit=1)[0]
    assert (newest.version, newest.restored, newest.jobs) == (4, 2, (done.job_id,))
    record = service.get(done.job_id)
    assert (record.kind, record.status) == (MAINTENANCE, JobStatus.SUCCEEDED)
    assert record.details == {"restore": {"version": 2, "read_version": 3, "made": 4}}
    report = service.verify_table(TENANT, "docs")
    assert report.ok, report.lines()
    assert not report.problems, report.lines()
    # The jobs after the restore are held to their ledger as before.
    newer = ledger_job(service.store, table, ["d"])
    assert service.verify_table(TENANT, "docs").ok
    assert newer != later


def test_a_restore_that_brings_back_a_cancelled_jobs_rows_is_a_warning(service, table):
    ledger_job(service.store, table, ["a"])
    cancelled = ledger_job(service.store, table, ["b"], status=JobStatus.RUNNING)
    service.store.set_status(cancelled, JobStatus.CANCELLING)
    undo_job(table, cancelled)
    service.store.set_status(cancelled, JobStatus.CANCELLED)
    assert doc_ids(table) == ["a"]
    service.restore_table(TENANT, "docs", 3)  # the version before the cancel
    assert doc_ids(table) == ["a", "b"]
    report = service.verify_table(TENANT, "docs")
    assert report.ok, report.lines()
    assert [p.kind for p in report.problems] == ["restored_cancelled_rows"]


def test_a_restore_to_a_version_the_table_lacks_changes_nothing(service, table):
    ledger_job(service.store, table, ["a"])
    with pytest.raises(InvalidFieldError, match="no version 7 to restore") as refused:
        service.restore_table(TENANT, "docs", 7)
    assert refused.value.field == "version"
    assert table.dataset().version == 2
    jobs = maintenance_jobs(service)
    assert jobs == []


def test_restore_optimize_and_drop_wait_for_the_tables_jobs(service, table):
    running = ledger_job(service.store, table, ["a"], status=JobStatus.RUNNING)
    for action in (
        lambda: service.restore_table(TENANT, "docs", 1),
        lambda: service.optimize_table(TENANT, "docs"),
        lambda: service.drop_table(TENANT, "docs"),
    ):
        with pytest.raises(ConflictError, match=running):
            action()
    assert table.dataset().version == 2 and table.exists()


def test_an_action_on_a_table_being_dropped_is_refused(service, table):
    ledger_job(service.store, table, ["a"])
    with service.table_actions.hold(TENANT, "docs", "dropped"):
        for action in (
            lambda: service.restore_table(TENANT, "docs", 1),
            lambda: service.optimize_table(TENANT, "docs"),
        ):
            with pytest.raises(ConflictError, match="table 'docs' is being dropped"):
                action()
    assert table.dataset().version == 2


def test_optimize_compacts_indexes_and_cleans_up_as_a_maintenance_job(service, table):
    for doc in "abcd":
        ledger_job(service.store, table, [doc])
    record = service.optimize_table(TENANT, "docs", retention=timedelta(0))
    assert record is not None and record.kind == MAINTENANCE
    assert record.status == JobStatus.SUCCEEDED, record.error
    details = record.details or {}
    assert details["compaction"]["fragments_before"] == 4
    assert details["compaction"]["fragments_after"] == 1
    assert details["cleanup"]["versions"] > 0
    shown = service.table_details(TENANT, "docs")
    assert (shown.details.rows, shown.details.fragments) == (4, 1)
    assert doc_ids(table) == ["a", "b", "c", "d"]
    report = service.verify_table(TENANT, "docs")
    assert report.ok and not report.problems, report.lines()


def test_a_resume_after_a_restore_finds_only_the_jobs_commits(service, table):
    ledger_job(service.store, table, ["a"])
    ledger_job(service.store, table, ["b"])
    service.restore_table(TENANT, "docs", 2)
    # A job commits after the restore, and a crash keeps its commit from the ledger.
    cut_off = ledger_job(service.store, table, ["c"], status=JobStatus.RUNNING, recorded=False)
    unrecorded = unrecorded_commits(service.store, TENANT, table)
    assert [(c.restored, sorted(c.jobs())) for c in unrecorded] == [(2, []), (None, [cut_off])]
    assert unrecorded_chunks(service.store, TENANT, table, cut_off) == 1
    record_unrecorded(service.store, TENANT, table)
    assert service.get(cut_off).chunks_done == 1
    assert unrecorded_commits(service.store, TENANT, table) == []
    service.store.finish(cut_off, JobStatus.SUCCEEDED)
    report = service.verify_table(TENANT, "docs")
    assert report.ok and not report.problems, report.lines()


def test_a_resume_after_a_cleanup_still_finds_a_commit_cut_off_from_its_record(service, table):
    ledger_job(service.store, table, ["a"])
    ledger_job(service.store, table, ["b"])
    cut_off = ledger_job(service.store, table, ["c"], status=JobStatus.RUNNING, recorded=False)
    keep_from = versions_needed_from(service.store, TENANT, table)
    assert keep_from == 4  # the commit after the newest version the ledger recorded (3)
    removed = cleanup(table.uri, table.storage, timedelta(0), keep_from)
    assert (removed.first, removed.last) == (2, 3)
    assert [c.jobs() for c in unrecorded_commits(service.store, TENANT, table)] == [{cut_off}]
    record_unrecorded(service.store, TENANT, table)
    service.store.finish(cut_off, JobStatus.SUCCEEDED)
    report = service.verify_table(TENANT, "docs")
    assert report.ok and not report.problems, report.lines()


def test_verify_after_a_restore_still_names_the_rows_lost_of_the_jobs_it_kept(service, table):
    kept = ledger_job(service.store, table, ["a"])
    ledger_job(service.store, table, ["b"])
    ledger_job(service.store, table, ["c"])
    service.restore_table(TENANT, "docs", 3)  # takes away the third job's row only
    assert service.verify_table(TENANT, "docs").ok
    table.dataset().delete(f"job_id = '{kept}'")  # a row lost: not the restore's doing
    report = service.verify_table(TENANT, "docs")
    assert [p.kind for p in report.problems] == ["missing_rows"], report.lines()
    assert kept in report.problems[0].message


@pytest.mark.slow
def test_with_a_runner_optimize_goes_on_its_maintenance_thread(cluster, tmp_path):
    from tests.conftest import started_service

    with started_service(cluster, tmp_path / "data") as running:
        table = new_table(running.tenant_data_dir(TENANT))
        for doc in "abc":
            ledger_job(running.store, table, [doc])
        started = running.optimize_table(TENANT, "docs")  # its job as it starts, not waited for
        assert started is not None and started.kind == "maintenance"
        deadline = time.monotonic() + 60
        while not (runs := maintenance_jobs(running)) or runs[0].status not in TERMINAL:
            assert time.monotonic() < deadline, runs
            time.sleep(0.05)
        assert runs[0].status == JobStatus.SUCCEEDED, runs[0].error
        assert len(table.dataset().get_fragments()) == 1
        done = running.restore_table(TENANT, "docs", 3)  # with the runner's compactions held
        assert doc_ids(table) == ["a", "b"] and done.job_id is not None
        assert running.verify_table(TENANT, "docs").ok
        running.drop_table(TENANT, "docs")  # with the runner's maintenance held off it
        assert not table.exists()


def test_a_restore_whose_commit_fails_is_recorded_failed_and_changes_nothing(
    service, table, monkeypatch
):
    from embedscale.jobs import table_admin

    ledger_job(service.store, table, ["a"])
    ledger_job(service.store, table, ["b"])

    def refused(*args):
        raise OSError("the object store refused the manifest")

    monkeypatch.setattr(table_admin, "restore", refused)
    with pytest.raises(OSError):
        service.restore_table(TENANT, "docs", 2)
    [run] = maintenance_jobs(service)
    assert (run.status, run.error_reason) == (JobStatus.FAILED, "restore_failed")
    assert doc_ids(table) == ["a", "b"] and service.store.table_restores(TENANT, "docs") == []
    assert service.verify_table(TENANT, "docs").ok
