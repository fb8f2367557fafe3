"""Local workers are forked from a server that has the engine's heavy modules imported
(engine/cluster/worker_start.py): a worker starts in well under a second instead of importing
torch afresh, and nothing that is unsafe to fork is in that server."""

from __future__ import annotations

import os
import sys

import pytest

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.cluster.worker_start import (
    PRELOAD,
    START_METHOD_ENV,
    worker_start_method,
)
from embedscale.engine.errors import EmbedscaleError


def _parent_and_modules() -> tuple[str, bool, bool]:
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as f:
        parent = f.read().replace(b"\0", b" ").decode()
    return parent, "torch" in sys.modules, "lancedb" in sys.modules


def test_the_session_clusters_workers_are_forked_from_the_preloading_server(cluster):
    seen = cluster.client.run(_parent_and_modules)
    assert len(seen) == 2
    for parent, has_torch, _ in seen.values():
        assert "multiprocessing.forkserver" in parent
        assert "sentence_transformers" in parent  # the preload it was started with
        assert has_torch


def test_a_worker_dask_restarts_is_forked_too(cluster):
    # Its nanny reads the start method again, after start_cluster has returned. A cluster of
    # its own, with one worker forked from the server the tests' cluster started (`cluster`):
    # a restarted worker of the tests' cluster would drop the model it holds, for the next
    # test to load again, and its restart waits for that worker to wind down (seconds).
    with start_cluster(ClusterSpec(n_workers=1, dashboard_address="none")) as own:
        (address,) = own.client.scheduler_info()["workers"]
        own.client.restart_workers([address])
        own.client.wait_for_workers(1)
        seen = own.client.run(_parent_and_modules)
    assert len(seen) == 1
    for parent, has_torch, _ in seen.values():
        assert "multiprocessing.forkserver" in parent and has_torch


def test_nothing_unsafe_to_fork_is_preloaded():
    # lancedb starts a thread when imported and lance warns on every fork: workers import them.
    assert not {"lancedb", "lance"} & {name.split(".")[0] for name in PRELOAD}
    assert "embedscale.engine.tasks.partition_task" not in PRELOAD  # it imports lance


def test_the_start_method_follows_the_environment(monkeypatch):
    monkeypatch.delenv(START_METHOD_ENV, raising=False)
    assert worker_start_method() == "forkserver"
    monkeypatch.setenv(START_METHOD_ENV, "Spawn")
    assert worker_start_method() == "spawn"
    monkeypatch.setenv(START_METHOD_ENV, "fork")
    with pytest.raises(EmbedscaleError, match=f"unknown {START_METHOD_ENV}='fork'"):
        worker_start_method()
