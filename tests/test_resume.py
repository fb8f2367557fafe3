"""Kill -9 the process that owns a job mid-run; starting again finishes it exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import lance
import pytest

from embedscale.jobs.local_run import EmbedRequest, run_embedding
from embedscale.jobs.store.duckdb_store import Store
from tests.corpora import jsonl_corpus
from tests.helpers import assert_verified, embedscale_in_process

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "embedscale", *args]


def committed_version(uri) -> int:
    """The table's version, 0 while it is not there or not yet readable (its folder appears
    before its first manifest: the process being watched is creating it)."""
    try:
        return lance.dataset(str(uri)).version if uri.exists() else 0
    except (ValueError, OSError):
        return 0


def test_kill_minus_9_mid_job_then_resume(cluster, tmp_path):
    corpus = jsonl_corpus(
        tmp_path / "c.jsonl", rows=112, text_chars=250
    )  # 7 partitions: 3 commits, the kill
    data = tmp_path / "data"
    uri = data / "lancedb" / "docs.lance"
    # The driver and its worker processes share a new process group: kill them all at once,
    # as a machine losing power would.
    proc = subprocess.Popen(
        cli(
            "run",
            str(corpus),
            "--table",
            "docs",
            "--data-dir",
            str(data),
            "--workers",
            "2",
            "--chunk-tokens",
            "32",
            "--json",
        ),
        env=ENV,
        cwd=ROOT,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 180
    while committed_version(uri) < 4:  # created + 3 commits
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.monotonic() < deadline, "no commits"
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    rows_at_kill = lance.dataset(str(uri)).count_rows()

    # Started again: `embedscale jobs resume`, here in this process on the session's cluster
    # (what was killed was the process that owned the job, and its workers).
    resumed = embedscale_in_process(
        "jobs",
        "resume",
        "--data-dir",
        str(data),
        "--scheduler",
        cluster.client.scheduler.address,
        "--json",
    )
    assert resumed.returncode == 0, resumed.stderr
    summary = json.loads(resumed.stdout.strip().splitlines()[-1])
    assert summary["status"] == "succeeded"

    ids = lance.dataset(str(uri)).to_table(columns=["id"]).column("id").to_pylist()
    reference = run_embedding(
        EmbedRequest(
            table="reference", source=str(corpus), chunk_tokens=32, data_dir=str(tmp_path / "ref")
        ),
        cluster,
    )
    ref_ids = lance.dataset(reference.table_uri).to_table(columns=["id"]).column("id")
    assert sorted(ids) == sorted(ref_ids.to_pylist())  # nothing lost, nothing doubled
    assert 0 < rows_at_kill < len(ids)
    assert_verified(data, "docs")

    store = Store(data / "embedscale.duckdb")
    job = store.get_job(summary["id"])
    assert job.partitions_done == job.partitions_total
    assert job.chunks_done == len(ids) == store.usage("local")[0]  # the ledger matches the rows
    assert [s for s, _ in job.history] == ["queued", "running", "succeeded"]


class SimulatedCrash(BaseException):
    """Ends the runner's thread the way a dying process ends everything."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_partition_committed_but_not_recorded_is_taken_from_the_table(cluster, tmp_path):
    from embedscale.jobs.service import JobService

    data = tmp_path / "data"
    first = JobService(data, cluster)
    record_partitions_done = first.store.record_partitions_done
    calls = []

    def crash_after_the_first_commit(done, *args, **kwargs):
        if not calls:
            calls.append(done)
            raise SimulatedCrash("after the commit, before the record")
        return record_partitions_done(done, *args, **kwargs)

    first.store.record_partitions_done = crash_after_the_first_commit
    first.start()
    job = first.submit(
        "local",
        {
            "table": "t",
            "chunk_tokens": 32,
            "source": str(jsonl_corpus(tmp_path / "c.jsonl", rows=64, text_chars=250)),
        },
    )
    deadline = time.monotonic() + 120
    while first.runner.alive:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    lost_partitions = {d.partition for d in calls[0]}
    first.close(timeout=0)

    second = JobService(data, cluster)
    second.start()
    final = second.wait(job.id, timeout=120)
    partitions = {p.partition.index: p for p in second.store.partitions(job.id)}
    for lost in lost_partitions:  # taken from the table, not run again
        assert partitions[lost].status == "done" and partitions[lost].attempts == 0
    uri = data / "lancedb" / "t.lance"
    ids = lance.dataset(str(uri)).to_table(columns=["id"]).column("id").to_pylist()
    assert final.status == "succeeded" and len(ids) == len(set(ids)) == final.chunks_done
    assert second.store.usage("local")[0] == len(ids)
    second.close()


def test_graceful_stop_records_in_flight_work_and_resumes_later(cluster, tmp_path):
    from embedscale.jobs.service import JobService

    data = tmp_path / "data"
    first = JobService(data, cluster)
    first.start()
    job = first.submit(
        "local",
        {
            "table": "t",
            "chunk_tokens": 32,
            "source": str(jsonl_corpus(tmp_path / "c.jsonl", rows=112, text_chars=250)),
        },
    )
    deadline = time.monotonic() + 120
    while first.get(job.id).partitions_done < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    in_flight = first.runner._in_flight()
    first.stop(timeout=60)  # no new partitions; in-flight ones finish and are recorded
    stopped = first.get(job.id)
    assert stopped.status == "running" and in_flight > 0
    assert stopped.partitions_done < stopped.partitions_total
    from embedscale.engine.sink.lance_sink import ChunkTable
    from embedscale.engine.tables.commit_log import commits_after, committed_partitions

    table = ChunkTable(data, "t")
    recorded = {p.partition.index for p in first.store.partitions(job.id) if p.status == "done"}
    # nothing committed unrecorded (the table's whole history read)
    assert set(committed_partitions(commits_after(table, 0), job.id)) == recorded
    first.close()

    second = JobService(data, cluster)
    second.start()
    final = second.wait(job.id, timeout=120)
    ids = lance.dataset(table.uri).to_table(columns=["id"]).column("id").to_pylist()
    assert final.status == "succeeded" and len(ids) == len(set(ids)) == final.chunks_done
    second.close()
