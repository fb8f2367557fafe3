"""Admission counts what is already promised (issue 16, item 7): a tenant's quota check counts
today's usage plus the chunks its queued and running jobs are still expected to embed, in the
transaction that inserts the job, so a burst of submissions never takes more than the daily
quota, and the concurrent-job limit holds under the same burst."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime

import httpx
import pytest

from embedscale.jobs.errors import QuotaExceededError
from embedscale.jobs.service import JobService

QUOTA = 100
TEXTS_PER_JOB = 10  # short distinct texts: one chunk each, as estimated
SUBMISSIONS = 50


def texts(job: int) -> list[str]:
    return [f"burst job {job} note {i} about heaps and queues" for i in range(TEXTS_PER_JOB)]


def at_once(n: int, submit) -> list:
    """`submit(i)` for i < n, from n threads released together."""
    start = threading.Barrier(n)

    def one(i: int):
        start.wait()
        return submit(i)

    with ThreadPoolExecutor(n) as pool:
        return list(pool.map(one, range(n)))


def test_submissions_at_once_are_admitted_within_the_quota(tmp_path):
    """Fifty threads submit at once (the store's group commit writes them together): the jobs
    admitted promise at most the quota, the others are refused naming what is promised; a
    cancel gives its promise back, and a reopened store knows the same promises."""
    service = JobService(tmp_path / "data")
    service.create_tenant("acme", "enterprise")
    service.set_limits("acme", daily_chunks=QUOTA)

    def submit(i: int):
        try:
            return service.submit("acme", {"table": "t", "texts": texts(i)})
        except QuotaExceededError as refused:
            return refused

    outcomes = at_once(SUBMISSIONS, submit)
    admitted = [o for o in outcomes if not isinstance(o, QuotaExceededError)]
    refused = [o for o in outcomes if isinstance(o, QuotaExceededError)]
    assert sum(job.estimated_chunks for job in admitted) <= QUOTA
    assert len(admitted) == QUOTA // TEXTS_PER_JOB and len(refused) == SUBMISSIONS - len(admitted)
    assert all(r.promised == QUOTA and r.remaining == 0 for r in refused)
    assert "counting the 100 promised to its queued and running jobs" in str(refused[0])
    assert service.quota_refusals.counts().get("acme") == len(refused)
    usage = service.usage("acme")
    assert (usage.used_chunks, usage.remaining_chunks, usage.promised_chunks) == (0, QUOTA, QUOTA)
    # /v1/embeddings reserves from the same room: none is left.
    assert service.store.charge_usage("acme", 1, 0, QUOTA) is None

    service.cancel(admitted[0].id)  # queued: its promise ends with it
    assert service.usage("acme").promised_chunks == QUOTA - TEXTS_PER_JOB
    again = service.submit("acme", {"table": "t", "texts": texts(SUBMISSIONS)})
    with pytest.raises(QuotaExceededError):
        service.submit("acme", {"table": "t", "texts": texts(SUBMISSIONS + 1)})
    service.close()

    reopened = JobService(tmp_path / "data")  # the promises are read back from the file
    assert reopened.usage("acme").promised_chunks == QUOTA
    assert reopened.get(again.id).estimated_chunks == TEXTS_PER_JOB
    with pytest.raises(QuotaExceededError):
        reopened.submit("acme", {"table": "t", "texts": texts(SUBMISSIONS + 2)})
    reopened.close()


def most_running_at_once(jobs: list[dict]) -> int:
    """The most jobs running at one instant, from the jobs' started_at and finished_at."""
    spans = [
        (datetime.fromisoformat(j["started_at"]), datetime.fromisoformat(j["finished_at"]))
        for j in jobs
    ]
    return max(sum(1 for start, end in spans if start <= moment < end) for moment, _ in spans)


@pytest.mark.slow
def test_a_burst_over_http_never_charges_or_writes_past_the_quota(server):
    """Fifty submissions at once to a real server, by a tenant with a small daily quota and
    two concurrent jobs: the jobs admitted fit the quota and all succeed (none fails half
    written with quota_exhausted); usage and the table's rows stay within the quota and equal
    each other; at no moment did more than two of the tenant's jobs run."""
    client = server.tenant("burst", tier="enterprise")
    with server.admin() as admin:
        limits = {"daily_chunks": QUOTA, "max_concurrent_jobs": 2}
        assert admin.patch("/v1/tenants/burst", json=limits).status_code == 200
    headers = dict(client.headers)

    def submit(i: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers=headers, timeout=120) as own:
            return own.post("/v1/jobs", json={"table": "burst", "texts": texts(i)})

    answers = at_once(SUBMISSIONS, submit)
    assert {a.status_code for a in answers} <= {201, 429}, [a.text for a in answers]
    admitted = [a.json() for a in answers if a.status_code == 201]
    refused = [a.json() for a in answers if a.status_code == 429]
    assert sum(job["estimated_chunks"] for job in admitted) <= QUOTA
    assert refused and all(r["quota"]["promised"] > 0 for r in refused)

    finals = []
    for job in admitted:
        deadline = time.monotonic() + 180
        while (final := client.get(f"/v1/jobs/{job['id']}").json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            assert time.monotonic() < deadline, final
            time.sleep(0.2)
        finals.append(final)
    assert [(f["status"], f["error_reason"]) for f in finals] == [("succeeded", None)] * len(
        admitted
    )
    used = client.get("/v1/usage").json()
    rows = client.get("/v1/tables/burst").json()["rows"]
    assert rows == used["used_chunks"] == sum(f["chunks_done"] for f in finals) <= QUOTA
    assert used["promised_chunks"] == 0
    assert most_running_at_once(finals) <= 2
