"""Compaction beside the runner (jobs/runner/table_maintenance.py): a table that small jobs
splinter into
many fragments is compacted while jobs keep committing to it, and nothing is lost or doubled."""

from __future__ import annotations

import time
from datetime import timedelta

import lance
import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.runner.loop import RunnerConfig
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests.helpers import assert_verified

pytestmark = pytest.mark.slow


def test_a_splintered_table_is_compacted_while_jobs_commit(cluster, tmp_path):
    service = JobService(
        tmp_path / "data",
        cluster,
        # a task, a fragment, per small job; every version no job needs is removed at once
        runner_config=RunnerConfig(
            compact_after_fragments=6, batch_partitions=1, version_retention=timedelta(0)
        ),
    )
    service.start()
    try:
        texts = [
            [f"document {i} of a small job", f"its second line, number {i}"] for i in range(40)
        ]
        jobs = [service.submit("local", {"table": "t", "texts": t}) for t in texts]
        finals = [service.wait(j.id, timeout=300) for j in jobs]
        assert {f.status for f in finals} == {JobStatus.SUCCEEDED}
        assert service.runner.maintenance.compactions >= 1
        table = ChunkTable(service.tenant_data_dir("local"), "t")
        ds = lance.dataset(table.uri)
        rows = ds.to_table(columns=["id", "job_id"]).to_pylist()
        assert len(rows) == len({r["id"] for r in rows}) == 80  # each row once
        assert {r["job_id"] for r in rows} == {j.id for j in jobs}
        # 40 partitions committed, at least 40 fragments; compaction merged them.
        assert len(ds.get_fragments()) < 40 - 6
        # Each run is a job of kind maintenance that says what its steps did.
        maintenance = service.runner.maintenance
        deadline = time.monotonic() + 60
        while maintenance.running(table.uri):  # the run under way, if any, ends
            assert time.monotonic() < deadline
            time.sleep(0.05)
        runs, _ = service.list(kind="maintenance")
        assert runs and {r.status for r in runs} == {JobStatus.SUCCEEDED}
        details = runs[-1].details
        assert details["compaction"]["fragments_before"] >= 6
        assert details["indexes"]["rows"] > 0  # the doc_id and text indexes, once it has rows
        assert "cleanup" in details and "keep_from_version" in details
        assert {i["name"] for i in details["indexes"]["indexes"]} >= {"doc_id_idx", "text_idx"}
        assert sum(r.details["cleanup"]["versions"] for r in runs) > 0
        assert ds.count_rows() == 80
    finally:
        service.close()
    # The versions removed were none the ledger needs: the table still proves every job's rows.
    assert_verified(tmp_path / "data", "t")
