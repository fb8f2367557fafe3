"""A real multi-process cluster: `dask scheduler` and two `dask worker` processes on 127.0.0.1,
as on separate hosts (their own folders, no AWS credentials of their own), with tables and
sources on a real S3 server. A worker killed mid-job costs nothing: the job ends with exactly
the ids of a clean run."""

from __future__ import annotations

import json
import threading

import lance
import pytest

from embedscale.engine.cluster.start import ClusterSpec, start_cluster
from embedscale.engine.storage.locations import Location, resolve_storage_options
from embedscale.engine.tables.catalog import read_table
from embedscale.jobs.local_run import EmbedRequest, run_embedding
from tests.conftest import SAMPLE_CORPUS
from tests.dask_processes import DaskProcesses, run_cli_in_process
from tests.helpers import assert_verified, logged

pytestmark = pytest.mark.slow


def chunk_ids(home: Location, table: str) -> list[str]:
    return read_table(home, table, ["id"]).column("id").to_pylist()


@pytest.fixture(scope="module")
def procs(tmp_path_factory):
    """One scheduler and two workers for the module's tests: each `dask worker` process
    imports torch and loads the model, the costly part of a test here. A test that kills a
    worker leaves it dead; the next one starts it again (DaskProcesses.revive). The test that
    kills one runs last, after the one that restarts them all: no worker starts for nothing."""
    processes = DaskProcesses(tmp_path_factory.mktemp("dask"), workers=2)
    yield processes
    processes.stop()


def test_a_scheduler_restarted_mid_job_costs_nothing(procs, small_corpus, tmp_path):
    """The client cancels every open future when it loses its scheduler; the runner puts
    their partitions back and the job ends with exactly the clean run's ids."""
    procs.revive()
    data_dir = tmp_path / "data"
    job = {
        "source": str(small_corpus),
        "data_dir": str(data_dir),
        "chunk_tokens": 64,
        "partition_bytes": 2048,
    }
    with start_cluster(ClusterSpec(kind="address", address=procs.address)) as cluster:
        procs.wait_for_workers(cluster.client, 2)
        clean = run_embedding(EmbedRequest(table="clean", **job), cluster)
        restarted = threading.Event()

        def restart_after_first_commit(progress) -> None:
            if progress.partitions_done >= 1 and not restarted.is_set():
                restarted.set()
                procs.restart_scheduler()

        with logged("embedscale.jobs.runner.loop") as lines:
            summary = run_embedding(
                EmbedRequest(table="restarted", **job), cluster, restart_after_first_commit
            )
        assert restarted.is_set() and summary.ok, summary.error
        # Put back when cancelled, not found missing later (tests/test_never_lose_work.py).
        assert not [line for line in lines if "preparing it again" in line]
        assert summary.partitions > 3
    ids = lance.dataset(summary.table_uri).to_table(columns=["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == clean.chunks == summary.chunks
    clean_ids = lance.dataset(clean.table_uri).to_table(columns=["id"]).column("id")
    assert set(ids) == set(clean_ids.to_pylist())
    assert_verified(data_dir, "restarted")


def test_a_killed_worker_process_costs_nothing(procs, s3_store, tmp_path):
    procs.revive()
    bucket = s3_store.make_bucket()
    # Its two biggest files left out: 24 KB in 160 chunks of 64 tokens, about 6 partitions.
    for path in (SAMPLE_CORPUS / "stdlib").glob("*.txt"):
        if path.name not in ("collections-reference.txt", "itertools-reference.txt"):
            s3_store.upload(path, f"s3://{bucket}/docs/{path.name}")
    source, tables = f"s3://{bucket}/docs/", f"s3://{bucket}/tables"
    home = Location(tables, resolve_storage_options(s3_store.options))
    with start_cluster(ClusterSpec(kind="address", address=procs.address)) as cluster:
        procs.wait_for_workers(cluster.client, 2)

        # A clean run, through the CLI and --scheduler (the command in this process).
        done = run_cli_in_process(
            "run",
            source,
            "--table",
            "clean",
            "--scheduler",
            procs.address,
            "--tables-uri",
            tables,
            "--data-dir",
            str(tmp_path / "cli"),
            "--chunk-tokens",
            "64",
            "--json",
            env=s3_store.env,
        )
        assert done.returncode == 0, done.stderr
        clean = json.loads(done.stdout)
        assert clean["status"] == "succeeded" and clean["chunks"] > 0

        # The same job; one worker's host is lost once the first partition is committed.
        killed = threading.Event()

        def kill_after_first_commit(progress) -> None:
            if progress.partitions_done >= 1 and not killed.is_set():
                killed.set()
                procs.kill("w2")

        summary = run_embedding(
            EmbedRequest(
                table="killed",
                source=source,
                tables_uri=tables,
                storage_options=s3_store.options,
                data_dir=str(tmp_path / "k"),
                chunk_tokens=64,
                partition_bytes=4096,
            ),
            cluster,
            kill_after_first_commit,
        )
        assert killed.is_set() and summary.ok
        assert summary.partitions > 2  # work was spread, so w2 held some when it died
        left = cluster.client.scheduler_info(n_workers=-1)["workers"].values()
        assert [w["name"] for w in left] == ["w1"]
    clean_ids, killed_ids = chunk_ids(home, "clean"), chunk_ids(home, "killed")
    assert len(killed_ids) == len(set(killed_ids)) == clean["chunks"]
    assert set(killed_ids) == set(clean_ids)
    assert_verified(tmp_path / "k", "killed", "--tables-uri", tables, env=s3_store.env)


def test_a_scheduler_that_does_not_answer_is_one_line(tmp_path):
    done = run_cli_in_process(
        "run",
        str(SAMPLE_CORPUS / "notes"),
        "--table",
        "t",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--data-dir",
        str(tmp_path / "d"),
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and "cannot reach the Dask scheduler at tcp://127.0.0.1:9" in lines[0]
    assert "Traceback" not in done.stderr
