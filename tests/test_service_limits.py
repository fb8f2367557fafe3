"""Limits on the service process (issue 16, item 8): progress sockets and schedules per tenant,
each refused with a 4xx naming its limit while other tenants go on; and inline texts stored
once, removed when their job's retention ends."""

from __future__ import annotations

import json
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from embedscale.api.settings import DEFAULT_MAX_WEBSOCKETS_PER_TENANT
from embedscale.engine.sources.enumeration import plan_texts
from embedscale.jobs.policies.schedules import MAX_SCHEDULES_PER_TENANT
from embedscale.jobs.runner.loop import RunnerConfig
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.records import JobRecord
from tests.helpers import read_rows

SOCKETS = DEFAULT_MAX_WEBSOCKETS_PER_TENANT


def events_url(server, job_id: str) -> str:
    return server.url.replace("http://", "ws://") + f"/v1/jobs/{job_id}/events"


def auth(client: httpx.Client) -> dict[str, str]:
    return {"Authorization": client.headers["authorization"]}


def queued_job(server, client: httpx.Client, name: str) -> str:
    """A job of the tenant `name` that waits in `queued` (its socket stays open)."""
    server.hold_in_queue(name)
    created = client.post("/v1/jobs", json={"table": "t", "texts": [f"{name} waits"]})
    assert created.status_code == 201, created.text
    return created.json()["id"]


def open_socket(server, client: httpx.Client, job_id: str):
    socket = connect(events_url(server, job_id), additional_headers=auth(client), open_timeout=30)
    assert json.loads(socket.recv(timeout=30))["job"]["status"] == "queued"
    return socket


@pytest.mark.slow
def test_a_tenant_holds_a_bounded_number_of_progress_sockets(server):
    """The tenant's socket past the limit is refused with a 429 naming it; another tenant's
    is not; a socket its client closes gives its place back at once (not at its job's next
    event, which a queued job may never send)."""
    watcher = server.tenant("socket-watcher")
    neighbour = server.tenant("socket-neighbour")
    job = queued_job(server, watcher, "socket-watcher")
    other = queued_job(server, neighbour, "socket-neighbour")
    sockets = [open_socket(server, watcher, job) for _ in range(SOCKETS)]
    try:
        with pytest.raises(InvalidStatus) as refused:
            open_socket(server, watcher, job)
        response = refused.value.response
        assert response.status_code == 429
        detail = json.loads(response.body)["detail"]
        assert "max_websockets_per_tenant" in detail and f"has {SOCKETS} progress" in detail
        # Other tenants are counted apart.
        open_socket(server, neighbour, other).close()
        # A socket closed by its client frees its place.
        sockets.pop().close()
        deadline = time.monotonic() + 10
        while True:
            try:
                sockets.append(open_socket(server, watcher, job))
                break
            except InvalidStatus:
                assert time.monotonic() < deadline, "a closed socket kept its place"
                time.sleep(0.1)
    finally:
        for socket in sockets:
            socket.close()
    for client, job_id in ((watcher, job), (neighbour, other)):
        assert client.delete(f"/v1/jobs/{job_id}").status_code == 202


@pytest.mark.slow
def test_a_tenant_has_a_bounded_number_of_schedules_even_when_they_come_at_once(server):
    """Creations arriving together cannot each take the last place: the tenant ends with
    exactly the limit, the others refused with a 409 naming it; another tenant still creates
    its own."""
    planner = server.tenant("planner", tier="enterprise")
    body = {"cron": "@daily", "template": {"table": "t", "texts": ["nightly"]}}
    first = MAX_SCHEDULES_PER_TENANT - 10
    for _ in range(first):
        assert planner.post("/v1/schedules", json=body).status_code == 201
    headers = dict(planner.headers)
    start = threading.Barrier(30)

    def create(_: int) -> httpx.Response:
        with httpx.Client(base_url=server.url, headers=headers, timeout=60) as own:
            start.wait()
            return own.post("/v1/schedules", json=body)

    with ThreadPoolExecutor(30) as pool:
        answers = list(pool.map(create, range(30)))
    assert sorted(a.status_code for a in answers) == [201] * 10 + [409] * 20
    detail = next(a for a in answers if a.status_code == 409).json()["detail"]
    assert f"has {MAX_SCHEDULES_PER_TENANT} schedules" in detail
    assert "max_schedules_per_tenant" in detail
    assert len(planner.get("/v1/schedules").json()["schedules"]) == MAX_SCHEDULES_PER_TENANT
    neighbour = server.tenant("planner-neighbour")
    assert neighbour.post("/v1/schedules", json=body).status_code == 201


class Clock:
    """Now, moved on by the test."""

    def __init__(self) -> None:
        self.ahead = timedelta(0)

    def __call__(self) -> datetime:
        return utcnow() + self.ahead


def occurrences(store: Store, needle: str) -> dict[str, int]:
    """How often `needle` is in the job records and in the partitions, in the file."""
    count = "sum((length({c}) - length(replace({c}, ?, ''))) // length(?))"
    with store._lock:
        return {
            table: store._con.execute(
                f"SELECT coalesce({count.format(c=column)}, 0) FROM {table}", [needle, needle]
            ).fetchone()[0]
            for table, column in (("jobs", "spec"), ("job_partitions", "items"))
        }


@pytest.mark.slow
def test_inline_texts_are_stored_once_and_leave_when_the_retention_ends(cluster, tmp_path):
    clock = Clock()
    service = JobService(
        tmp_path / "data",
        cluster,
        clock=clock,
        job_retention_days=30,
        runner_config=RunnerConfig(backoff_seconds=0.05),
    )
    service.retention.every_s = 0.1  # the real loop, passing often
    service.start()
    try:
        service.create_tenant("acme", "enterprise")
        texts = [f"retained-text {i}: the heap keeps its smallest item first" for i in range(6)]
        metadata = [{"secret": f"retained-meta {i}"} for i in range(6)]
        ids = [f"doc-{i}" for i in range(6)]
        done = service.wait(
            service.submit(
                "acme", {"table": "t", "texts": texts, "ids": ids, "metadata": metadata}
            ).id,
            timeout=180,
        )
        assert done.status == "succeeded"
        service.set_limits("acme", max_concurrent_jobs=0)
        waiting = service.submit("acme", {"table": "t", "texts": ["retained-text waiting"]})
        # Once each: in the partitions, which run the job; the record keeps their count.
        assert occurrences(service.store, "retained-text") == {"jobs": 0, "job_partitions": 7}
        assert occurrences(service.store, "retained-meta") == {"jobs": 0, "job_partitions": 6}
        assert done.spec["texts"] == 6 and "ids" not in done.spec
        time.sleep(0.5)  # passes of the loop: an ended job within its retention keeps them
        assert occurrences(service.store, "retained-text")["job_partitions"] == 7

        clock.ahead = timedelta(days=31)
        deadline = time.monotonic() + 30
        while occurrences(service.store, "retained-text")["job_partitions"] != 1:
            assert time.monotonic() < deadline, "the ended job's texts were not removed"
            time.sleep(0.1)
        # The waiting job keeps its own; the ended one keeps its record, ledger and ids.
        assert occurrences(service.store, "retained-meta")["job_partitions"] == 0
        [pending] = service.store.partitions(waiting.id)
        assert [i.text for i in pending.partition.items] == ["retained-text waiting"]
        [pruned] = service.store.partitions(done.id)
        assert sorted(i.doc_id for i in pruned.partition.items) == ids
        assert pruned.status == "done" and pruned.chunks == done.chunks_done
        assert service.get(done.id).to_dict()["spec"]["texts"] == 6
        [listed, _] = sorted(service.list("acme")[0], key=lambda j: j.created_at)
        assert listed.id == done.id and listed.status == "succeeded"
        # The rows the job wrote are the tenant's table's: untouched.
        rows = read_rows(service.tenant_data_dir("acme"), "t", ["doc_id", "text"]).to_pylist()
        assert sorted(r["doc_id"] for r in rows) == ids
        assert service.verify_table("acme", "t").ok
        service.cancel(waiting.id)
    finally:
        service.close()


def test_records_that_kept_their_texts_lose_them_too(tmp_path):
    """A record written before the texts were stored once keeps them in its spec: past its
    retention it keeps their count, as listings show it; an unfinished job keeps them."""
    store = Store(tmp_path / "s.duckdb")
    texts = ["old-style text one", "old-style text two"]
    for job_id in ("ended", "queued"):
        now = utcnow()
        record = JobRecord(
            job_id,
            "acme",
            {"table": "t", "texts": texts, "ids": ["a", "b"], "metadata": [None, None]},
            JobStatus.QUEUED,
            "normal",
            "t",
            [("queued", now.isoformat())],
            now,
            now,
        )
        store.insert_job(record, plan_texts(texts, ["a", "b"]).partitions)
    store.set_status("ended", JobStatus.CANCELLED)
    assert store.get_job("ended").spec["texts"] == texts
    assert store.drop_inline_texts(utcnow() - timedelta(days=1)) == set()
    assert store.drop_inline_texts(utcnow() + timedelta(seconds=1)) == {"ended"}
    assert store.get_job("ended").spec == {"table": "t", "texts": 2}
    assert occurrences(store, "old-style") == {"jobs": 2, "job_partitions": 2}  # the queued
    assert store.drop_inline_texts(datetime.now(UTC) + timedelta(seconds=1)) == set()
    store.close()
