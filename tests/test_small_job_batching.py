"""Small inline jobs arriving together share one Dask task (and the model's forward passes),
yet each is committed, charged and finished as its own job, exactly once."""
from __future__ import annotations

import lance
import pytest
from distributed import wait

from engine.sink import ChunkTable
from jobs.runner_events import TaskDone
from jobs.service import JobService
from jobs.states import JobStatus

pytestmark = pytest.mark.slow


def test_small_jobs_of_several_tenants_share_a_task_and_are_charged_apart(cluster, tmp_path):
    service = JobService(tmp_path / "data", cluster)  # the loop is not started: each step
    runner = service.runner                           # of it is taken here, by hand
    for tenant in ("acme", "globex"):
        service.create_tenant(tenant, "enterprise")
    texts = {("acme", 0): ["heaps keep the smallest item first"],
             ("acme", 1): ["deques pop at both ends", "queues order work"],
             ("globex", 0): ["a priority queue orders work by urgency"]}
    jobs = {}
    for (tenant, n), batch in texts.items():
        record = service.submit(tenant, {"table": f"t{n}", "texts": batch})
        record = service.store.set_status(record.id, JobStatus.RUNNING)
        runner._jobs[record.id] = runner._preparer.prepare(record, resumed=False)
        jobs[(tenant, n)] = record.id
    runner._feed()
    [(key, members)] = runner._tasks.items()  # one task for the three jobs
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
    ids = []
    for n in range(2):
        record = service.submit("local", {"table": "t", "texts": [f"text number {n}"]})
        record = service.store.set_status(record.id, JobStatus.RUNNING)
        runner._jobs[record.id] = runner._preparer.prepare(record, resumed=False)
        ids.append(record.id)
    runner._feed()
    [real] = {job.in_flight[0] for job in runner._jobs.values()}
    lost = _LostTask()  # what a task lost with its worker looks like to the runner
    runner._tasks[lost.key] = runner._tasks.pop(real.key)
    for job in runner._jobs.values():
        job.in_flight[0] = lost
    runner.handle(TaskDone(lost))
    assert all(runner._jobs[i].solo == {0} and list(runner._jobs[i].pending) == [0]
               for i in ids)
    assert all(runner._jobs[i].attempts == {} for i in ids)  # no attempt counted
    runner._feed()
    assert sorted(len(m) for m in runner._tasks.values()) == [1, 1]  # now each alone
    service.close()


class _LostTask:
    key = "embed-partitions-lost"
    status = "error"

    def exception(self):
        return OSError("injected: the task failed as a whole")

    def release(self):
        pass
