"""Operations against hostile tenants and damaged state (issue 7): no key in a log line, no
dashboard for tenants, one line for a damaged or locked data dir, no tenant name as a path."""

from __future__ import annotations

import logging
import os
import re
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import httpx
import pytest
from fastapi.testclient import TestClient

from embedscale.api.server.log_redaction import RedactSecrets, redact
from embedscale.jobs.errors import InvalidFieldError, StoreDamagedError
from embedscale.jobs.service import DB_FILE, JobService, tenant_data_dir
from embedscale.jobs.store.duckdb_store import Store
from tests.api_server import ADMIN_KEY, ROOT, free_port
from tests.helpers import embedscale_in_process

KEY = "es_0123456789abcdefSECRET"


def cli(*argv: str, timeout: float = 60) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    env.pop("EMBEDSCALE_ADMIN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "embedscale", *argv],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def assert_one_line_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode != 0, result
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("embedscale: error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


# --- 7. secrets in logs ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "text, expected",
    [
        (f"GET /v1/jobs/x/events?token={KEY} HTTP/1.1", "GET /v1/jobs/x/events?token=*** HTTP/1.1"),
        (f"/a?x=1&api_key={KEY}&y=2", "/a?x=1&api_key=***&y=2"),
        (f"/a?key={KEY}#frag", "/a?key=***#frag"),
        (f"/a?ACCESS_TOKEN={KEY}", "/a?ACCESS_TOKEN=***"),
        (f"Authorization: Bearer {KEY}", "Authorization: Bearer ***"),
        ("/a?monkey=banana&tokens=3", "/a?monkey=banana&tokens=3"),  # not secrets
    ],
)
def test_redact(text, expected):
    assert redact(text) == expected


def test_the_access_log_formatter_still_works_on_redacted_records():
    from uvicorn.logging import AccessFormatter

    record = logging.LogRecord(
        "uvicorn.access",
        logging.INFO,
        __file__,
        1,
        '%s - "%s %s HTTP/%s" %d',
        ("1.2.3.4:5", "GET", f"/v1/jobs?token={KEY}", "1.1", 200),
        None,
    )
    assert RedactSecrets().filter(record)
    line = AccessFormatter('%(client_addr)s - "%(request_line)s" %(status_code)s').format(record)
    assert line == '1.2.3.4:5 - "GET /v1/jobs?token=*** HTTP/1.1" 200 OK'


def test_a_key_split_between_template_and_argument_is_redacted():
    record = logging.LogRecord(
        "x", logging.INFO, __file__, 1, "Authorization: Bearer %s", (KEY,), None
    )
    RedactSecrets().filter(record)
    assert record.getMessage() == "Authorization: Bearer ***"


# --- 8. the dashboard ------------------------------------------------------------------------


def test_the_dashboard_binds_to_the_api_host(tmp_path):
    from embedscale.api.server.app import cluster_spec
    from embedscale.api.settings import Settings
    from embedscale.engine.cluster.start import dashboard_bind

    assert cluster_spec(Settings(host="127.0.0.1")).dashboard_address == "127.0.0.1:8787"
    assert cluster_spec(Settings(host="10.1.2.3")).dashboard_address == "10.1.2.3:8787"
    local_yaml = str(ROOT / "cluster_specs" / "local.yaml")  # says ':8787'
    assert cluster_spec(Settings(cluster=local_yaml)).dashboard_address == "127.0.0.1:8787"
    assert cluster_spec(Settings(dashboard_address="none")).dashboard_address is None
    assert (
        cluster_spec(Settings(dashboard_address="0.0.0.0:9000")).dashboard_address == "0.0.0.0:9000"
    )
    # `embedscale run` and any spec: a bare port is loopback, not every interface
    assert dashboard_bind(":8787") == "127.0.0.1:8787"
    assert dashboard_bind(":0", "::1") == "127.0.0.1:0"
    assert dashboard_bind("") is None and dashboard_bind(None) is None


@pytest.mark.slow
def test_no_dashboard_no_link():
    from embedscale.engine.cluster.start import ClusterSpec, start_cluster

    with start_cluster(ClusterSpec(n_workers=1, dashboard_address="none")) as cluster:
        assert cluster.dashboard_link is None


class FakeCluster:
    dashboard_link = "http://127.0.0.1:8787/status"
    client = SimpleNamespace(
        scheduler=SimpleNamespace(address="tcp://127.0.0.1:40000"),
        scheduler_info=lambda n_workers: {"workers": {"a": {"nthreads": 2}, "b": {"nthreads": 1}}},
    )


@pytest.mark.parametrize("exposed", [False, True])
def test_cluster_info_for_tenants(tmp_path, exposed):
    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, expose_dashboard=exposed, admin_key=None))
    with JobService(tmp_path) as service:
        app.state.service, app.state.cluster = service, FakeCluster()
        _, key = service.create_tenant("viewer", "free")
        info = TestClient(app).get("/v1/cluster", headers={"Authorization": f"Bearer {key}"})
    assert info.status_code == 200, info.text
    assert info.json() == {
        "workers": 2,
        "threads": 3,
        "scheduler": "tcp://127.0.0.1:40000" if exposed else None,
        "dashboard_link": FakeCluster.dashboard_link if exposed else None,
    }


def test_job_output_carries_no_dashboard_link(tmp_path):
    from embedscale.api.server.routes.jobs import job_out

    with JobService(tmp_path) as service:
        record = service.submit("local", {"table": "t", "texts": ["a"]})
    record.dashboard_link = FakeCluster.dashboard_link  # what the runner records at admission
    assert job_out(record).dashboard_link is None


# --- 13. a damaged or locked state file ------------------------------------------------------


@pytest.fixture
def healthy_db(tmp_path) -> Path:
    """A store with a tenant and a job in it, closed."""
    with JobService(tmp_path / "data") as service:
        service.create_tenant("someone", "free")
        service.submit("someone", {"table": "t", "texts": ["a", "b"]})
    return tmp_path / "data" / DB_FILE


def damage(db: Path, how: str) -> None:
    data = db.read_bytes()
    damaged = {"half": data[: len(data) // 2], "empty": b"", "random": os.urandom(len(data))}[how]
    db.write_bytes(damaged)


@pytest.mark.parametrize("how", ["half", "empty", "random"])
def test_a_damaged_store_is_named_with_what_to_do(healthy_db, how):
    damage(healthy_db, how)
    with pytest.raises(StoreDamagedError) as caught:
        JobService(healthy_db.parent)
    message = str(caught.value)
    assert str(healthy_db) in message and "backup" in message and "move it aside" in message
    assert "\n" not in message


def test_a_store_that_opens_can_be_read(healthy_db):
    """Damage inside any one block: refused at open, or every row still reads. A truncated
    block or a bad checksum never surfaces later, from a query in the middle of the work."""
    data = healthy_db.read_bytes()
    block = 256 * 1024
    refused = 0
    for offset in range(4096, len(data), block // 4):
        healthy_db.write_bytes(data[:offset] + b"\xff" * 64 + data[offset + 64 :])
        try:
            store = Store(healthy_db)
        except StoreDamagedError:
            refused += 1
            continue
        try:
            store.list_tenants()
            store.tenant_for_key_hash("no such hash")
            store.usage("someone")
            for job in store.unfinished_jobs():
                store.partitions(job.id)
                store.skipped(job.id)
        finally:
            store.close()
    assert refused  # the damage was seen at least once


def test_cli_commands_on_a_damaged_store_print_one_line(healthy_db):
    damage(healthy_db, "half")
    listed = embedscale_in_process(
        "jobs", "list", "--data-dir", str(healthy_db.parent), unset=("EMBEDSCALE_ADMIN_KEY",)
    )
    assert_one_line_error(listed, str(healthy_db), "damaged")
    started = time.monotonic()  # serve in a process of its own: were it to start, it is stopped
    served = cli(
        "serve", "--data-dir", str(healthy_db.parent), "--port", str(free_port()), "--workers", "1"
    )
    assert time.monotonic() - started < 20
    assert_one_line_error(served, str(healthy_db), "damaged")


# --- 14. a tenant name never becomes a path --------------------------------------------------


@pytest.mark.parametrize(
    "name", ["../x", "../tenants/x", "a/b", "", ".", "Upper", "a\n", "/abs", "a" * 65]
)
def test_tenant_data_dir_refuses_names_outside_the_rule(tmp_path, name):
    with pytest.raises(InvalidFieldError, match="invalid tenant name") as caught:
        tenant_data_dir(tmp_path, name)
    assert caught.value.field == "tenant"


def test_tenant_data_dir_of_valid_names(tmp_path):
    assert tenant_data_dir(tmp_path, "local") == tmp_path
    assert tenant_data_dir(tmp_path, "a-b_0") == tmp_path / "tenants" / "a-b_0"


def test_cli_search_refuses_a_tenant_name_that_is_a_path(tmp_path):
    result = embedscale_in_process(
        "search", "x", "q", "--tenant", "../x", "--data-dir", str(tmp_path)
    )
    assert result.returncode == 1
    assert_one_line_error(result, "invalid tenant name", "'../x'")


# --- against a real server -------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from tests.api_server import Server

    srv = Server(tmp_path_factory.mktemp("hostile"), "--workers", "1", "--host", "127.0.0.1")
    yield srv
    srv.stop()


def server_log(server) -> str:
    server.log.flush()
    return (server.data_dir.parent / "server.log").read_text()


@pytest.mark.slow
def test_keys_in_query_strings_never_reach_the_log(server):
    from websockets.exceptions import InvalidStatus
    from websockets.sync.client import connect

    tenant = server.tenant("logged")
    key = tenant.headers["authorization"].removeprefix("Bearer ")
    ws = server.url.replace("http://", "ws://")
    for token in (key, ADMIN_KEY):
        with pytest.raises(InvalidStatus):  # no such job: the handshake is refused, and logged
            connect(f"{ws}/v1/jobs/no-such-job/events?token={token}", open_timeout=10)
        httpx.get(f"{server.url}/v1/jobs?token={token}", timeout=10)
    httpx.get(f"{server.url}/v1/jobs", headers={"Authorization": f"Bearer {key}"}, timeout=10)
    deadline = time.monotonic() + 10
    while "/v1/jobs?token=" not in (log := server_log(server)) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert key not in log and ADMIN_KEY not in log
    assert "/v1/jobs/no-such-job/events?token=***" in log and "/v1/jobs?token=***" in log


def listening_addresses(port: int) -> set[str]:
    """The local addresses with a socket listening on `port` (from /proc/net/tcp*)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            address, hex_port = local.split(":")
            if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
                found.add(address)
    return found


@pytest.mark.slow
def test_the_dashboard_listens_on_the_api_host_only_and_tenants_get_no_link(server):
    match = re.search(r"Dask dashboard at http://([^:/]+):(\d+)/", server_log(server))
    assert match, "the operator's log names the dashboard"
    host, port = match.groups()
    assert host == "127.0.0.1"
    assert listening_addresses(int(port)) == {"0100007F"}  # 127.0.0.1, not 0.0.0.0 or ::
    info = server.tenant("peeker").get("/v1/cluster").json()
    assert info["dashboard_link"] is None and info["scheduler"] is None
    assert info["workers"] == 1 and info["threads"] >= 1


@pytest.mark.slow
def test_a_second_serve_on_a_locked_data_dir_fails_before_starting_a_cluster(server):
    started = time.monotonic()
    second = cli(
        "serve",
        "--data-dir",
        str(server.data_dir),
        "--port",
        str(free_port()),
        "--workers",
        "1",
        timeout=120,
    )
    assert time.monotonic() - started < 20
    assert_one_line_error(second, str(server.data_dir / DB_FILE), "in use")
