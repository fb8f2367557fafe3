"""The figures /metrics reports about jobs come from memory: they follow every write the store
makes, equal what the file says (also once reopened), and are read without DuckDB or its lock."""

from __future__ import annotations

import threading

from embedscale.engine.sources.enumeration import plan_texts
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import PartitionDone, Store, utcnow
from embedscale.jobs.store.records import JobRecord


def new_job(job_id: str, tenant: str, model: str, n_partitions: int) -> JobRecord:
    now = utcnow()
    return JobRecord(
        job_id,
        tenant,
        {"table": "t", "model": model},
        JobStatus.QUEUED,
        "normal",
        "t",
        [("queued", now.isoformat())],
        now,
        now,
        partitions_total=n_partitions,
    )


def insert(store: Store, job_id: str, tenant: str, model: str, n_partitions: int) -> None:
    """A job as JobService.submit writes one: its record and its planned partitions."""
    store.insert_job(new_job(job_id, tenant, model, n_partitions), partitions(n_partitions))


def partitions(n: int):
    if not n:  # a sync of an empty source plans none
        return []
    return plan_texts([f"text {i}" for i in range(n)], docs_per_partition=1).partitions


def done(job_id: str, tenant: str, partition: int, chunks: int) -> PartitionDone:
    return PartitionDone(
        job_id,
        tenant,
        partition,
        {"documents": 1, "chunks": chunks, "tokens": 10 * chunks, "skipped": 0},
    )


def in_memory(store: Store) -> tuple:
    figures = store.figures.snapshot()
    return (
        {s.value: n for s, n in figures.by_status.items() if n},
        sorted(figures.embedded),
        figures.waiting,
    )


def in_file(store: Store) -> tuple:
    """The same figures as the aggregate queries /metrics used to run on every scrape."""
    return (store.job_counts(), sorted(store.embedded_totals()), store.pending_partitions())


def test_the_figures_follow_every_write_and_equal_the_file(tmp_path):
    path = tmp_path / "s.duckdb"
    store = Store(path)
    insert(store, "j1", "acme", "m1", 3)
    insert(store, "j2", "acme", "m2", 2)
    insert(store, "j3", "beta", "m1", 1)
    insert(store, "j4", "beta", "m1", 0)
    assert (
        in_memory(store)
        == in_file(store)
        == ({"queued": 4}, [("acme", "m1", 0, 0), ("acme", "m2", 0, 0), ("beta", "m1", 0, 0)], 6)
    )
    store.start_jobs(["j1", "j2", "j3"])
    store.record_partitions_done([done("j1", "acme", 0, 4), done("j2", "acme", 0, 2)])
    store.record_partitions_done([done("j1", "acme", 0, 4)])  # again: counted once
    assert in_memory(store) == in_file(store)
    store.record_partitions_done(
        [done("j1", "acme", 1, 1), done("j1", "acme", 2, 5)], succeeded=["j1"]
    )
    store.set_status("j2", JobStatus.CANCELLING)
    store.set_status("j2", JobStatus.CANCELLED)
    store.finish("j3", JobStatus.FAILED, error="a partition failed")
    store.set_status("j4", JobStatus.CANCELLED)
    expected = (
        {"succeeded": 1, "cancelled": 2, "failed": 1},
        [("acme", "m1", 10, 100), ("acme", "m2", 2, 20), ("beta", "m1", 0, 0)],
        0,
    )
    assert in_memory(store) == in_file(store) == expected
    store.close()
    reopened = Store(path)  # read from the file once, when it opens
    assert in_memory(reopened) == expected
    reopened.close()


def test_the_figures_are_read_without_duckdb_or_its_lock(tmp_path):
    service = JobService(tmp_path)
    insert(service.store, "j1", "acme", "m1", 2)
    held, release = threading.Event(), threading.Event()

    def hold_the_store() -> None:  # as a long commit of the runner would
        with service.store._lock:
            held.set()
            release.wait(10)

    holder = threading.Thread(target=hold_the_store)
    holder.start()
    held.wait(5)
    read = []
    connection, service.store._con = service.store._con, None  # any query would fail
    try:
        reader = threading.Thread(
            target=lambda: read.append(
                (service.job_counts(), service.embedded_totals(), service.pending_partitions())
            )
        )
        reader.start()
        reader.join(3)
    finally:
        release.set()
        holder.join()
        service.store._con = connection
    assert read, "the figures waited for the store's lock"
    counts, embedded, waiting = read[0]
    assert counts[JobStatus.QUEUED] == 1 and embedded == [("acme", "m1", 0, 0)] and waiting == 2
    service.close()
