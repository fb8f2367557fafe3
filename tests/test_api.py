"""End to end against a real uvicorn server with a real Dask cluster."""

from __future__ import annotations

import json
import re
import shutil
import time

import cloudpickle
import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect

from tests import faults
from tests.api_server import ADMIN_KEY, metrics_text
from tests.conftest import SAMPLE_CORPUS
from tests.corpora import jsonl_corpus

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)


def ws_url(server, job_id: str) -> str:
    return server.url.replace("http://", "ws://") + f"/v1/jobs/{job_id}/events"


def wait_job(client: httpx.Client, job_id: str, until, timeout: float = 120.0) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}").json()
        if until(job):
            return job
        assert time.monotonic() < deadline, job
        time.sleep(0.1)


def finished(job: dict) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")


def test_create_watch_succeed_then_search(server):
    client = server.tenant("watcher")
    # Three partitions of rows a quarter text (tests/corpora.py): a progress event for each.
    corpus = jsonl_corpus(server.root / "watch" / "rows.jsonl", rows=48, text_chars=250)
    shutil.copy(SAMPLE_CORPUS / "notes" / "exactly-once.md", corpus.parent / "exactly-once.md")
    server.hold_in_queue("watcher")
    created = client.post(
        "/v1/jobs", json={"table": "notes", "source": str(corpus.parent), "chunk_tokens": 64}
    )
    assert created.status_code == 201, created.text
    job = created.json()
    assert job["status"] == "queued" and job["id"]
    assert job["partitions_total"] >= 3  # a progress event for each

    auth = {"Authorization": client.headers["authorization"]}
    with connect(ws_url(server, job["id"]), additional_headers=auth) as ws:
        events = [json.loads(ws.recv())]  # the current state: still queued
        server.hold_in_queue("watcher", held=False)  # the next submission admits it
        nudge = client.post("/v1/jobs", json={"table": "nudge", "texts": ["next"]}).json()
        events += [json.loads(message) for message in ws]  # ends when the server closes
    statuses = [e["job"]["status"] for e in events]
    assert statuses[0] == "queued" and "running" in statuses and statuses[-1] == "succeeded"
    done = [e["job"]["partitions_done"] for e in events if e["type"] == "progress"]
    assert len(done) == job["partitions_total"]  # one event per partition committed
    assert done == sorted(done) and done[-1] == job["partitions_total"]
    # Rates and ETA in chunks on every event: an ETA while partitions remain, none at the end.
    for event in events:
        record = event["job"]
        if event["type"] == "progress" and record["status"] == "running":
            assert record["tokens_per_s"] > record["chunks_per_s"] > 0
            if record["partitions_done"] < record["partitions_total"]:
                assert record["eta_seconds"] > 0
                assert record["expected_chunks"] > record["chunks_done"]
    assert events[0]["job"]["eta_seconds"] is None  # queued: no rate yet
    last = events[-1]["job"]
    assert last["eta_seconds"] is None and last["expected_chunks"] == last["chunks_done"]
    assert wait_job(client, nudge["id"], finished)["status"] == "succeeded"

    # A client that connects late gets the current state first, then the socket closes.
    with connect(
        ws_url(server, job["id"]) + "?token=" + client.headers["authorization"].split()[1]
    ) as ws:
        late = [json.loads(m) for m in ws]
    assert [e["job"]["status"] for e in late] == ["succeeded"]

    final = client.get(f"/v1/jobs/{job['id']}").json()
    assert final["progress"]["documents"] == 49 and final["skipped"] == []
    hits = client.post(
        "/v1/tables/notes/search",
        json={"query": "how are retried tasks kept from writing rows twice?", "k": 3},
    ).json()["hits"]
    assert hits[0]["doc_id"] == "exactly-once.md" and hits[0]["score"] > hits[-1]["score"]
    filtered = client.post(
        "/v1/tables/notes/search",
        json={"query": "retries", "k": 5, "filter": "doc_id != 'exactly-once.md'"},
    ).json()["hits"]
    assert filtered and all(h["doc_id"] != "exactly-once.md" for h in filtered)
    table = client.get("/v1/tables/notes").json()
    assert table == {
        "name": "notes",
        "rows": final["chunks_done"],
        "model": "all-MiniLM-L6-v2",
        "dimension": 384,
    }


def test_cancel_mid_job(server, cluster, tmp_path):
    """The session's server runs its jobs on the tests' own cluster, where a worker plugin
    (tests/faults.py) holds this tenant's writes mid-way."""
    client = server.tenant("canceller")
    # Six partitions: one committed, four held in flight, one not yet sent.
    corpus = jsonl_corpus(server.root / "cancel" / "rows.jsonl", rows=96, text_chars=250)
    gate = faults.HoldWrites("/tenants/canceller/", str(tmp_path / "gate"))
    cluster.client.register_plugin(gate)
    try:
        job = client.post(
            "/v1/jobs", json={"table": "big", "source": str(corpus), "chunk_tokens": 32}
        ).json()
        gate.let_one()  # one partition is committed, the others are held before writing
        wait_job(client, job["id"], lambda j: j["partitions_done"] == 1)
        assert client.get("/v1/tables/big").json()["rows"] > 0
        cancelled = client.delete(f"/v1/jobs/{job['id']}")
        assert cancelled.status_code == 202 and cancelled.json()["status"] == "cancelling"
        final = wait_job(client, job["id"], finished)
    finally:
        gate.open()
        cluster.client.unregister_worker_plugin(gate.name)
    assert final["status"] == "cancelled"
    assert final["partitions_done"] == 1 < final["partitions_total"]
    assert client.get("/v1/tables/big").json()["rows"] == 0  # its rows were removed
    assert client.delete(f"/v1/jobs/{job['id']}").status_code == 409


def test_two_tenants_cannot_see_each_other(server):
    alice, bob = server.tenant("alice"), server.tenant("bob")
    job = alice.post(
        "/v1/jobs", json={"table": "private", "texts": ["alice's secret plan"], "ids": ["plan"]}
    ).json()
    assert wait_job(alice, job["id"], finished)["status"] == "succeeded"
    assert bob.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert bob.delete(f"/v1/jobs/{job['id']}").status_code == 404
    assert job["id"] not in [j["id"] for j in bob.get("/v1/jobs").json()["jobs"]]
    assert bob.get("/v1/tables").json()["tables"] == []
    assert bob.get("/v1/tables/private").status_code == 404
    assert bob.post("/v1/tables/private/search", json={"query": "plan"}).status_code == 404
    assert bob.delete("/v1/tables/private").status_code == 404
    # The same name is Bob's own table, apart from Alice's.
    own = bob.post("/v1/jobs", json={"table": "private", "texts": ["bob's notes"]}).json()
    assert wait_job(bob, own["id"], finished)["status"] == "succeeded"
    hits = bob.post("/v1/tables/private/search", json={"query": "plan", "k": 10}).json()["hits"]
    assert [h["text"] for h in hits] == ["bob's notes"]
    assert alice.get("/v1/tables/private").json()["rows"] == 1


def test_quota_refusal_is_429_with_the_figures(server):
    client = server.tenant("thrifty", tier="free")
    with server.admin() as admin:
        assert admin.patch("/v1/tenants/thrifty", json={"daily_chunks": 5}).status_code == 200
    refused = client.post("/v1/jobs", json={"table": "t", "texts": [f"t{i}" for i in range(8)]})
    assert refused.status_code == 429
    quota = refused.json()["quota"]
    assert (quota["needed"], quota["remaining"], quota["limit"]) == (8, 5, 5)
    assert int(refused.headers["Retry-After"]) > 0 and quota["resets_at"].endswith("+00:00")
    usage = client.get("/v1/usage").json()
    assert (usage["daily_chunks"], usage["remaining_chunks"]) == (5, 5)


def test_rate_limit_is_429_with_retry_after(server):
    client = server.tenant("chatty", tier="limited")  # 2 requests a minute
    codes = [
        client.post("/v1/jobs", json={"table": "t", "texts": ["x"]}).status_code for _ in range(3)
    ]
    assert codes == [201, 201, 429]
    limited = client.post("/v1/jobs", json={"table": "t", "texts": ["x"]})
    assert 0 < int(limited.headers["Retry-After"]) <= 30
    # Searches have their own allowance.
    assert client.post("/v1/tables/t/search", json={"query": "x"}).status_code in (200, 404)


def test_every_v1_route_needs_a_key(server):
    anonymous = httpx.Client(base_url=server.url)
    wrong = httpx.Client(base_url=server.url, headers={"Authorization": "Bearer es_wrong"})
    for client in (anonymous, wrong):
        for method, path in [
            ("GET", "/v1/jobs"),
            ("POST", "/v1/jobs"),
            ("GET", "/v1/jobs/x"),
            ("DELETE", "/v1/jobs/x"),
            ("GET", "/v1/tables"),
            ("GET", "/v1/tables/t"),
            ("POST", "/v1/tables/t/search"),
            ("DELETE", "/v1/tables/t"),
            ("GET", "/v1/usage"),
            ("GET", "/v1/cluster"),
            ("GET", "/v1/tenants"),
        ]:
            response = client.request(method, path, json={})
            assert response.status_code == 401, (method, path, response.text)
    tenant = server.tenant("nosy")
    assert tenant.get("/v1/tenants").status_code == 401  # a tenant key is no admin key
    with pytest.raises(InvalidStatus), connect(ws_url(server, "x")):
        pass
    assert anonymous.get("/healthz").status_code == 200


@pytest.mark.parametrize(
    "body,field",
    [
        ({"table": "t", "texts": ["a"], "priority": "urgent"}, "priority"),
        ({"table": "t", "texts": ["a"], "chunk_tokens": -1}, "chunk_tokens"),
        ({"table": "../x", "texts": ["a"]}, "table"),
        ({"table": "t", "texts": ["a"], "mode": "merge"}, "mode"),
        ({"table": "t", "source": "/etc"}, "source"),
        ({"table": "t", "texts": ["a"], "chunk_tokens": 1000}, "chunk_tokens"),  # over 256
    ],
)
def test_bad_requests_name_the_field(server, body, field):
    client = server.tenant(f"v{abs(hash(json.dumps(body))) % 10**8}")
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert field in response.json()["detail"][0]["loc"]


def test_query_parameters_are_validated(server):
    client = server.tenant("lister")
    bad = client.get("/v1/jobs", params={"status": "sleeping"})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["query", "status"]
    assert client.get("/v1/jobs", params={"limit": 0}).status_code == 422
    assert client.get("/v1/jobs", params={"cursor": "nope"}).json()["detail"][0]["loc"] == [
        "query",
        "cursor",
    ]
    for i in range(3):
        client.post("/v1/jobs", json={"table": "pages", "texts": [f"page {i}"]})
    first = client.get("/v1/jobs", params={"limit": 2}).json()
    second = client.get("/v1/jobs", params={"limit": 2, "cursor": first["next_cursor"]}).json()
    ids = [j["id"] for j in first["jobs"] + second["jobs"]]
    assert len(ids) == len(set(ids)) == 3 and second["next_cursor"] is None


def test_metrics_parse_and_count_what_was_done(server):
    client = server.tenant("measured")
    job = client.post("/v1/jobs", json={"table": "m", "texts": ["one", "two", "three"]}).json()
    assert wait_job(client, job["id"], finished)["status"] == "succeeded"
    text = metrics_text(server.url)
    families = {f.name: f for f in text_string_to_metric_families(text)}
    samples = {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for f in families.values()
        for s in f.samples
    }
    used = client.get("/v1/usage").json()["used_chunks"]
    key = (("model", "all-MiniLM-L6-v2"), ("tenant", "measured"))
    assert samples[("embedscale_chunks_embedded_total", key)] == used == 3
    assert samples[("embedscale_jobs", (("status", "succeeded"),))] >= 1
    assert samples[("embedscale_workers", ())] == 2
    assert samples[("embedscale_partition_seconds_count", (("model", "all-MiniLM-L6-v2"),))] >= 1
    assert ("embedscale_queue_depth", ()) in samples


def test_cluster_info_keeps_the_dashboard_for_the_operator(server):
    info = server.tenant("operator").get("/v1/cluster").json()
    assert info["workers"] == 2 and info["threads"] == 2
    assert info["dashboard_link"] is None and info["scheduler"] is None  # not exposed
    log = (server.data_dir.parent / "server.log").read_text()
    link = re.search(r"Dask dashboard at (http://127\.0\.0\.1:\d+/status)", log).group(1)
    assert httpx.get(link, timeout=10).status_code == 200


def test_admin_can_rotate_keys_and_change_tiers(server):
    client = server.tenant("rotating", tier="free")
    with server.admin() as admin:
        assert admin.patch("/v1/tenants/rotating", json={"tier": "gold"}).status_code == 422
        assert (
            admin.patch("/v1/tenants/rotating", json={"tier": "enterprise"}).json()["tier"]
            == "enterprise"
        )
        assert admin.patch("/v1/tenants/nobody", json={"tier": "free"}).status_code == 404
        assert (
            admin.post("/v1/tenants", json={"name": "rotating", "tier": "free"}).status_code == 409
        )
        new_key = admin.post("/v1/tenants/rotating/keys").json()["api_key"]
        names = [t["name"] for t in admin.get("/v1/tenants").json()]
    assert "rotating" in names and "local" in names
    assert client.get("/v1/usage").status_code == 401  # the old key is revoked
    fresh = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {new_key}"})
    assert fresh.get("/v1/usage").json()["tier"] == "enterprise"
    assert ADMIN_KEY not in fresh.get("/v1/usage").text


def test_no_admin_routes_without_an_admin_key(tmp_path):
    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, admin_key=None, admin_key_file=None))
    paths = set(app.openapi()["paths"])
    assert "/v1/jobs" in paths and not any(p.startswith("/v1/tenants") for p in paths)
    key_file = tmp_path / "admin.key"
    key_file.write_text("from-a-file\n")
    with_file = create_app(Settings(data_dir=tmp_path, admin_key_file=str(key_file)))
    assert with_file.state.admin_key == "from-a-file"
    assert any(p.startswith("/v1/tenants") for p in with_file.openapi()["paths"])


def test_a_dropped_table_is_made_again_by_the_next_job(server):
    client = server.tenant("dropper")
    for text in ("first life", "second life"):
        job = client.post("/v1/jobs", json={"table": "phoenix", "texts": [text]}).json()
        assert wait_job(client, job["id"], finished)["status"] == "succeeded"
        assert client.get("/v1/tables/phoenix").json()["rows"] == 1
        assert client.delete("/v1/tables/phoenix").status_code == 204
        assert client.get("/v1/tables/phoenix").status_code == 404
