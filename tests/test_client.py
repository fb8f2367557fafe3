"""The Python client against the real server."""
from __future__ import annotations

import pytest

from api.client import ApiError, Client, JobCancelledError, JobFailedError
from tests.corpora import jsonl_corpus

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(server):
    key = server.tenant("pyclient").headers["authorization"].split()[1]
    with Client(server.url, key) as c:
        yield c


def test_submit_wait_search(client):
    job = client.submit("notes", texts=["LanceDB stores the vectors.", "Dask runs the tasks."],
                        ids=["lance", "dask"])
    record = job.wait(timeout=60)
    assert record["status"] == "succeeded" and job.status() == "succeeded"
    hits = client.search("notes", "which database keeps vectors?", k=2)
    assert hits[0]["doc_id"] == "lance"
    assert [t["name"] for t in client.tables()] == ["notes"]
    assert client.usage()["used_chunks"] == 2
    assert job.id in [j.id for j in client.jobs(table="notes")]


def test_wait_raises_on_failure_and_cancel(client, server):
    failing = client.submit("t", texts=["x"], chunk_tokens=4096)  # over the model's limit
    with pytest.raises(JobFailedError, match="chunk_tokens=4096 exceeds"):
        failing.wait(timeout=60)
    big = client.submit("big", source=str(jsonl_corpus(server.root / "client.jsonl", 300)),
                        chunk_tokens=32)
    big.cancel()
    with pytest.raises(JobCancelledError):
        big.wait(timeout=60)


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
    job = client.submit("slow", source=str(jsonl_corpus(server.root / "slow.jsonl", 300)),
                        chunk_tokens=32)
    with pytest.raises(TimeoutError):
        job.wait(timeout=0.5)
    job.cancel()
