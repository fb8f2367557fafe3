"""Small jobs beside a big one, on a real cluster: the big job's partitions run in slices
(engine/tasks/slices.py), the runner continues them and commits each partition once, and a small job
of another tenant runs between two slices instead of after a whole partition."""

from __future__ import annotations

import time
from collections import Counter

import cloudpickle
import lance
import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.policies.scheduling import JobView, dask_priority
from embedscale.jobs.runner.loop import RunnerConfig
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests import faults
from tests.conftest import SAMPLE_CORPUS, started_service
from tests.corpora import jsonl_corpus
from tests.helpers import assert_verified

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)  # the fault plugin ships by value


def wait_for(predicate, timeout=120.0, what=""):
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def big_documents(folder, files: int = 4, kib: int = 300):
    """`files` text files of about `kib` KiB each: one document each, so one partition each
    (text files are not cut), minutes of model time together."""
    folder.mkdir(parents=True, exist_ok=True)
    text = " ".join(p.read_text() for p in sorted((SAMPLE_CORPUS / "stdlib").glob("*.txt")))
    for i in range(files):
        body = (text * (1 + kib * 1024 // len(text)))[: kib * 1024]
        (folder / f"big-{i}.txt").write_text(f"copy {i}\n{body}")
    return folder


def ids_of(service, tenant, table) -> Counter:
    t = ChunkTable(service.tenant_data_dir(tenant), table)
    return Counter(lance.dataset(t.uri).to_table(columns=["id"]).column("id").to_pylist())


@pytest.fixture
def service(cluster, tmp_path):
    """The control plane on the shared cluster, with partitions embedded in 1-second slices,
    and a job alone on the cluster in tasks that go on until asked to yield."""
    svc = started_service(cluster, tmp_path / "data", slice_seconds=1.0, alone_slice_seconds=600)
    yield svc
    svc.close()


def test_a_small_job_runs_between_the_slices_of_a_big_jobs_partitions(service, tmp_path):
    service.create_tenant("whale", "enterprise")
    service.create_tenant("minnow", "free")
    big = service.submit("whale", {"table": "big", "source": str(big_documents(tmp_path / "b"))})
    runner = service.runner
    # Every worker busy with the big job, alone on the cluster: each runs a task that would go
    # on to its partition's end (minutes) unless the runner asks for the workers back.
    wait_for(
        lambda: big.id in runner._jobs and len(runner._jobs[big.id].in_flight) >= 2,
        what="the big job's tasks",
    )
    small = service.submit("minnow", {"table": "small", "texts": ["a quick one", "and another"]})
    final = service.wait(small.id, timeout=120)
    big_now = service.get(big.id)
    service.cancel(big.id)
    assert final.status == JobStatus.SUCCEEDED and final.chunks_done == 2
    # The small job did not wait for any of the big job's partitions to end: it ran between
    # two of their slices.
    assert big_now.status == JobStatus.RUNNING and big_now.partitions_done == 0
    assert service.wait(big.id, timeout=120).status == JobStatus.CANCELLED


def test_partitions_in_slices_commit_once_each_with_exactly_the_whole_runs_ids(cluster, tmp_path):
    """Whole, in slices, and in slices with the worker that holds a partition mid-way killed
    (its next slice runs on the other worker, which reads the partition again and embeds from
    the last flush): the same ids, each once, one commit per partition at most."""
    # Two partitions (~16 documents each), each embedded in many 0.01-second slices (about a
    # chunk each); a quarter of each row is text, three chunks or so a document.
    source = jsonl_corpus(tmp_path / "c.jsonl", rows=32, chars=1500, text_chars=375)
    spec = {"table": "t", "source": str(source), "chunk_tokens": 48}
    ids: dict[str, Counter] = {}
    marker = tmp_path / "holder-killed"
    for name, slice_seconds, alone_seconds, fault in (
        ("whole", None, None, None),
        ("sliced", 0.01, None, None),
        ("killed", 0.01, None, faults.KillHolderOnce(str(marker))),
        # Alone on the cluster: a partition's slices in one task, to its end.
        ("alone", 0.01, 600.0, None),
    ):
        if fault is not None:
            cluster.client.register_plugin(fault)
        config = RunnerConfig(slice_seconds=slice_seconds, alone_slice_seconds=alone_seconds)
        service = JobService(tmp_path / name, cluster, runner_config=config)
        service.start()
        try:
            job = service.submit("local", spec)
            final = service.wait(job.id, timeout=300)
            assert final.status == JobStatus.SUCCEEDED, final.error
            ids[name] = ids_of(service, "local", "t")
            assert set(ids[name].values()) == {1}  # each row once
            table = ChunkTable(service.tenant_data_dir("local"), "t")
            versions = lance.dataset(table.uri).versions()
            # One commit per partition (or fewer: finished partitions commit together), however
            # many slices: the table's creation, then the job's commits.
            assert len(versions) - 1 <= final.partitions_total
            assert final.chunks_done == sum(ids[name].values())
        finally:
            service.close()
            if fault is not None:
                cluster.client.unregister_worker_plugin(fault.name)
    assert marker.exists(), "no worker was killed holding a partition"
    assert ids["sliced"] == ids["whole"] == ids["killed"] == ids["alone"]
    for name in ids:
        assert_verified(tmp_path / name, "t")


def view(job_id, tenant, weight=1.0, priority="normal"):
    return JobView(job_id, tenant, priority, weight, submitted_at=0.0, runnable=1, in_flight=0)


def test_on_a_worker_the_task_of_a_tenant_with_less_in_flight_runs_first():
    big, small = view("big", "whale", weight=4.0), view("small", "minnow")
    # The big tenant's fourth task against the small tenant's first: the small one goes first
    # although the big tenant's tier weighs more.
    assert dask_priority(small, 1.0, tenant_in_flight=0) > dask_priority(big, 1.0, 4)
    # Priority bands still come first.
    urgent = view("urgent", "whale", priority="critical")
    assert dask_priority(urgent, 1.0, tenant_in_flight=50) > dask_priority(small, 1.0, 0)


def test_a_job_being_fed_does_not_age_above_new_small_jobs():
    """Ageing counts from a job's last task sent: a big job fed for an hour stays in its
    band, where fair share puts the small jobs first."""
    fed = JobView(
        "big", "whale", "normal", 4.0, submitted_at=0.0, runnable=9, in_flight=4, served_at=3_599.0
    )
    fresh = JobView("small", "minnow", "normal", 1.0, submitted_at=3_599.0, runnable=1, in_flight=0)
    assert dask_priority(fresh, 3_600.0, 0) > dask_priority(fed, 3_600.0, 4)
    starved = JobView("low", "minnow", "low", 1.0, submitted_at=0.0, runnable=1, in_flight=0)
    assert dask_priority(starved, 3_600.0, 0) > dask_priority(fed, 3_600.0, 4)
