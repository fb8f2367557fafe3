"""Table maintenance as the runner drives it (jobs/runner/table_maintenance.py): when a run
starts, one at a time per table, its steps in order with what the ledger says to keep, a
failing step ending the run as failed; and the runs as jobs of kind maintenance in a real
DuckDB store (jobs/runner/maintenance_runs.py). The engine's own steps run on real tables in
tests/test_table_maintenance.py."""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass
from datetime import timedelta

import pytest

from embedscale.api.server.metrics import maintenance_metrics
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.storage.locations import NO_OPTIONS
from embedscale.engine.tables.commit_log import commit_at, commits_after
from embedscale.engine.tables.indexes import refresh_indexes
from embedscale.engine.tables.maintenance import compact
from embedscale.engine.tables.versions import cleanup, history
from embedscale.jobs.errors import ConflictError, InvalidFieldError
from embedscale.jobs.ledger import record_unrecorded, unrecorded_commits, versions_needed_from
from embedscale.jobs.runner.maintenance_runs import INTERRUPTED, StoredMaintenanceRuns
from embedscale.jobs.runner.table_maintenance import (
    MaintenanceSteps,
    TableMaintenance,
    Target,
)
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.store.records import MAINTENANCE, JobRecord
from embedscale.jobs.store.rows import utcnow
from tests.table_commits import ledger_job, new_table


@dataclass(frozen=True)
class Compacted:
    fragments_before: int
    fragments_after: int


@dataclass(frozen=True)
class Cleaned:
    versions: int
    bytes: int


class FakeRuns:
    """MaintenanceRuns that remember what they were told."""

    def __init__(self) -> None:
        self.starts: list[tuple[str, str]] = []
        self.ends: list[tuple[str, dict, str | None]] = []

    def started(self, tenant: str, table_name: str) -> str:
        self.starts.append((tenant, table_name))
        return f"run-{len(self.starts)}"

    def ended(self, run_id: str, details: dict, error: str | None) -> None:
        self.ends.append((run_id, details, error))


class Recorder:
    """Steps that record their calls; compaction waits for `release` when `hold` is set."""

    def __init__(self, hold: bool = False, fail: str | None = None) -> None:
        self.calls: list[tuple] = []
        self.release = threading.Event()
        self.entered = threading.Event()
        if not hold:
            self.release.set()
        self.fail = fail

    def steps(self) -> MaintenanceSteps:
        def compact(table):
            self.calls.append(("compaction", table.name))
            self.entered.set()
            self.release.wait(30)
            if self.fail == "compaction":
                raise RuntimeError("compaction broke")
            return Compacted(10, 2)

        def indexes(table):
            self.calls.append(("indexes", table.name))
            if self.fail == "indexes":
                raise RuntimeError("index broke")
            return None

        def cleanup(table, retention, keep):
            self.calls.append(("cleanup", table.name, retention, keep))
            return Cleaned(3, 4096)

        return MaintenanceSteps(compact, indexes, cleanup)


def maintenance(recorder: Recorder, runs: FakeRuns | None = None, **kw) -> TableMaintenance:
    done = kw.pop("on_done", lambda: None)
    return TableMaintenance(done, steps=recorder.steps(), runs=runs, **kw)


def target(tmp_path, name: str = "t", tenant: str = "acme") -> Target:
    return Target(ChunkTable(tmp_path, name), tenant, name)


def wait_for(predicate, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.01)


def test_a_run_starts_once_the_fragments_add_up_and_does_its_steps_in_order(tmp_path):
    recorder, runs = Recorder(), FakeRuns()
    m = maintenance(
        recorder,
        runs,
        after_fragments=5,
        keep_from=lambda target: 7,
        retention=timedelta(days=2),
    )
    t = target(tmp_path)
    m.committed(t, 4)
    time.sleep(0.05)
    assert recorder.calls == [] and runs.starts == []  # 4 < 5: not yet
    m.committed(t, 1)
    wait_for(lambda: runs.ends)
    m.close()
    assert [c[0] for c in recorder.calls] == ["compaction", "indexes", "cleanup"]
    assert recorder.calls[2][2:] == (timedelta(days=2), 7)  # the window, and the ledger's keep
    assert runs.starts == [("acme", "t")]
    _, details, error = runs.ends[0]
    assert error is None and details["keep_from_version"] == 7
    assert details["compaction"]["fragments_before"] == 10
    assert details["cleanup"] == {"versions": 3, "bytes": 4096, "seconds": pytest.approx(0, abs=5)}
    assert m.figures.runs.counts() == {"succeeded": 1}
    assert m.figures.removed.counts() == {"fragments": 8, "versions": 3, "bytes": 4096}


def test_one_run_at_a_time_per_table_and_commits_wait_only_for_compaction(tmp_path):
    recorder, runs = Recorder(hold=True), FakeRuns()
    woken = threading.Event()
    m = maintenance(recorder, runs, after_fragments=1, on_done=woken.set)
    t, other = target(tmp_path), target(tmp_path, "u")
    m.committed(t, 1)
    assert recorder.entered.wait(10)
    assert m.busy(t.table.uri) and m.running(t.table.uri)
    m.committed(t, 50)  # while it runs: no second run of the same table
    assert m.maintain_now(t) is None  # one is under way
    assert not m.busy(other.table.uri)  # another table's commits never wait
    recorder.release.set()
    wait_for(lambda: len(runs.ends) == 1)
    assert woken.is_set()  # the runner is told to commit what waited
    assert not m.busy(t.table.uri) and not m.running(t.table.uri)
    assert runs.starts == [("acme", "t")]
    assert m.maintain_now(t, timedelta(hours=1)) == "run-2"  # once the last one ended
    wait_for(lambda: len(runs.ends) == 2)
    assert recorder.calls[-1][2] == timedelta(hours=1)  # the operator's retention
    m.forget(t.table.uri)  # dropped: the sweep never brings it back
    m.committed(other, 1)
    wait_for(lambda: len(runs.ends) == 3)
    m.close()


def test_a_failing_step_ends_the_run_as_failed_and_frees_the_table(tmp_path):
    recorder, runs = Recorder(fail="indexes"), FakeRuns()
    woken = threading.Event()
    m = maintenance(recorder, runs, after_fragments=1, on_done=woken.set)
    t = target(tmp_path)
    m.committed(t, 1)
    wait_for(lambda: runs.ends)
    _, details, error = runs.ends[0]
    assert "index broke" in error and details["indexes"] == {"error": "RuntimeError: index broke"}
    assert [c[0] for c in recorder.calls] == ["compaction", "indexes"]  # no cleanup after it
    assert woken.is_set() and not m.running(t.table.uri)
    assert m.figures.runs.counts() == {"failed": 1}
    m.close()


def test_a_failed_compaction_still_lets_the_tables_commits_go(tmp_path):
    recorder, runs = Recorder(fail="compaction"), FakeRuns()
    m = maintenance(recorder, runs, after_fragments=1)
    t = target(tmp_path)
    m.committed(t, 1)
    wait_for(lambda: runs.ends)
    assert "compaction broke" in runs.ends[0][2]
    assert not m.busy(t.table.uri)
    m.close()


def test_a_run_asked_for_after_close_is_recorded_as_not_started(tmp_path):
    recorder, runs = Recorder(), FakeRuns()
    m = maintenance(recorder, runs, after_fragments=1)
    m.close()  # the service stops; its last commits still count fragments
    t = target(tmp_path)
    m.committed(t, 5)
    assert m.maintain_now(t) is None
    assert recorder.calls == [] and not m.running(t.table.uri) and not m.busy(t.table.uri)
    assert [e[2].startswith("not started") for e in runs.ends] == [True, True]


def test_the_sweep_maintains_tables_below_the_count_once_their_time_is_up(tmp_path):
    recorder, runs = Recorder(), FakeRuns()
    m = maintenance(recorder, runs, after_fragments=None, sweep_every_s=0.2)
    quiet, busy = target(tmp_path, "quiet"), target(tmp_path, "busy")
    m.committed(busy, 3)
    assert m.sweep() == 0  # its time is not up yet
    time.sleep(0.25)
    assert m.sweep() == 1
    wait_for(lambda: runs.ends)
    assert runs.starts == [("acme", "busy")]  # `quiet` took no commit: nothing to do
    assert m.sweep() == 0  # nothing committed since
    m.close()
    assert quiet.name == "quiet"


def test_the_metrics_name_every_series_from_the_start(tmp_path):
    names = {m.name: m for m in maintenance_metrics(None)}
    assert set(names) == {
        "embedscale_maintenance_runs",
        "embedscale_maintenance_running",
        "embedscale_maintenance_seconds",
        "embedscale_maintenance_removed",
    }
    assert {
        s.labels["outcome"]
        for s in names["embedscale_maintenance_runs"].samples
        if "outcome" in s.labels
    } == {"succeeded", "failed"}


# --- the runs as jobs, in a real store ----------------------------------------------------


def embed_job(store: Store, tenant: str, table: str, status: JobStatus) -> str:
    now = utcnow()
    record = JobRecord(
        id=uuid.uuid4().hex,
        tenant=tenant,
        spec={"table": table},
        status=JobStatus.QUEUED,
        priority="normal",
        table_name=table,
        history=[("queued", now.isoformat())],
        created_at=now,
        updated_at=now,
    )
    store.insert_job(record, [])
    if status != JobStatus.QUEUED:
        store.start_jobs([record.id])
    if status in (JobStatus.SUCCEEDED, JobStatus.FAILED):
        store.finish(record.id, status)
    return record.id


def test_runs_are_jobs_of_kind_maintenance_that_hold_no_slot_and_cannot_be_cancelled(tmp_path):
    service = JobService(tmp_path / "data")
    published: list[JobRecord] = []
    runs = StoredMaintenanceRuns(service.store, published.append)
    try:
        embed_job(service.store, "local", "docs", JobStatus.RUNNING)
        run_id = runs.started("local", "docs")
        running = service.get(run_id)
        assert running.kind == MAINTENANCE and running.status == JobStatus.RUNNING
        assert service.store.active_job_counts() == {"local": 1}  # the embed job only
        with pytest.raises(ConflictError, match="maintenance run"):
            service.cancel(run_id)
        runs.ended(run_id, {"compaction": {"fragments_before": 9, "fragments_after": 1}}, None)
        done = service.get(run_id)
        assert done.status == JobStatus.SUCCEEDED
        assert done.details["compaction"]["fragments_after"] == 1
        assert done.to_dict()["kind"] == "maintenance"
        assert [p.status for p in published] == [JobStatus.RUNNING, JobStatus.SUCCEEDED]
        only, _ = service.list(kind="maintenance")
        assert [j.id for j in only] == [run_id]
        embeds, _ = service.list(kind="embed")
        assert run_id not in {j.id for j in embeds} and len(embeds) == 1
        with pytest.raises(InvalidFieldError, match="kind"):
            service.list(kind="vacuum")
        failed = runs.started("local", "docs")
        runs.ended(failed, {"compaction": {"error": "OSError: gone"}}, "OSError: gone")
        record = service.get(failed)
        assert record.status == JobStatus.FAILED and record.error == "OSError: gone"
    finally:
        service.close()


def test_a_run_a_stopped_process_left_is_ended_as_interrupted_and_never_resumed(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    runs = StoredMaintenanceRuns(store, lambda record: None)
    left = runs.started("local", "docs")
    embed = embed_job(store, "local", "docs", JobStatus.RUNNING)
    assert [j.id for j in store.unfinished_jobs()] == [embed]  # what the runner resumes
    ended = runs.end_interrupted()
    assert [r.id for r in ended] == [left]
    assert store.get_job(left).status == JobStatus.FAILED
    assert store.get_job(left).error == INTERRUPTED
    assert store.unfinished_jobs(kind=MAINTENANCE) == []


def test_cleanup_keeps_what_jobs_not_yet_ended_read_and_commits_not_yet_recorded(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    table = new_table(tmp_path / "data")  # version 1, empty
    assert versions_needed_from(store, "local", table) is None  # nothing: only the newest
    ledger_job(store, table, ["a"])  # version 2, recorded
    ledger_job(store, table, ["b"])  # version 3, recorded
    assert versions_needed_from(store, "local", table) is None  # all recorded, all ended
    compact(table.uri)  # maintenance's own versions, after the newest recorded
    assert versions_needed_from(store, "local", table) is None
    read = table.dataset().version
    running = ledger_job(store, table, ["c"], status=JobStatus.RUNNING)
    assert versions_needed_from(store, "local", table) == read  # its undo brings rows back
    cut_off = ledger_job(store, table, ["d"], status=JobStatus.RUNNING, recorded=False)
    assert versions_needed_from(store, "local", table) == read
    store.finish(running, JobStatus.SUCCEEDED)
    unrecorded = table.dataset().version  # the commit a crash left unrecorded
    assert versions_needed_from(store, "local", table) == unrecorded
    assert versions_needed_from(store, "zeta", table) == 2  # no ledger of its: every job commit
    keep = versions_needed_from(store, "local", table)
    cleaned = cleanup(table.uri, NO_OPTIONS, timedelta(0), keep)
    assert (cleaned.first, cleaned.last) == (2, unrecorded - 1)
    assert [c.jobs() for c in unrecorded_commits(store, "local", table)] == [{cut_off}]


def test_a_table_compacted_over_its_indexes_still_tells_what_its_commits_did(tmp_path):
    # A compaction that remaps an index commits an operation pylance cannot read back (its
    # RewrittenIndex): every reader of the table's own commits must read past it, or resume,
    # a cancel's undo, the end of a sync and verify would fail on every maintained table.
    store = Store(tmp_path / "s.duckdb")
    table = new_table(tmp_path / "data")
    early = [ledger_job(store, table, [d]) for d in "ab"]
    refresh_indexes(table.uri)
    later = [ledger_job(store, table, [d]) for d in "cd"]
    compact(table.uri)  # remaps the doc_id and text indexes
    rewrite = table.dataset().version
    cut_off = ledger_job(store, table, ["e"], status=JobStatus.RUNNING, recorded=False)
    assert [c.jobs() for c in commits_after(table, 0)] == [{j} for j in [*early, *later, cut_off]]
    assert commit_at(table, rewrite) is None  # Lance's own: it names no job
    assert [c.jobs() for c in unrecorded_commits(store, "local", table)] == [{cut_off}]
    made = table.dataset().version
    assert [v.version for v in history(table.uri)][:3] == [made, made - 1, made - 2]
    record_unrecorded(store, "local", table)
    assert unrecorded_commits(store, "local", table) == []
