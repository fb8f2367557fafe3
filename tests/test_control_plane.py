"""The control plane on a real cluster: limits, quotas, priority, fair share, retry, cancel."""
from __future__ import annotations

import threading
import time
from datetime import datetime

import cloudpickle
import lance
import pytest

from engine.sink import ChunkTable
from jobs.service import JobService
from jobs.states import JobStatus
from tests import faults
from tests.corpora import jsonl_corpus

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)

SMALL = {"chunk_tokens": 32}


def table_rows(service, tenant, table, columns=("id", "job_id")):
    t = ChunkTable(service.tenant_data_dir(tenant), table)
    return lance.dataset(t.uri).to_table(columns=list(columns)).to_pylist() if t.exists() else []


def wait_for(predicate, timeout=120.0):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, "timed out"
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
    jobs = [service.submit("acme", {"table": f"t{i}", "texts": texts, **SMALL}) for i in range(4)]
    finals = [service.wait(j.id, timeout=120) for j in jobs]
    assert [f.status for f in finals] == ["succeeded"] * 4
    assert max(peak) == 2
    # The later jobs could only start once an earlier one had ended.
    by_start = sorted(finals, key=lambda f: f.started_at)
    assert by_start[2].started_at >= min(f.finished_at for f in by_start[:2])
    assert by_start[3].started_at >= sorted(f.finished_at for f in finals)[1]


def test_quota_running_out_mid_job_fails_it_and_keeps_what_was_committed(service, tmp_path):
    service.create_tenant("acme", "premium")
    corpus = jsonl_corpus(tmp_path / "c.jsonl", rows=120)
    job = service.submit("acme", {"table": "q", "source": str(corpus), **SMALL})
    service.set_limits("acme", daily_chunks=400)  # lowered after admission
    final = service.wait(job.id, timeout=120)
    assert (final.status, final.error_reason) == ("failed", "quota_exhausted")
    assert "quota exhausted" in final.error
    rows = table_rows(service, "acme", "q")
    used_chunks, _ = service.store.usage("acme")
    assert 0 < len(rows) == final.chunks_done == used_chunks <= 400


def test_a_small_high_priority_job_overtakes_a_large_low_one(service, tmp_path):
    big_progress = []  # (time, partitions done) of the big job
    big = service.submit("local", {"table": "big", "priority": "low", **SMALL,
                                   "source": str(jsonl_corpus(tmp_path / "big.jsonl", 240))})
    service.bus.subscribe(big.id, lambda e: big_progress.append(
        (datetime.fromisoformat(e["job"]["updated_at"]), e["job"]["partitions_done"])))
    wait_for(lambda: service.get(big.id).partitions_done >= 1)
    small = service.submit("local", {"table": "small", "priority": "high", **SMALL,
                                     "texts": ["urgent one", "urgent two", "urgent three"]})
    small_final = service.wait(small.id, timeout=120)
    big_final = service.wait(big.id, timeout=300)
    assert small_final.status == big_final.status == "succeeded"
    assert small_final.finished_at < big_final.finished_at
    # ...and it did not wait for the big job's queue: it ran while most of it was still to do.
    done_when_small_ended = [e for e in big_progress if e[0] <= small_final.finished_at]
    assert done_when_small_ended and done_when_small_ended[-1][1] < big_final.partitions_total / 2


def test_two_equal_tenants_share_the_cluster_evenly(service, tmp_path):
    corpus = jsonl_corpus(tmp_path / "fair.jsonl", rows=200)
    for name in ("alpha", "beta"):
        service.create_tenant(name, "enterprise")
    done = {}

    def watch(event):
        job = event["job"]
        done[job["tenant"]] = job["chunks_done"]

    service.bus.subscribe(None, watch)
    jobs = [service.submit(name, {"table": "big", "source": str(corpus), **SMALL})
            for name in ("alpha", "beta")]
    first = None
    while first is None:
        for j in jobs:
            if service.get(j.id).status in ("succeeded", "failed"):
                first = dict(done)
                break
        time.sleep(0.02)
    for j in jobs:
        assert service.wait(j.id, timeout=300).status == "succeeded"
    low, high = sorted([first.get("alpha", 0), first.get("beta", 0)])
    assert low >= 0.8 * high, f"shares when the first job ended: {first}"


def test_a_failing_partition_is_retried_then_succeeds(service, cluster, tmp_path):
    plugin = faults.FailOnce(str(tmp_path / "failed-once"))
    cluster.client.register_plugin(plugin)
    try:
        job = service.submit("local", {"table": "r", **SMALL,
                                       "source": str(jsonl_corpus(tmp_path / "r.jsonl", 48))})
        final = service.wait(job.id, timeout=120)
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert final.status == "succeeded"
    assert sum(p.attempts for p in service.store.partitions(job.id)) == 1
    ids = [r["id"] for r in table_rows(service, "local", "r")]
    assert len(ids) == len(set(ids)) == final.chunks_done


def test_a_partition_that_keeps_failing_fails_the_job_after_its_attempts(service, cluster,
                                                                         tmp_path):
    plugin = faults.FailAlways("doomed")
    cluster.client.register_plugin(plugin)
    try:
        job = service.submit("local", {"table": "doomed", "texts": ["a", "b"], **SMALL})
        final = service.wait(job.id, timeout=120)
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert (final.status, final.error_reason) == ("failed", "partition_failed")
    assert "failed after 3 attempts" in final.error and "disk full" in final.error


def test_cancel_mid_job_removes_its_rows(service, tmp_path):
    keep = service.submit("local", {"table": "shared", "texts": ["kept row"], **SMALL})
    assert service.wait(keep.id, timeout=60).status == "succeeded"
    job = service.submit("local", {"table": "shared", **SMALL,
                                   "source": str(jsonl_corpus(tmp_path / "x.jsonl", 240))})
    wait_for(lambda: service.get(job.id).partitions_done >= 2)
    assert service.cancel(job.id).status in ("cancelling", "cancelled")
    final = service.wait(job.id, timeout=60)
    assert final.status == JobStatus.CANCELLED
    assert [s for s, _ in final.history] == ["queued", "running", "cancelling", "cancelled"]
    rows = table_rows(service, "local", "shared")
    assert {r["job_id"] for r in rows} == {keep.id}


def test_a_failing_step_is_reported_and_the_runner_goes_on(service):
    unfinished_jobs = service.store.unfinished_jobs
    failures = []

    def hiccup_once():
        if not failures:
            failures.append("once")
            raise OSError("injected: disk hiccup")
        return unfinished_jobs()

    service.store.unfinished_jobs = hiccup_once
    job = service.submit("local", {"table": "t", "texts": ["still runs"], **SMALL})
    assert service.wait(job.id, timeout=60).status == "succeeded"
    assert failures == ["once"] and service.runner.alive and service.runner.error is None


def test_a_job_whose_last_partition_is_refused_in_the_same_batch_fails(cluster, tmp_path):
    """Both remaining partitions finish together; the quota takes the first only. The job must
    end failed (quota_exhausted) with the first recorded, not succeeded."""
    from engine.tasks import embed_partition

    service = JobService(tmp_path / "data", cluster)  # the runner's loop is not started:
    runner = service.runner                           # the batch is handed to it directly
    service.create_tenant("acme", "premium")
    job = service.submit("acme", {"table": "t", **SMALL,
                                  "source": str(jsonl_corpus(tmp_path / "c.jsonl", rows=40))})
    assert job.partitions_total >= 2
    record = service.store.set_status(job.id, JobStatus.RUNNING)
    running = runner._preparer.prepare(record, resumed=False)
    results = [embed_partition(running.partitions[i], running.config) for i in running.pending]
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
