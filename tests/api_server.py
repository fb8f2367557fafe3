"""A real `embedscale serve` (uvicorn, FastAPI, its own LocalCluster) in a subprocess."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "test-admin-key"
TEST_TIERS = """
tiers:
  free: {daily_chunks: 1000, max_concurrent_jobs: 2, weight: 1.0, requests_per_minute: 600}
  premium: {daily_chunks: 10000, max_concurrent_jobs: 5, weight: 2.0, requests_per_minute: 600}
  enterprise: {daily_chunks: 100000, max_concurrent_jobs: 20, weight: 4.0,
               requests_per_minute: 100000}
  limited: {daily_chunks: 1000, max_concurrent_jobs: 2, weight: 1.0, requests_per_minute: 2}
  paced: {daily_chunks: 1000, max_concurrent_jobs: 2, weight: 1.0, requests_per_minute: 6}
"""


def metrics_text(url: str) -> str:
    """GET /metrics as it stands after this moment: the server keeps its page up to
    MAX_AGE_S (api/server/metrics_page.py), so the page asked for once that long has passed is a
    new one (the tests ask one at a time)."""
    from embedscale.api.server.metrics_page import MAX_AGE_S

    time.sleep(MAX_AGE_S)
    response = httpx.get(f"{url}/metrics", timeout=30)
    assert response.status_code == 200, response.text
    return response.text


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    """The server process, its URL and the folders it was given."""

    def __init__(self, workdir: Path, *extra: str, admin_key: str | None = ADMIN_KEY) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.data_dir = workdir / "data"
        self.root = workdir / "allowed"
        self.root.mkdir(parents=True, exist_ok=True)
        tiers = workdir / "tiers.yaml"
        tiers.write_text(TEST_TIERS)
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
        if admin_key:
            env["EMBEDSCALE_ADMIN_KEY"] = admin_key
        self.log = (workdir / "server.log").open("w")
        self.process = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "embedscale",
                "serve",
                "--port",
                str(self.port),
                "--data-dir",
                str(self.data_dir),
                "--allow-root",
                str(self.root),
                "--tiers",
                str(tiers),
                *extra,
            ],
            cwd=ROOT,
            env=env,
            stdout=self.log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.wait_ready()

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        # One client for the whole wait: each new one loads the CA bundle (~20 ms of CPU).
        with httpx.Client(timeout=5) as client:
            while time.monotonic() < deadline:
                assert self.process.poll() is None, "server exited during start-up"
                try:
                    if client.get(f"{self.url}/readyz").status_code == 200:
                        return
                except httpx.HTTPError:
                    pass
                time.sleep(0.25)
        raise TimeoutError("server never became ready")

    def stop(self) -> None:
        """SIGTERM, as an operator would: the shutdown is graceful."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        self.log.close()

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.url, timeout=60, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
        )

    def hold_in_queue(self, tenant: str, held: bool = True) -> None:
        """Allow the tenant no running job (its jobs wait in `queued`, however fast the
        cluster), or give it back its tier's limit. A limit is read when jobs are admitted,
        which the tenant's next submission starts."""
        with self.admin() as admin:
            limit = {"max_concurrent_jobs": 0 if held else None}
            assert admin.patch(f"/v1/tenants/{tenant}", json=limit).status_code == 200

    def tenant(self, name: str, tier: str = "premium") -> httpx.Client:
        """A new tenant, and a client that authenticates as it."""
        with self.admin() as admin:
            created = admin.post("/v1/tenants", json={"name": name, "tier": tier})
            assert created.status_code == 201, created.text
        return httpx.Client(
            base_url=self.url,
            timeout=60,
            headers={"Authorization": f"Bearer {created.json()['api_key']}"},
        )
