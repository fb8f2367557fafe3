"""The admin's table routes (/v1/admin/tables, issue 17 item 5) and a tenant's own table history,
over the app with a job service of its own (no cluster: a maintenance run goes in the request
then, as in the CLI)."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests.table_commits import ledger_job, new_table

ADMIN_KEY = "admin-key-for-the-table-routes"


@pytest.fixture
def api(tmp_path):
    """(service, admin client, tenant acme's client, acme's job ids) with acme's table docs:
    version 1 empty, 2 and 3 one job each."""
    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, admin_key=ADMIN_KEY))
    with JobService(tmp_path) as service:
        app.state.service = service
        _, key = service.create_tenant("acme", "free")
        table = new_table(service.tenant_data_dir("acme"))
        jobs = [ledger_job(service.store, table, d, tenant="acme") for d in (["a", "b"], ["c"])]
        admin = TestClient(app, headers={"Authorization": f"Bearer {ADMIN_KEY}"})
        tenant = TestClient(app, headers={"Authorization": f"Bearer {key}"})
        yield service, admin, tenant, jobs


def test_list_show_and_history(api):
    _, admin, tenant, (first, second) = api
    listed = admin.get("/v1/admin/tables", params={"tenant": "acme"})
    assert listed.status_code == 200, listed.text
    assert [t["name"] for t in listed.json()["tables"]] == ["docs"]
    shown = admin.get("/v1/admin/tables/docs", params={"tenant": "acme"}).json()
    assert (shown["rows"], shown["fragments"], shown["versions"]) == (3, 2, 3)
    page = admin.get("/v1/admin/tables/docs/history", params={"tenant": "acme", "limit": 2})
    assert [(v["version"], v["jobs"]) for v in page.json()["versions"]] == [
        (3, [second]),
        (2, [first]),
    ]
    assert page.json()["next_before"] == 2
    own = tenant.get("/v1/tables/docs/history")
    assert own.status_code == 200 and len(own.json()["versions"]) == 3
    assert own.json()["next_before"] is None


def test_restore_and_its_refusals(api):
    service, admin, tenant, _ = api
    url = "/v1/admin/tables/docs/restore"
    missing = admin.post(url, params={"tenant": "acme"}, json={"version": 9})
    assert missing.status_code == 422
    assert "no version 9 to restore" in missing.text and "version" in missing.text
    assert admin.post(url, params={"tenant": "acme"}, json={"version": 0}).status_code == 422
    assert admin.post(url, params={"tenant": "nobody"}, json={"version": 2}).status_code == 404
    assert tenant.post(url, params={"tenant": "acme"}, json={"version": 2}).status_code == 401
    done = admin.post(url, params={"tenant": "acme"}, json={"version": 2})
    assert done.status_code == 200, done.text
    assert (done.json()["version"], done.json()["made"]) == (2, 4)
    restore_job = service.get(done.json()["job_id"])
    assert restore_job.kind == "maintenance" and restore_job.status == JobStatus.SUCCEEDED
    verified = admin.get("/v1/tables/docs/verify", params={"tenant": "acme"}).json()
    assert verified["ok"], verified
    running = ledger_job(
        service.store,
        new_table(service.tenant_data_dir("acme"), "docs"),
        ["d"],
        "acme",
        JobStatus.RUNNING,
    )
    busy = admin.post(url, params={"tenant": "acme"}, json={"version": 2})
    assert busy.status_code == 409 and running in busy.text
    assert admin.delete("/v1/admin/tables/docs", params={"tenant": "acme"}).status_code == 409
    assert (
        admin.post("/v1/admin/tables/docs/optimize", params={"tenant": "acme"}).status_code == 409
    )


def test_optimize_then_drop(api):
    _, admin, _, _ = api
    run = admin.post("/v1/admin/tables/docs/optimize", params={"tenant": "acme"})
    assert run.status_code == 202, run.text
    assert run.json()["status"] == "succeeded" and "compaction" in run.json()["details"]
    shown = admin.get("/v1/admin/tables/docs", params={"tenant": "acme"}).json()
    assert shown["fragments"] == 1 and shown["indexes"]
    assert admin.delete("/v1/admin/tables/docs", params={"tenant": "acme"}).status_code == 204
    assert admin.get("/v1/admin/tables/docs", params={"tenant": "acme"}).status_code == 404
