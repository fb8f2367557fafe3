"""The DuckDB store: migrations, tenants and hashed keys, the ledger, pagination."""

from __future__ import annotations

import duckdb
import pytest

from embedscale.engine.sources.documents import Skipped
from embedscale.engine.sources.enumeration import plan_texts
from embedscale.jobs.errors import (
    ConflictError,
    InvalidFieldError,
    NotFoundError,
    StoreLockedError,
    StoreVersionError,
)
from embedscale.jobs.service import DB_FILE, JobService
from embedscale.jobs.states import IllegalTransitionError, JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.migrations import LATEST_VERSION, MIGRATIONS
from embedscale.jobs.store.records import JobRecord


def new_job(job_id: str, tenant: str = "acme") -> JobRecord:
    now = utcnow()
    return JobRecord(
        job_id,
        tenant,
        {"table": "t"},
        JobStatus.QUEUED,
        "normal",
        "t",
        [("queued", now.isoformat())],
        now,
        now,
    )


def test_an_older_file_is_migrated_forward(tmp_path):
    path = tmp_path / "old.duckdb"
    con = duckdb.connect(str(path))
    con.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
    con.execute(MIGRATIONS[0])
    con.execute("INSERT INTO schema_version VALUES (1)")
    con.execute("INSERT INTO tenants VALUES ('old', 'free', NULL, NULL, now())")
    con.close()
    store = Store(path)
    assert store.schema_version() == LATEST_VERSION > 1
    assert store.get_tenant("old").tier == "free"
    assert store.skipped("nothing") == []  # a table of migration 2 exists


def test_a_newer_file_is_refused(tmp_path):
    path = tmp_path / "new.duckdb"
    Store(path).close()
    con = duckdb.connect(str(path))
    con.execute("INSERT INTO schema_version VALUES (?)", [LATEST_VERSION + 1])
    con.close()
    with pytest.raises(StoreVersionError, match="newer than this embedscale"):
        Store(path)


def test_a_file_owned_by_another_process_is_refused(tmp_path):
    import subprocess
    import sys

    path = tmp_path / "x.duckdb"
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import duckdb, time; "
            f"c = duckdb.connect({str(path)!r}); print('ok', flush=True); "
            f"time.sleep(30)",
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline().strip() == "ok"
        with pytest.raises(StoreLockedError, match="in use by another embedscale process"):
            Store(path)
    finally:
        holder.kill()


def test_api_keys_are_stored_hashed_and_rotate(tmp_path):
    service = JobService(tmp_path)
    _, key = service.create_tenant("acme", "free")
    assert service.tenant_for_key(key) == "acme"
    assert service.tenant_for_key(key + "x") is None
    service.store.close()
    assert key.encode() not in (tmp_path / "embedscale.duckdb").read_bytes()
    service = JobService(tmp_path)
    new_key = service.rotate_key("acme")
    assert service.tenant_for_key(key) is None and service.tenant_for_key(new_key) == "acme"
    with pytest.raises(ConflictError):
        service.create_tenant("acme", "premium")


def test_recording_a_partition_twice_charges_once(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.create_tenant("acme", "free")
    store.insert_job(new_job("j"), plan_texts(["a", "b"], docs_per_partition=1).partitions)
    store.set_status("j", JobStatus.RUNNING)
    counts = {"documents": 1, "chunks": 3, "tokens": 30}
    store.record_partition_done("j", "acme", 0, counts)
    job = store.record_partition_done("j", "acme", 0, counts)
    assert (job.partitions_done, job.chunks_done) == (1, 3)
    assert store.usage("acme") == (3, 30)


def test_the_job_ledger_is_written_with_the_record_of_each_commit(tmp_path):
    """A committed partition's ledger row (the versions its commit read and made, the
    documents it read and replaced) is written with its record, once however often it is
    recorded; the end of a sync is recorded once and drops what its partitions read."""
    from embedscale.jobs.store.duckdb_store import PartitionDone
    from embedscale.jobs.store.ledger import PARTITION, LedgerRow

    store = Store(tmp_path / "s.duckdb")
    store.insert_job(new_job("j"), plan_texts(["a", "b", "c"], docs_per_partition=1).partitions)
    store.set_status("j", JobStatus.RUNNING)
    counts = {"documents": 1, "chunks": 1, "tokens": 10}

    def done(partition, version, seen, replaced):
        return PartitionDone(
            "j",
            "acme",
            partition,
            counts,
            (),
            LedgerRow("j", PARTITION, version, version - 1, partition, seen, replaced),
        )

    batch = [done(0, 5, ["a"], ["a"]), done(1, 5, ["b", "it's"], [])]
    for _ in range(2):  # recorded twice: one row each
        store.record_partitions_done(batch)
    store.record_partitions_done([done(2, 9, ["c"], ["c"])])
    store.add_skipped("j", [Skipped(f"file-{i}", "unreadable") for i in range(1200)])
    store.add_skipped("j", [Skipped("late", "unreadable")])  # past job_skipped's room
    ledger = store.job_ledger("j")
    assert ledger.seen == {"a", "b", "it's", "c", "late"} | {f"file-{i}" for i in range(1200)}
    assert ledger.replaced == [(5, 4, ["a"]), (9, 8, ["c"])] and ledger.versions == {5, 9}
    assert ledger.sync_deleted is None and ledger.overwrite is None
    assert store.newest_recorded("acme", "t", at_most=100) == (9, {"j"})
    assert store.newest_recorded("acme", "t", at_most=8) == (5, {"j"})
    assert store.newest_recorded("acme", "other", at_most=100) is None
    for _ in range(2):
        store.record_sync_deleted("j", 9, 10, ["gone"])
    ledger = store.job_ledger("j")
    assert ledger.sync_deleted == 1 and ledger.seen == set()
    assert ledger.replaced[-1] == (10, 9, ["gone"])
    store.record_overwrite("j", 3, None)
    assert store.job_ledger("j").overwrite == (3, None)
    store.record_overwrite("j", 3, 4)
    assert store.job_ledger("j").overwrite == (3, 4)
    store.close()


def test_transitions_are_checked_and_history_kept(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.insert_job(new_job("j"), [])
    store.set_status("j", JobStatus.RUNNING)
    job = store.set_status("j", JobStatus.SUCCEEDED)
    assert [s for s, _ in job.history] == ["queued", "running", "succeeded"]
    assert job.started_at and job.finished_at
    with pytest.raises(IllegalTransitionError, match="queued -> running -> succeeded"):
        store.set_status("j", JobStatus.RUNNING)


def test_jobs_are_listed_newest_first_by_page_and_tenant(tmp_path):
    service = JobService(tmp_path)
    for i in range(5):
        service.store.insert_job(new_job(f"j{i}", "acme" if i % 2 else "other"), [])
    page, cursor = service.list(limit=2)
    assert [j.id for j in page] == ["j4", "j3"] and cursor == "j3"
    page, cursor = service.list(limit=2, cursor=cursor)
    assert [j.id for j in page] == ["j2", "j1"]
    page, cursor = service.list(limit=2, cursor=cursor)
    assert [j.id for j in page] == ["j0"] and cursor is None
    assert [j.id for j in service.list(tenant="acme")[0]] == ["j3", "j1"]
    with pytest.raises(NotFoundError):
        service.get("j0", tenant="acme")


class _NoDuckDB:
    """Stands in for the connection: any query fails the test."""

    def execute(self, *args, **kwargs):
        raise AssertionError("a DuckDB round trip where the record is in memory")


def test_job_reads_come_from_memory_and_follow_every_write(tmp_path):
    from embedscale.jobs.store.duckdb_store import PartitionDone

    store = Store(tmp_path / "s.duckdb")
    plan = plan_texts(["a", "b"], docs_per_partition=1)
    store.insert_job(new_job("j1"), plan.partitions)
    store.set_status("j1", JobStatus.RUNNING)
    store.record_partitions_done(
        [
            PartitionDone(
                "j1", "acme", 0, {"documents": 1, "chunks": 3, "tokens": 9, "skipped": 0}, ()
            )
        ]
    )
    connection, store._con = store._con, _NoDuckDB()
    try:
        job = store.get_job("j1", "acme")
        assert (job.status, job.partitions_done, job.chunks_done) == ("running", 1, 3)
        with pytest.raises(NotFoundError):
            store.get_job("j1", "another-tenant")  # others' jobs stay invisible
    finally:
        store._con = connection
    store.record_partitions_done(
        [
            PartitionDone(
                "j1", "acme", 1, {"documents": 1, "chunks": 2, "tokens": 5, "skipped": 0}, ()
            )
        ],
        succeeded=["j1"],
    )
    # The record in memory is the file's, field for field.
    assert store.get_job("j1") == Store._get_job(store._con, "j1")
    assert store.get_job("j1").status == "succeeded"


def test_tenant_rows_are_read_and_written_by_column_name(tmp_path):
    path = tmp_path / DB_FILE
    Store(path).close()
    # The tables as a later migration could leave them: columns in another order, one more.
    con = duckdb.connect(str(path))
    for table, columns in (
        ("tenants", "created_at, max_concurrent_jobs, daily_chunks, tier, name"),
        ("api_keys", "revoked_at, created_at, prefix, tenant, key_hash"),
        ("usage", "tokens, chunks, day, tenant"),
        ("job_skipped", "reason, source, partition, job_id"),
    ):
        con.execute(f"CREATE TABLE moved AS SELECT 'later' AS note, {columns} FROM {table}")
        con.execute(f"DROP TABLE {table}")
        con.execute(f"ALTER TABLE moved RENAME TO {table}")
    con.execute("CREATE UNIQUE INDEX usage_key ON usage (tenant, day)")  # ON CONFLICT's target
    con.close()
    with JobService(tmp_path) as service:
        store = service.store
        record, key = service.create_tenant("acme", "free")
        assert (record.name, record.tier, record.daily_chunks) == ("acme", "free", None)
        assert service.set_limits("acme", daily_chunks=9).daily_chunks == 9
        assert [(t.name, t.tier) for t in store.list_tenants()] == [
            ("acme", "free"),
            ("local", "unlimited"),
        ]
        assert service.tenant_for_key(key) == "acme"
        store.insert_job(new_job("j1"), plan_texts(["a"]).partitions)
        store.add_skipped("j1", [Skipped("x.bin", "binary")])
        assert store.skipped("j1") == [Skipped("x.bin", "binary")]
        store.set_status("j1", JobStatus.RUNNING)
        store.record_partition_done("j1", "acme", 0, {"documents": 1, "chunks": 2, "tokens": 5})
        assert store.usage("acme") == (2, 5)


def test_update_tenant_takes_only_its_known_columns(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.create_tenant("acme", "free")
    for bad in ({"created_at": None}, {"tier = 'x' --": "y"}, {"prefix": "es_"}):
        with pytest.raises(InvalidFieldError, match="cannot set tenant field") as err:
            store.update_tenant("acme", **bad)
        assert err.value.field == next(iter(bad))
    assert store.get_tenant("acme").tier == "free"
    with pytest.raises(NotFoundError, match="no tenant 'nobody'"):
        store.update_tenant("nobody", tier="premium")
    updated = store.update_tenant("acme", tier="premium", max_concurrent_jobs=3)
    assert (updated.tier, updated.daily_chunks, updated.max_concurrent_jobs) == ("premium", None, 3)
    assert store.get_tenant("acme") == updated


def test_finishing_a_job_that_a_cancel_reached_first_changes_nothing(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.insert_job(new_job("j1"), plan_texts(["a"]).partitions)
    store.set_status("j1", JobStatus.RUNNING)
    store.set_status("j1", JobStatus.CANCELLING)  # the API's thread, between two runner steps
    assert store.finish("j1", JobStatus.SUCCEEDED) is None  # one call: no check-then-act
    assert store.get_job("j1").status == "cancelling"
    store.set_status("j1", JobStatus.CANCELLED)
    assert store.finish("j1", JobStatus.FAILED, error="late") is None
    running = store.insert_job(new_job("j2"), plan_texts(["b"]).partitions)
    assert running is None and store.set_status("j2", JobStatus.RUNNING)
    assert store.finish("j2", JobStatus.FAILED, error="boom").error == "boom"


def test_submissions_that_arrive_together_share_one_commit(tmp_path):
    import threading

    store = Store(tmp_path / "s.duckdb")
    commits = []
    insert_jobs = store._insert_jobs
    store._insert_jobs = lambda batch: (commits.append(len(batch)), insert_jobs(batch))
    with store._lock:  # busy with something else while five submissions arrive
        threads = [
            threading.Thread(
                target=store.insert_job, args=(new_job(f"j{i}"), plan_texts(["a"]).partitions)
            )
            for i in range(5)
        ]
        for t in threads:
            t.start()
        while len(store._inserts) < 5:
            threading.Event().wait(0.01)
    for t in threads:
        t.join()
    assert commits == [5]
    assert [store.get_job(f"j{i}").status for i in range(5)] == ["queued"] * 5
    started = store.start_jobs(["j0", "j1"])
    assert [r.status for r in started] == ["running"] * 2
    store.set_status("j2", JobStatus.CANCELLED)
    assert [r.id for r in store.start_jobs(["j2", "j3"])] == ["j3"]  # j2 was cancelled
    store.close()
    assert Store(tmp_path / "s.duckdb").get_job("j3").status == "running"  # on disk too


def test_a_batch_of_many_jobs_partitions_is_recorded_exactly_once(tmp_path):
    """One call records partitions of several jobs and tenants: each job's counts, each
    tenant's charge, the jobs that finish succeed; recording the batch again changes nothing."""
    from embedscale.jobs.store.duckdb_store import PartitionDone

    store = Store(tmp_path / "s.duckdb")
    for job_id, tenant in (("j1", "acme"), ("j2", "acme"), ("j3", "globex")):
        store.insert_job(
            new_job(job_id, tenant), plan_texts(["a", "b", "c"], docs_per_partition=1).partitions
        )
        store.set_status(job_id, JobStatus.RUNNING)

    def done(job_id, tenant, partition, chunks):
        return PartitionDone(
            job_id,
            tenant,
            partition,
            {"documents": 1, "unchanged": 0, "chunks": chunks, "tokens": 10 * chunks, "skipped": 1},
            (Skipped(f"{job_id}-{partition}", "empty"),),
        )

    batch = [done("j1", "acme", p, 2) for p in range(3)] + [
        done("j2", "acme", 0, 5),
        done("j3", "globex", 1, 7),
        done("j3", "globex", 2, 1),
    ]
    for _ in range(2):
        records = store.record_partitions_done(batch, succeeded=["j1"])
        assert {
            j: (r.status, r.partitions_done, r.chunks_done, r.tokens_done, r.skipped_count)
            for j, r in records.items()
        } == {
            "j1": ("succeeded", 3, 6, 60, 3),
            "j2": ("running", 1, 5, 50, 1),
            "j3": ("running", 2, 8, 80, 2),
        }
        assert store.usage("acme") == (11, 110) and store.usage("globex") == (8, 80)
        assert [p.status for p in store.partitions("j3")] == ["pending", "done", "done"]
        assert len(store.skipped("j1")) == 3
    for job_id in ("j1", "j2", "j3"):  # memory and file agree
        assert store.get_job(job_id) == Store._get_job(store._con, job_id)
    store._usage.clear()
    assert store.usage("acme") == (11, 110)  # read back from the file
    store.close()


def test_a_page_of_jobs_never_carries_their_inline_texts(tmp_path):
    # Listed jobs show inline texts as their count; a record not in memory is read with the
    # count made by DuckDB, so a page of big jobs is no megabytes of JSON parsed and dropped.
    path = tmp_path / "s.duckdb"
    store = Store(path)
    texts = [f"text {i}" for i in range(3000)]
    record = new_job("big")
    record.spec = {
        "table": "t",
        "texts": texts,
        "ids": [str(i) for i in range(3000)],
        "metadata": [None] * 3000,
        "model": "m",
    }
    store.insert_job(record, plan_texts(texts[:2], docs_per_partition=1).partitions)
    store.insert_job(new_job("small"), [])
    store.set_status("big", JobStatus.CANCELLED)
    shown = store.get_job("big").to_dict()["spec"]
    assert shown == {"table": "t", "texts": 3000, "model": "m"}
    store.close()
    store = Store(path)  # nothing in memory: the page is read from the file
    listed = {job.id: job for job in store.list_jobs("acme")}
    assert listed["big"].spec == shown and listed["big"].to_dict()["spec"] == shown
    assert listed["small"].spec == {"table": "t"}
    # An ended job never changes: its listing record is kept, and read once.
    assert store._listed.get("big") == listed["big"] and store._listed.get("small") is None
    assert store.get_job("big").spec["texts"] == texts  # a job's own record is whole
