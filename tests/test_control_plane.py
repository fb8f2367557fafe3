"""The control plane on a real cluster: limits, quotas, priority, fair share, retry, cancel."""

from __future__ import annotations

import threading
import time

import cloudpickle
import lance
import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.runner.loop import RunnerConfig
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests import faults
from tests.corpora import jsonl_corpus

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)

SMALL = {"chunk_tokens": 32}


def corpus(path, rows: int):
    """`rows` jsonl documents, about 16 a partition, of a quarter of the usual text each: these
    tests count partitions and slots, and the model's work is a quarter (tests/corpora.py)."""
    return jsonl_corpus(path, rows, text_chars=250)


def table_rows(service, tenant, table, columns=("id", "job_id")):
    t = ChunkTable(service.tenant_data_dir(tenant), table)
    return lance.dataset(t.uri).to_table(columns=list(columns)).to_pylist() if t.exists() else []


def wait_for(predicate, timeout=120.0, seen=lambda: ""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out {seen()}"
        time.sleep(0.05)


def test_a_tenant_at_its_concurrency_limit_waits_in_queued(service):
    service.create_tenant("acme", "free")  # two jobs at once
    peak = []
    lock = threading.Lock()

    def watch(_event):
        with lock:
            peak.append(service.store.active_job_counts().get("acme", 0))

    service.bus.subscribe(None, watch)
    texts = [f"document {i} about queues, heaps and deques" for i in range(40)]
    service.set_limits("acme", max_concurrent_jobs=0)  # all four queued before any may start
    jobs = [service.submit("acme", {"table": f"t{i}", "texts": texts, **SMALL}) for i in range(4)]
    service.set_limits("acme")  # the tier's limit again, read when jobs are next admitted
    service.runner.wake()
    finals = [service.wait(j.id, timeout=120) for j in jobs]
    assert [f.status for f in finals] == ["succeeded"] * 4
    assert max(peak) == 2
    # The later jobs could only start once an earlier one had ended.
    by_start = sorted(finals, key=lambda f: f.started_at)
    assert by_start[2].started_at >= min(f.finished_at for f in by_start[:2])
    assert by_start[3].started_at >= sorted(f.finished_at for f in finals)[1]


def test_quota_running_out_mid_job_fails_it_and_keeps_what_was_committed(service, tmp_path):
    service.create_tenant("acme", "premium")
    # Three partitions of 51 to 67 chunks: one fits in what is left, two do not.
    source = corpus(tmp_path / "c.jsonl", rows=48)
    service.set_limits("acme", max_concurrent_jobs=0)  # nothing committed before the change
    job = service.submit("acme", {"table": "q", "source": str(source), **SMALL})
    service.set_limits("acme", daily_chunks=100)  # lowered after admission
    service.runner.wake()
    final = service.wait(job.id, timeout=120)
    assert (final.status, final.error_reason) == ("failed", "quota_exhausted")
    assert "quota exhausted" in final.error
    rows = table_rows(service, "acme", "q")
    used_chunks, _ = service.store.usage("acme")
    assert 0 < len(rows) == final.chunks_done == used_chunks <= 100


def held_writes(cluster, tmp_path, needle: str) -> faults.HoldWrites:
    gate = faults.HoldWrites(needle, str(tmp_path / f"gate-{needle.strip('/')}"))
    cluster.client.register_plugin(gate)
    return gate


def release(cluster, gate: faults.HoldWrites) -> None:
    gate.open()  # held tasks write and end (a cancelled job's writes stay uncommitted)
    cluster.client.unregister_worker_plugin(gate.name)


def slots(service, cluster) -> int:
    """Partitions the runner keeps in flight at most, all jobs together."""
    return cluster.worker_threads() * service.runner.config.slots_per_thread


def known_to_runner(service, job_id: str) -> bool:
    """The job is prepared: the runner weighs it against the others for the next free slot."""
    return job_id in service.runner._jobs


def test_a_small_high_priority_job_does_not_wait_for_a_large_low_one(service, cluster, tmp_path):
    gate = held_writes(cluster, tmp_path, "/big")  # the tables big and big_too
    try:
        big = service.submit(
            "local",
            {
                "table": "big",
                "priority": "low",
                **SMALL,
                # Five partitions: four hold every slot, one waits behind them.
                "source": str(corpus(tmp_path / "big.jsonl", 80)),
            },
        )
        wait_for(lambda: gate.held() == slots(service, cluster))  # big holds every slot
        # Two jobs wait, nothing of either in flight: an older low one for a slot, and a small
        # high one, which need not wait for a slot at all: it goes out on the express lane
        # (jobs/runner/feeder.py) and runs while every partition of big is still held.
        later = service.submit(
            "local",
            {
                "table": "big_too",
                "priority": "low",
                **SMALL,
                "source": str(corpus(tmp_path / "l.jsonl", 32)),
            },
        )
        wait_for(lambda: known_to_runner(service, later.id))
        small = service.submit(
            "local",
            {
                "table": "small",
                "priority": "high",
                **SMALL,
                "texts": ["urgent one", "urgent two", "urgent three"],
            },
        )
        small_final = service.wait(small.id, timeout=120)
        big_now, later_now = service.get(big.id), service.get(later.id)
    finally:
        release(cluster, gate)
    assert small_final.status == "succeeded"
    assert (big_now.status, big_now.partitions_done) == ("running", 0)
    assert (later_now.status, later_now.partitions_done) == ("running", 0)
    finals = [service.wait(j.id, timeout=300) for j in (big, later)]
    assert [f.status for f in finals] == ["succeeded"] * 2
    assert small_final.finished_at < min(f.finished_at for f in finals)


@pytest.fixture
def whole_partitions(cluster, tmp_path):
    """A service whose partitions run whole, not in slices: each partition writes once, so a
    write the gate lets go is one partition done. (In slices, a slice that runs on the worker
    without its partition's state writes what it embedded at once: a second held write of the
    same partition, which one let_one never frees: seen failing on a busy machine.) Where the
    slots go is the same policy either way."""
    from tests.conftest import started_service

    svc = started_service(cluster, tmp_path / "whole", slice_seconds=None)
    yield svc
    svc.close()


def test_two_equal_tenants_share_the_cluster_evenly(whole_partitions, cluster, tmp_path):
    service = whole_partitions
    # Six partitions each: alpha still has one waiting when the fourth slot frees, so where
    # that slot goes is the runner's choice, not the only one left.
    source = str(corpus(tmp_path / "fair.jsonl", rows=96))
    for name in ("alpha", "beta"):
        service.create_tenant(name, "premium")
    assert slots(service, cluster) == 4  # two single-threaded workers, two slots each
    gate = held_writes(cluster, tmp_path, "/big.lance")
    held = {}

    def held_are(alpha: int, beta: int) -> bool:
        held.update(alpha=gate.held("/alpha/"), beta=gate.held("/beta/"))
        return held == {"alpha": alpha, "beta": beta}

    try:
        alpha = service.submit("alpha", {"table": "big", "source": source, **SMALL})
        wait_for(lambda: held_are(4, 0), 60, lambda: f"held: {held}")  # alone, alpha took all
        beta = service.submit("beta", {"table": "big", "source": source, **SMALL})
        wait_for(lambda: known_to_runner(service, beta.id))
        # Each slot that frees goes to the tenant with fewer partitions in flight; once even,
        # a tenant gets back the slot it freed.
        jobs = {"alpha": alpha, "beta": beta}
        for tenant, then in [
            ("alpha", (3, 1)),
            ("alpha", (2, 2)),
            ("alpha", (2, 2)),
            ("beta", (2, 2)),
        ]:
            done = service.get(jobs[tenant].id).partitions_done
            gate.let_one(f"/{tenant}/")
            wait_for(lambda j=jobs[tenant], d=done: service.get(j.id).partitions_done == d + 1)
            wait_for(lambda then=then: held_are(*then), 60, lambda: f"held: {held}")
    finally:
        release(cluster, gate)
    finals = [service.wait(j.id, timeout=300) for j in (alpha, beta)]
    assert [f.status for f in finals] == ["succeeded"] * 2


def test_a_failing_partition_is_retried_then_succeeds(service, cluster, tmp_path):
    plugin = faults.FailOnce(str(tmp_path / "failed-once"))
    cluster.client.register_plugin(plugin)
    try:
        job = service.submit(
            "local", {"table": "r", **SMALL, "source": str(corpus(tmp_path / "r.jsonl", 48))}
        )
        final = service.wait(job.id, timeout=120)
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert final.status == "succeeded"
    assert sum(p.attempts for p in service.store.partitions(job.id)) == 1
    ids = [r["id"] for r in table_rows(service, "local", "r")]
    assert len(ids) == len(set(ids)) == final.chunks_done


def test_a_partition_that_keeps_failing_fails_the_job_after_its_attempts(
    service, cluster, tmp_path
):
    plugin = faults.FailAlways("doomed")
    cluster.client.register_plugin(plugin)
    try:
        job = service.submit("local", {"table": "doomed", "texts": ["a", "b"], **SMALL})
        final = service.wait(job.id, timeout=120)
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert (final.status, final.error_reason) == ("failed", "partition_failed")
    assert "failed after 3 attempts" in final.error and "disk full" in final.error


def test_cancel_mid_job_removes_its_rows(service, cluster, tmp_path):
    keep = service.submit("local", {"table": "shared", "texts": ["kept row"], **SMALL})
    assert service.wait(keep.id, timeout=60).status == "succeeded"
    gate = held_writes(cluster, tmp_path, "/shared.lance")
    try:
        job = service.submit(
            "local",
            # Six partitions: one committed, four held in flight, one not yet sent.
            {"table": "shared", **SMALL, "source": str(corpus(tmp_path / "x.jsonl", 96))},
        )
        gate.let_one()
        wait_for(lambda: service.get(job.id).partitions_done == 1)
        assert {r["job_id"] for r in table_rows(service, "local", "shared")} == {keep.id, job.id}
        assert service.cancel(job.id).status == "cancelling"  # the rest is held: mid-job
        final = service.wait(job.id, timeout=60)
    finally:
        release(cluster, gate)
    assert final.status == JobStatus.CANCELLED and final.partitions_done == 1
    assert [s for s, _ in final.history] == ["queued", "running", "cancelling", "cancelled"]
    rows = table_rows(service, "local", "shared")
    assert {r["job_id"] for r in rows} == {keep.id}


def test_a_failing_step_is_reported_and_the_runner_goes_on(service):
    start_jobs = service.store.start_jobs
    failures = []

    def hiccup_once(job_ids):
        if not failures:
            failures.append("once")
            raise OSError("injected: disk hiccup")
        return start_jobs(job_ids)

    service.store.start_jobs = hiccup_once
    job = service.submit("local", {"table": "t", "texts": ["still runs"], **SMALL})
    assert service.wait(job.id, timeout=60).status == "succeeded"
    assert failures == ["once"] and service.runner.alive and service.runner.error is None


def test_a_job_whose_last_partition_is_refused_in_the_same_batch_fails(cluster, tmp_path):
    """Both remaining partitions finish together; the quota takes the first only. The job must
    end failed (quota_exhausted) with the first recorded, not succeeded."""
    from embedscale.engine.tasks.partition_task import embed_partition

    # The runner's loop is not started: the batch is handed to it directly, each partition
    # embedded whole by a task on the cluster (whose workers hold the model already).
    service = JobService(tmp_path / "data", cluster, runner_config=RunnerConfig(slice_seconds=None))
    runner = service.runner
    service.create_tenant("acme", "premium")
    job = service.submit(
        "acme", {"table": "t", **SMALL, "source": str(corpus(tmp_path / "c.jsonl", rows=32))}
    )
    assert job.partitions_total == 2
    record = service.store.set_status(job.id, JobStatus.RUNNING)
    running = runner._preparer.prepare(record, resumed=False)
    client = cluster.client
    results = client.gather(
        [
            client.submit(embed_partition, running.partitions[i], running.config, pure=False)
            for i in running.pending
        ]
    )
    running.pending.clear()  # all submitted, all finished: nothing is left but this batch
    runner._jobs[job.id] = running
    service.set_limits("acme", daily_chunks=results[0].chunks)
    runner._commit([(running, r) for r in results])

    final = service.get(job.id)
    assert (final.status, final.error_reason) == ("failed", "quota_exhausted")
    assert final.partitions_done == 1 and final.chunks_done == results[0].chunks
    assert service.store.usage("acme")[0] == results[0].chunks
    assert final.finished_at is not None
    service.close()
