"""The Python client against the real server."""

from __future__ import annotations

import pytest

from embedscale.api.client.service import ApiError, Client, JobCancelledError, JobFailedError

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server):
    key = server.tenant("pyclient").headers["authorization"].split()[1]
    with Client(server.url, key) as c:
        yield c


def test_submit_wait_search(client):
    job = client.submit(
        "notes",
        texts=["LanceDB stores the vectors.", "Dask runs the tasks."],
        ids=["lance", "dask"],
    )
    record = job.wait(timeout=60)
    assert record["status"] == "succeeded" and job.status() == "succeeded"
    hits = client.search("notes", "which database keeps vectors?", k=2)
    assert hits[0]["doc_id"] == "lance"
    assert [t["name"] for t in client.tables()] == ["notes"]
    assert client.usage()["used_chunks"] == 2
    assert job.id in [j.id for j in client.jobs(table="notes")]


def test_wait_raises_on_failure_and_cancel(client, server):
    # Punctuation is a token a character, below the densest text admission believes in (1.5
    # characters a token: jobs/token_density.py): estimated at 18 chunks, the job is admitted
    # under a 20-chunk quota and fails at its first commit with 26, whatever the timing.
    key = server.tenant("tight").headers["authorization"].split()[1]
    with server.admin() as admin:
        assert admin.patch("/v1/tenants/tight", json={"daily_chunks": 20}).status_code == 200
    with Client(server.url, key) as tight:
        failing = tight.submit("t", texts=["!" * 600], chunk_tokens=32)
        with pytest.raises(JobFailedError, match="quota exhausted"):
            failing.wait(timeout=60)
    server.hold_in_queue("pyclient")  # the job cannot end before it is cancelled
    try:
        doomed = client.submit("doomed", texts=["cancelled before it starts"])
        doomed.cancel()
    finally:
        server.hold_in_queue("pyclient", held=False)
    with pytest.raises(JobCancelledError):
        doomed.wait(timeout=60)


def test_errors_carry_status_and_detail(client):
    with pytest.raises(ApiError) as err:
        client.submit("../bad", texts=["x"])
    assert err.value.status_code == 422
    with pytest.raises(ApiError) as err:
        client.job("nope")
    assert err.value.status_code == 404
    with Client(client.base_url, "es_wrong") as stranger, pytest.raises(ApiError) as err:
        stranger.usage()
    assert err.value.status_code == 401


def test_wait_times_out(client, server):
    server.hold_in_queue("pyclient")  # the job cannot end within the wait
    try:
        job = client.submit("slow", texts=["still queued"])
        with pytest.raises(TimeoutError):
            job.wait(timeout=0.5)
        assert job.status() == "queued"
        job.cancel()
    finally:
        server.hold_in_queue("pyclient", held=False)
