"""A full disk is survivable: on a real, size-limited filesystem (a tmpfs) as the data dir, a
disk filled mid-job fails the job with the cause named, keeps what was committed, and the
service reopens its store by itself once space returns (jobs/store/guard.py,
jobs/runner/store_outage.py). Mounting needs root; elsewhere these tests skip, saying so."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

from embedscale.jobs.errors import StoreUnavailableError
from embedscale.jobs.store.duckdb_store import Store
from embedscale.jobs.tenants.accounts import tenant_data_dir
from tests import faults
from tests.api_server import Server
from tests.corpora import jsonl_corpus
from tests.helpers import assert_verified_by_api, read_rows, wait_done

pytestmark = pytest.mark.slow
NO_SPACE = "no space left on device"


@contextmanager
def tmpfs(folder: Path, size: str) -> Iterator[Path]:
    """`folder` as a tmpfs of `size` for the block; skips where mounting is not permitted."""
    folder.mkdir(parents=True, exist_ok=True)
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("mounting a size-limited tmpfs needs root and mount(8); not available here")
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(folder)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {mounted.stderr.strip()}")
    try:
        yield folder
    finally:
        if subprocess.run(["umount", str(folder)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(folder)], check=True)  # still busy: detach


def fill(folder: Path) -> Path:
    """Write a file in `folder` until its disk is full; returns the file."""
    filler = folder / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT)
    try:
        for block in (1 << 20, 4096):  # big blocks first, then the last pages
            try:
                while True:
                    os.write(fd, bytes(block))
            except OSError as exc:
                assert exc.strerror == "No space left on device", exc
    finally:
        os.close(fd)
    return filler


def test_the_store_reopens_by_itself_after_a_fatal_checkpoint(tmp_path):
    """DuckDB invalidates its database when a checkpoint cannot write (the error of the issue:
    "database has been invalidated"); the store reopens the file once space returns."""
    with tmpfs(tmp_path / "disk", "8M") as disk:
        store = Store(disk / "embedscale.duckdb")
        try:
            for name in ("alpha", "beta"):
                store.create_tenant(name, "free")  # in the WAL, not yet checkpointed
            filler = fill(disk)
            # DuckDB checkpoints by itself as its WAL grows; the test asks for one now.
            with pytest.raises(StoreUnavailableError) as raised, store._lock:
                store._con.execute("CHECKPOINT")
            assert raised.value.reason == NO_SPACE and "FATAL" in str(raised.value.__cause__)
            with pytest.raises(StoreUnavailableError, match=NO_SPACE):
                store.list_tenants()  # fails fast while out, the cause still named
            with pytest.raises(StoreUnavailableError, match=NO_SPACE):
                time.sleep(0.3)
                store.ping()  # the disk is still full: the reopen waits
            filler.unlink()
            deadline = time.monotonic() + 10
            while True:
                try:
                    store.ping()
                    break
                except StoreUnavailableError:
                    assert time.monotonic() < deadline, "the store never reopened"
                    time.sleep(0.1)
            assert [t.name for t in store.list_tenants()] == ["alpha", "beta"]
            store.create_tenant("gamma", "free")
        finally:
            store.close()
        reopened = Store(disk / "embedscale.duckdb")
        assert [t.name for t in reopened.list_tenants()] == ["alpha", "beta", "gamma"]
        reopened.close()


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory) -> Iterator[Path]:
    """A 64 MiB tmpfs as the data dir of the module's server (mounted before it starts,
    unmounted after it stops)."""
    workdir = tmp_path_factory.mktemp("full-disk")
    with tmpfs(workdir / "data", "64M"):
        yield workdir


@pytest.fixture(scope="module")
def disk_server(small_disk, cluster) -> Iterator[Server]:
    """A server on the small disk, running jobs on the tests' own cluster (where a test can
    hold a job's writes mid-way: tests/faults.py)."""
    srv = Server(small_disk, "--scheduler", cluster.client.scheduler.address)
    yield srv
    srv.stop()


def readyz(server: Server) -> httpx.Response:
    return httpx.get(f"{server.url}/readyz", timeout=10)


def wait_for(check, what: str, timeout: float = 30.0):
    """Poll `check` until it returns something true; that value."""
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"{what} never happened"
        time.sleep(0.1)
    return value


def test_a_full_disk_fails_the_job_in_flight_and_the_service_reopens(
    disk_server, cluster, tmp_path
):
    server, client = disk_server, disk_server.tenant("filler")
    first = client.post(
        "/v1/jobs",
        json={
            "table": "docs",
            "texts": ["The tide came in slowly over the flats.", "A heron waited by the channel."],
        },
    ).json()
    first = wait_done(client, first["id"])
    assert first["status"] == "succeeded" and first["chunks_done"] > 0

    # Six partitions, of rows a quarter text: one committed, the rest held, then the disk fills.
    corpus = jsonl_corpus(server.root / "big" / "rows.jsonl", rows=96, text_chars=250)
    gate = faults.HoldWrites("/tenants/filler/", str(tmp_path / "gate"))
    cluster.client.register_plugin(gate)
    filler = None
    try:
        big = client.post(
            "/v1/jobs", json={"table": "docs", "source": str(corpus), "chunk_tokens": 32}
        ).json()
        gate.let_one()  # one partition is committed; the others wait to write
        committed = wait_for(
            lambda: (j := client.get(f"/v1/jobs/{big['id']}").json())["partitions_done"] == 1 and j,
            "the first commit",
        )
        assert committed["partitions_total"] > 1

        filler = fill(server.data_dir)
        gate.open()  # the rest write to a full disk
        # Unready, the cause named, until space returns; the runner met it too.
        unready = wait_for(
            lambda: (
                (r := readyz(server)).status_code == 503
                and "runner" in r.json()["checks"]
                and r.json()
            ),
            "unready",
        )
        assert NO_SPACE in unready["checks"]["duckdb"]
        assert NO_SPACE in unready["checks"]["runner"]
        refused = client.post("/v1/jobs", json={"table": "docs", "texts": ["not now"]})
        assert refused.status_code == 503 and NO_SPACE in refused.json()["detail"]

        filler.unlink()
        filler = None
        wait_for(lambda: readyz(server).status_code == 200, "ready again, without a restart")
    finally:
        if filler is not None:
            filler.unlink()
        gate.open()
        cluster.client.unregister_worker_plugin(gate.name)

    failed = wait_done(client, big["id"])
    assert (failed["status"], failed["error_reason"]) == ("failed", "store_unavailable")
    assert NO_SPACE in failed["error"]
    assert failed["partitions_done"] >= 1  # the commit before the disk filled is kept

    after = client.post(
        "/v1/jobs", json={"table": "docs", "texts": ["Space came back and the work went on."]}
    ).json()
    after = wait_done(client, after["id"])
    assert after["status"] == "succeeded"

    # Nothing committed was lost, and the ledger matches the rows, job by job.
    assert client.get(f"/v1/jobs/{first['id']}").json() == first
    rows = Counter(
        read_rows(tenant_data_dir(server.data_dir, "filler"), "docs", ["job_id"])[
            "job_id"
        ].to_pylist()
    )
    assert rows == {
        first["id"]: first["chunks_done"],
        big["id"]: failed["chunks_done"],
        after["id"]: after["chunks_done"],
    }
    assert client.get("/v1/tables/docs").json()["rows"] == sum(rows.values())
    with server.admin() as admin:  # the failed job's committed rows are its to keep
        assert_verified_by_api(admin, "docs", "filler")
