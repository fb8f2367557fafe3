"""Migrations over HTTP (issue 18 part 2), on the session's real `embedscale serve`, through the
Python Client: the table moves from sentence-transformers to the same model on onnxruntime (the
ONNX export of the packaged weights), compared, switched; each refusal is the 4xx that names
what was wrong."""

from __future__ import annotations

import time

import pytest

from embedscale.api.client.service import ApiError, Client
from tests.api_server import Server

TEXTS = [
    f"Note {i} on topic {i % 4}: " + " ".join(f"t{j}" for j in range(10 + i)) for i in range(16)
]


def tenant_client(server: Server, name: str) -> Client:
    with server.admin() as admin:
        created = admin.post("/v1/tenants", json={"name": name, "tier": "premium"})
        assert created.status_code == 201, created.text
    return Client(server.url, created.json()["api_key"])


def wait_generation(client: Client, table: str, generation: int, state: str) -> dict:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        found = client.migrations.state(table)
        if any(g["generation"] == generation and g["state"] == state for g in found["generations"]):
            return found
        time.sleep(0.3)
    raise AssertionError(f"generation {generation} never {state}: {found}")


def test_a_table_moves_to_another_provider_over_http(server):
    client = tenant_client(server, "mover")
    with client:
        client.submit("docs", texts=TEXTS).wait(timeout=120, progress=False)
        state = client.migrations.state("docs")
        assert (state["active"], state["generations"]) == (1, [])

        with pytest.raises(ApiError) as unknown:
            client.migrate("docs", "not-an-offered-model")
        assert unknown.value.status_code == 422 and "model" in str(unknown.value.detail)
        with pytest.raises(ApiError) as missing:
            client.migrate("nope", "all-MiniLM-L6-v2", provider="onnx")
        assert missing.value.status_code == 404
        with pytest.raises(ApiError) as nothing:
            client.migrations.rollback("docs")
        assert nothing.value.status_code == 409 and "no earlier generation" in str(
            nothing.value.detail
        )
        with pytest.raises(ApiError) as no_url:
            client.migrate("docs", "all-MiniLM-L6-v2", provider="openai")
        assert no_url.value.status_code == 422 and "provider_url" in str(no_url.value.detail)
        with server.admin() as admin:  # the migration job's chunks count against the quota
            limit = admin.patch("/v1/tenants/mover", json={"daily_chunks": 5})
            assert limit.status_code == 200, limit.text
            with pytest.raises(ApiError) as quota:
                client.migrate("docs", "all-MiniLM-L6-v2", provider="onnx")
            assert quota.value.status_code == 429
            assert admin.patch("/v1/tenants/mover", json={"daily_chunks": None}).status_code == 200
        assert client.migrations.state("docs")["generations"] == []  # nothing changed
        assert [j.id for j in client.jobs(table="docs")] and not [
            j for j in client.jobs(table="docs") if j.record["kind"] == "migration"
        ]

        started = client.migrate("docs", "all-MiniLM-L6-v2", provider="onnx")
        building = started["generations"][-1]
        assert (building["generation"], building["state"], building["reuse_chunks"]) == (
            2,
            "building",
            True,
        )
        with pytest.raises(ApiError) as twice:
            client.migrate("docs", "all-MiniLM-L6-v2", provider="onnx")
        assert twice.value.status_code == 409 and "under way" in str(twice.value.detail)

        job = client.job(building["job_id"]).wait(timeout=180, progress=False)
        assert job["kind"] == "migration" and job["status"] == "succeeded"
        assert [j.id for j in client.jobs(table="docs") if j.status() == "succeeded"]
        wait_generation(client, "docs", 2, "built")
        assert client.tables()[0]["model"] == "all-MiniLM-L6-v2"

        report = client.migrations.compare("docs", ["topic 1", "t3 t4", "Note 9"], k=4)
        assert report["queries"] == 3 and report["chunk_overlap"] > 0.5
        assert report["candidate"]["generation"] == 2 and report["active"]["generation"] == 1

        switched = client.migrations.switch("docs")
        assert switched["active"] == 2, switched
        hits = client.search("docs", "topic 1", k=2)
        assert len(hits) == 2
        assert [t["name"] for t in client.tables()] == ["docs"]

        back = client.migrations.rollback("docs")
        assert back["active"] == 1
        states = {g["generation"]: g["state"] for g in back["generations"]}
        assert states == {1: "active", 2: "retired"}
