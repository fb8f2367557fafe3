"""Small inline jobs arriving together share one Dask task (and the model's forward passes),
yet each is committed, charged and finished as its own job, exactly once."""

from __future__ import annotations

import lance
import pytest
from distributed import wait
from distributed.scheduler import KilledWorker

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.runner.events import TaskDone
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus

pytestmark = pytest.mark.slow


def test_small_jobs_of_several_tenants_share_a_task_and_are_charged_apart(cluster, tmp_path):
    service = JobService(tmp_path / "data", cluster)  # the loop is not started: each step
    runner = service.runner  # of it is taken here, by hand
    for tenant in ("acme", "globex"):
        service.create_tenant(tenant, "enterprise")
    texts = {
        ("acme", 0): ["heaps keep the smallest item first"],
        ("acme", 1): ["deques pop at both ends", "queues order work"],
        ("globex", 0): ["a priority queue orders work by urgency"],
    }
    jobs = {}
    for (tenant, n), batch in texts.items():
        record = service.submit(tenant, {"table": f"t{n}", "texts": batch})
        record = service.store.set_status(record.id, JobStatus.RUNNING)
        runner._jobs[record.id] = runner._preparer.prepare(record, resumed=False)
        jobs[(tenant, n)] = record.id
    runner._feed()
    [(key, members)] = runner._feeder.tasks.items()  # one task for the three jobs
    assert key.startswith("embed-partitions-") and len(members) == 3
    future = next(iter(runner._jobs.values())).in_flight[0]
    wait([future])
    runner.handle(TaskDone(future))
    runner._act()  # commits the batch: one Lance commit per table, one DuckDB transaction
    for (tenant, n), job_id in jobs.items():
        final = service.get(job_id)
        assert final.status == "succeeded" and final.chunks_done == len(texts[(tenant, n)])
        table = ChunkTable(service.tenant_data_dir(tenant), f"t{n}")
        rows = lance.dataset(table.uri).to_table(columns=["job_id"]).column("job_id")
        assert rows.to_pylist() == [job_id] * len(texts[(tenant, n)])
    assert service.store.usage("acme")[0] == 3 and service.store.usage("globex")[0] == 1
    service.close()


def test_a_shared_task_that_fails_as_a_whole_runs_its_partitions_alone(cluster, tmp_path):
    service = JobService(tmp_path / "data", cluster)
    runner = service.runner
    ids = [
        prepared_by_hand(service, {"table": "t", "texts": [f"text number {n}"]}) for n in range(2)
    ]
    runner._feed()
    [real] = {job.in_flight[0] for job in runner._jobs.values()}
    lost = _LostTask()  # what a task lost with its worker looks like to the runner
    runner._feeder.tasks[lost.key] = runner._feeder.tasks.pop(real.key)
    for job in runner._jobs.values():
        job.in_flight[0] = lost
    runner.handle(TaskDone(lost))
    assert all(runner._jobs[i].solo == {0} and list(runner._jobs[i].pending) == [0] for i in ids)
    assert all(runner._jobs[i].attempts == {} for i in ids)  # no attempt counted
    runner._feed()
    assert sorted(len(m) for m in runner._feeder.tasks.values()) == [1, 1]  # now each alone
    service.close()


def test_partitions_of_a_task_whose_workers_died_run_alone_one_at_a_time(cluster, tmp_path):
    """KilledWorker does not say which partition killed the workers: each runs again alone,
    nothing beside it, and one that then finishes is committed with no attempt counted."""
    service = JobService(tmp_path / "data", cluster)
    runner = service.runner
    ids = [
        prepared_by_hand(service, {"table": "t", "texts": [f"text number {n}"]}) for n in range(2)
    ]
    third = service.submit("local", {"table": "t", "texts": ["a later job"]})
    third = service.store.set_status(third.id, JobStatus.RUNNING)
    runner._feed()
    [real] = {job.in_flight[0] for job in runner._jobs.values()}
    lost = _LostTask(KilledWorker("embed-partitions-lost", "tcp://127.0.0.1:1", 1))
    runner._feeder.tasks[lost.key] = runner._feeder.tasks.pop(real.key)
    for job in runner._jobs.values():
        job.in_flight[0] = lost
    runner.handle(TaskDone(lost))
    assert all(runner._jobs[i].suspects == {0} and not runner._jobs[i].pending for i in ids)
    runner._jobs[third.id] = runner._preparer.prepare(third, resumed=False)
    for suspect in ids:
        runner._feed()
        [(key, members)] = runner._feeder.tasks.items()  # the suspect, and nothing beside it
        assert members == [(suspect, 0)]
        runner._feed()
        assert list(runner._feeder.tasks) == [key]  # still alone while it runs
        future = runner._jobs[suspect].in_flight[0]
        wait([future])
        runner.handle(TaskDone(future))
        runner._act()
        final = service.get(suspect)
        assert final.status == "succeeded", final
        assert [p.attempts for p in service.store.partitions(suspect)] == [0]
    assert 0 in runner._jobs[third.id].in_flight  # its turn came after the suspects
    service.close()


def prepared_by_hand(service: JobService, spec: dict, tenant: str = "local") -> str:
    """Submit a job and make it running and prepared in the runner, whose loop is not
    started: each step of it is then taken by the test."""
    record = service.store.set_status(service.submit(tenant, spec).id, JobStatus.RUNNING)
    service.runner._jobs[record.id] = service.runner._preparer.prepare(record, resumed=False)
    return record.id


class _LostTask:
    """What a task lost with its worker looks like to the runner."""

    key = "embed-partitions-lost"
    status = "error"

    def __init__(self, error: BaseException | None = None) -> None:
        self.error = error or OSError("injected: the task failed as a whole")

    def exception(self):
        return self.error

    def release(self):
        pass
