"""A job's rates and ETA in chunks: pure arithmetic, checked without a cluster or a database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from embedscale.jobs.policies.rates import expected_chunks, job_rates
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.records import JobRecord


def rates(done=0, tokens=0, seconds=10.0, running=True, estimated=100, p_done=1, p_total=4):
    return job_rates(
        done,
        tokens,
        seconds,
        running=running,
        estimated_chunks=estimated,
        partitions_done=p_done,
        partitions_total=p_total,
    )


def test_rates_and_eta_from_the_chunks_left():
    r = rates(done=25, tokens=2500, seconds=10.0)
    assert (r.chunks_per_s, r.tokens_per_s) == (2.5, 250.0)
    assert r.eta_seconds == pytest.approx(30.0)  # 75 chunks left at 2.5 chunks/s


@pytest.mark.parametrize(
    "case",
    [
        {"done": 0},  # no rate yet
        {"done": 10, "seconds": None},  # not started
        {"done": 10, "seconds": 0.0},
        {"done": 10, "running": False},  # queued, finished, cancelling: no ETA
        {"done": 100, "p_done": 4},  # every partition in
        {"done": 150, "p_done": 4},  # estimate exceeded, every partition in
    ],
)
def test_no_eta_where_none_can_be_told(case):
    assert rates(**case).eta_seconds is None


def test_an_exceeded_estimate_extrapolates_from_partitions():
    # 150 chunks from 2 of 4 partitions: about 300 in all, 150 left at 15 chunks/s.
    assert expected_chunks(100, 150, 2, 4) == 300
    assert rates(done=150, p_done=2).eta_seconds == pytest.approx(10.0)
    assert rates(done=150, p_done=2).expected_chunks == 300
    assert expected_chunks(100, 150, 0, 4) is None  # nothing to extrapolate from


def test_not_started_reports_zero_rates():
    r = rates(done=0, seconds=None)
    assert (r.chunks_per_s, r.tokens_per_s, r.eta_seconds) == (0.0, 0.0, None)


def _record(status: JobStatus, **counts) -> JobRecord:
    now = datetime.now(UTC)
    return JobRecord(
        id="j",
        tenant="t",
        spec={},
        status=status,
        priority="normal",
        table_name="x",
        history=[],
        created_at=now,
        updated_at=now,
        started_at=now - timedelta(seconds=20),
        **counts,
    )


def test_the_record_carries_rates_and_eta():
    data = _record(
        JobStatus.RUNNING,
        estimated_chunks=400,
        chunks_done=100,
        tokens_done=5000,
        partitions_done=1,
        partitions_total=4,
    ).to_dict()
    assert data["chunks_per_s"] == pytest.approx(5.0, rel=0.01)
    assert data["tokens_per_s"] == pytest.approx(250.0, rel=0.01)
    assert data["eta_seconds"] == pytest.approx(60.0, rel=0.01)  # 300 left at 5 chunks/s
    assert data["expected_chunks"] == 400
    done = _record(
        JobStatus.SUCCEEDED,
        estimated_chunks=400,
        chunks_done=400,
        partitions_done=4,
        partitions_total=4,
    ).to_dict()
    assert done["eta_seconds"] is None and done["chunks_per_s"] > 0
    assert done["expected_chunks"] == 400
    queued = _record(JobStatus.QUEUED, estimated_chunks=50, partitions_total=2).to_dict()
    assert (queued["expected_chunks"], queued["eta_seconds"]) == (50, None)
