"""A job's long document runs on every worker (jobs/runner/ranges.py): a job alone on the
cluster, with a thread idle and nothing pending, has its partition split into ranges, one a
worker; the partition is still committed once, each chunk once. A range that fails takes its
partition back to its start; a cancel takes every range. On the shared cluster of two worker
processes, real DuckDB and Lance files."""

from __future__ import annotations

import time

import pytest
from distributed import get_task_stream

from embedscale.jobs.states import JobStatus
from tests import faults
from tests.conftest import SAMPLE_CORPUS, started_service
from tests.helpers import read_rows

pytestmark = pytest.mark.slow


@pytest.fixture
def service(cluster, tmp_path):
    """The control plane on the shared cluster, splitting ranges of a second of model time or
    more (4 s by default: the test's document is some 6 s of model time on this machine)."""
    svc = started_service(cluster, tmp_path / "data", min_range_seconds=1.0)
    yield svc
    svc.close()


@pytest.fixture
def long_document(tmp_path):
    """One text file of 72 KB (~280 chunks of 64 tokens): one document, one partition."""
    folder = tmp_path / "long"
    folder.mkdir()
    text = "\n\n".join(
        (SAMPLE_CORPUS / "stdlib" / name).read_text()
        for name in ("collections-reference.txt", "itertools-reference.txt")
    )
    (folder / "reference.txt").write_text(text)
    return folder


def submit(service, source, table):
    return service.submit(
        "local", {"table": table, "source": str(source), "chunk_tokens": 64, "overlap_tokens": 0}
    )


def assert_each_chunk_once(service, final, data_dir):
    """The job's one partition done, its document's chunks 0..n-1 in the table each once."""
    assert final.status == JobStatus.SUCCEEDED, final.error
    assert final.partitions_total == final.partitions_done == 1
    table = read_rows(data_dir, final.table_name, ["id", "chunk_index"])
    numbers = sorted(table.column("chunk_index").to_pylist())
    assert numbers == list(range(final.chunks_done)) and final.chunks_done > 200
    assert len(set(table.column("id").to_pylist())) == table.num_rows
    report = service.verify_table("local", final.table_name)
    assert report.ok and not report.to_dict()["problems"], report.to_dict()


def ran_on_both_workers_at_once(stream: list[dict], job_id: str) -> bool:
    """Whether tasks of the job's partition ran on two workers at overlapping times."""
    spans: dict[str, list[tuple[float, float]]] = {}
    for task in stream:
        if f"embed-partition-{job_id}-0-" not in str(task["key"]):
            continue
        for step in task["startstops"]:
            if step["action"] == "compute":
                spans.setdefault(task["worker"], []).append((step["start"], step["stop"]))
    if len(spans) < 2:
        return False
    first, second = list(spans.values())[:2]
    return any(a < d and c < b for a, b in first for c, d in second)


def test_a_long_document_alone_runs_on_both_workers_and_commits_once(
    cluster, service, long_document, tmp_path
):
    with get_task_stream(cluster.client) as stream:
        final = service.wait(submit(service, long_document, "long").id, timeout=240)
    assert_each_chunk_once(service, final, tmp_path / "data")
    assert ran_on_both_workers_at_once(stream.data, final.id)
    assert not service.runner._feeder._groups  # every range sorted out


def test_a_range_that_fails_takes_its_partition_back_to_its_start(
    cluster, service, long_document, tmp_path
):
    """The first write in the cluster fails after its files are written: that is a range's
    (the first slice before the split writes nothing; a range read again writes at once).
    The partition runs again from its start; the failed range's fragments and those of the
    range cancelled with it are never committed."""
    plugin = faults.FailOnce(str(tmp_path / "fault-happened"))
    cluster.client.register_plugin(plugin)
    try:
        with get_task_stream(cluster.client) as stream:
            final = service.wait(submit(service, long_document, "failing").id, timeout=240)
    finally:
        cluster.client.unregister_worker_plugin(plugin.name)
    assert (tmp_path / "fault-happened").exists()
    assert_each_chunk_once(service, final, tmp_path / "data")
    assert [p.attempts for p in service.store.partitions(final.id)] == [1]
    assert ran_on_both_workers_at_once(stream.data, final.id)


def test_a_cancel_takes_every_range_and_commits_nothing(service, long_document, tmp_path):
    job = submit(service, long_document, "cancelled")
    feeder = service.runner._feeder
    deadline = time.monotonic() + 120
    while not feeder._groups and time.monotonic() < deadline:
        time.sleep(0.05)
    assert feeder._groups, "the partition was never split"
    service.cancel(job.id)
    final = service.wait(job.id, timeout=120)
    assert final.status == JobStatus.CANCELLED
    assert read_rows(tmp_path / "data", "cancelled", ["id"]).num_rows == 0
    deadline = time.monotonic() + 60
    while (feeder._groups or len(feeder)) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not feeder._groups and not len(feeder)
