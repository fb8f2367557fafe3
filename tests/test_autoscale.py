"""Autoscaling on the runner's backlog (a spec's `adaptive` section): a real server's cluster
grows from 1 worker to 2 around a burst of work and shrinks back, seen through GET /v1/cluster
and the embedscale_workers gauge; a worker retired mid-job loses nothing."""

from __future__ import annotations

import shutil
import threading
import time

import pytest
import yaml

from embedscale.engine.cluster.autoscale import backlog_target, check_adaptive
from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.errors import EmbedscaleError
from tests.conftest import SAMPLE_CORPUS
from tests.helpers import read_rows, run, wait_done

pytestmark = pytest.mark.slow


def workers_gauge(client) -> float:
    for line in client.get("/metrics").text.splitlines():
        if line.startswith("embedscale_workers "):
            return float(line.split()[1])
    raise AssertionError("no embedscale_workers gauge")


def test_the_cluster_grows_with_the_backlog_and_shrinks_back(tmp_path):
    from tests.api_server import Server

    spec = tmp_path / "adaptive.yaml"
    spec.write_text(
        yaml.safe_dump(
            {
                "kind": "local",
                "threads_per_worker": 1,
                "dashboard_address": "none",
                "adaptive": {
                    "minimum": 1,
                    "maximum": 2,
                    "partitions_per_worker": 2,
                    "interval": "500ms",
                    "wait_count": 4,
                },
            }
        )
    )
    server = Server(tmp_path / "srv", "--cluster", str(spec))
    try:
        # The burst: stdlib without its biggest file, ~360 chunks of 64 tokens, seconds of
        # work for one worker, more than a second worker takes to start.
        shutil.copytree(
            SAMPLE_CORPUS / "stdlib",
            server.root / "stdlib",
            ignore=shutil.ignore_patterns("collections-reference.txt"),
        )
        with server.tenant("burst") as client:
            assert client.get("/v1/cluster").json()["workers"] == 1
            job = client.post(
                "/v1/jobs",
                json={"table": "t", "chunk_tokens": 64, "source": str(server.root / "stdlib")},
            )
            assert job.status_code in (200, 201, 202), job.text
            job_id = job.json()["id"]
            sizes, gauges = [], []
            deadline = time.monotonic() + 300
            while (record := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded",
                "failed",
                "cancelled",
            ):
                assert time.monotonic() < deadline
                sizes.append(client.get("/v1/cluster").json()["workers"])
                gauges.append(workers_gauge(client))
                time.sleep(0.25)
            record = wait_done(client, job_id)
            assert record["status"] == "succeeded", record
            assert record["partitions_total"] > 2
            assert max(sizes) == 2 and max(gauges) == 2  # grown for the burst
            # ... and back to the minimum once the work is done.
            deadline = time.monotonic() + 90
            while client.get("/v1/cluster").json()["workers"] != 1:
                assert time.monotonic() < deadline, "never scaled back down"
                time.sleep(0.5)
            while workers_gauge(client) != 1:  # /metrics is a page up to a second old
                assert time.monotonic() < deadline, "the gauge never came back down"
                time.sleep(0.25)
        ids = read_rows(server.data_dir / "tenants" / "burst", "t", ["id"]).column("id")
        assert len(ids) == len(set(ids.to_pylist())) == record["chunks_done"]
    finally:
        server.stop()


def test_a_worker_retired_mid_job_loses_nothing(tmp_path, small_corpus):
    """What scale-down does to a worker (Dask's graceful retirement), forced mid-job."""
    clean_dir, retired_dir = tmp_path / "clean", tmp_path / "retired"
    with start_cluster(ClusterSpec(n_workers=2, dashboard_address=":0")) as cluster:
        clean = run(
            cluster,
            table="t",
            source=str(small_corpus),
            data_dir=str(clean_dir),
            partition_bytes=2048,
        )
        workers = list(cluster.client.scheduler_info(n_workers=-1)["workers"])
        retiring: list[threading.Thread] = []

        def retire_one(progress) -> None:
            if not retiring:
                retiring.append(
                    threading.Thread(
                        target=cluster.client.retire_workers, kwargs={"workers": [workers[1]]}
                    )
                )
                retiring[0].start()

        from embedscale.jobs.local_run import EmbedRequest, run_embedding

        retired = run_embedding(
            EmbedRequest(
                table="t",
                source=str(small_corpus),
                data_dir=str(retired_dir),
                chunk_tokens=64,
                overlap_tokens=8,
                partition_bytes=2048,
            ),
            cluster,
            retire_one,
        )
        retiring[0].join(timeout=60)
        assert len(cluster.client.scheduler_info(n_workers=-1)["workers"]) == 1
    assert retired.ok and retired.chunks == clean.chunks
    ids = read_rows(retired_dir, "t", ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids))
    assert set(ids) == set(read_rows(clean_dir, "t", ["id"]).column("id").to_pylist())


def test_adaptive_sections_are_checked():
    assert backlog_target(0, 4) == 0 and backlog_target(9, 4) == 3
    check_adaptive({"minimum": 0, "maximum": 10, "partitions_per_worker": 4})
    for bad, message in [
        ({"minimum": 1}, "maximum is required"),
        ({"maximum": 2, "minimum": 3}, "minimum 3 is above maximum 2"),
        ({"maximum": 0}, "maximum must be a whole number >= 1"),
        ({"maximum": 2, "wait": 1}, "unknown keys ['wait']"),
    ]:
        with pytest.raises(EmbedscaleError, match=message.replace("[", r"\[").replace("]", r"\]")):
            check_adaptive(bad)
    with pytest.raises(EmbedscaleError, match="adaptive needs a cluster embedscale starts"):
        ClusterSpec(kind="address", address="tcp://h:8786", adaptive={"maximum": 2}).checked()


def test_the_target_follows_the_runner_backlog_which_dask_cannot_see():
    from distributed import LocalCluster

    from embedscale.engine.cluster.autoscale import BacklogAdaptive

    waiting = [0]
    with LocalCluster(n_workers=0, processes=False, dashboard_address=None) as dask_cluster:
        adaptive = dask_cluster.adapt(
            Adaptive=BacklogAdaptive,
            backlog=lambda: waiting[0],
            partitions_per_worker=4,
            minimum=1,
            maximum=3,
            interval=0,
        )  # no periodic adapting: asked directly
        assert dask_cluster.sync(adaptive.target) == 0  # no task on the scheduler, no backlog
        assert dask_cluster.sync(adaptive.safe_target) == 1  # the minimum
        waiting[0] = 10  # ten partitions the runner holds back: the scheduler has no task
        assert dask_cluster.sync(adaptive.target) == 3
        waiting[0] = 1000
        assert dask_cluster.sync(adaptive.safe_target) == 3  # the maximum


def test_managers_whose_adapt_takes_no_adaptive_class_scale_by_the_backlog_too():
    """As dask-kubernetes' operator KubeCluster: adapt(minimum, maximum) and scale(n) only."""
    from embedscale.engine.cluster.autoscale import start_adaptive

    class OperatorLike:
        def __init__(self) -> None:
            self.asked: list[int] = []

        def adapt(self, minimum=None, maximum=None):
            raise AssertionError("its own adapt would ignore the backlog")

        def scale(self, n: int) -> None:
            self.asked.append(n)

    manager, waiting = OperatorLike(), [0]
    loop = start_adaptive(
        manager,
        lambda: waiting[0],
        {"minimum": 1, "maximum": 5, "partitions_per_worker": 2, "interval": "1h", "wait_count": 2},
    )
    try:
        assert manager.asked == [1]
        waiting[0] = 7
        assert loop.step() == 4 and manager.asked == [1, 4]  # grows at once
        waiting[0] = 100
        assert loop.step() == 5  # never past the maximum
        waiting[0] = 0
        assert loop.step() == 5  # one low look is not enough to shrink
        assert loop.step() == 1 and manager.asked == [1, 4, 5, 1]
    finally:
        loop.stop()
