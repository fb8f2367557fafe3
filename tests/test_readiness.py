"""Readiness follows the cluster: a server on an external scheduler goes red when it dies."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import httpx
import pytest

from tests.api_server import ROOT, Server, free_port

pytestmark = pytest.mark.slow
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}


def start(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", *args],
        env=ENV,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def test_readiness_goes_red_when_the_scheduler_is_gone(tmp_path):
    port = free_port()
    address = f"tcp://127.0.0.1:{port}"
    scheduler = start(
        "distributed.cli.dask_scheduler",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--dashboard-address",
        ":0",
    )
    worker = start(
        "distributed.cli.dask_worker",
        address,
        "--nthreads",
        "1",
        "--dashboard-address",
        ":0",
        "--death-timeout",
        "60",
    )
    server = None
    try:
        server = Server(tmp_path, "--scheduler", address)  # waits for readyz 200
        ready = httpx.get(f"{server.url}/readyz").json()
        assert ready["checks"] == {"duckdb": "ok", "scheduler": "ok", "workers": "ok"}

        os.killpg(scheduler.pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while True:
            response = httpx.get(f"{server.url}/readyz", timeout=10)
            if response.status_code == 503:
                break
            assert time.monotonic() < deadline, response.text
            time.sleep(0.5)
        body = response.json()
        assert body["ready"] is False and body["checks"]["scheduler"].startswith("error")
        assert httpx.get(f"{server.url}/healthz").status_code == 200  # alive, just not ready
    finally:
        for process in (worker, scheduler, server.process if server else None):
            if process is not None and process.poll() is None:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()
