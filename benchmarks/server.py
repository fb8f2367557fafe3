"""A real `embedscale serve` for the API benchmarks: started in its own session with an admin
key, waited for until ready, and the short sentences the benchmarks' clients send."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin"
SENTENCES = [
    "Dask schedules the partitions of a job across its workers.",
    "LanceDB stores each chunk's vector next to its text.",
    "A tenant's daily quota counts the chunks actually embedded.",
    "Small jobs take the fast path through a warm model.",
    "The runner commits every partition exactly once.",
    "Priorities and fair sharing decide what runs next.",
    "Search embeds the query with the table's own model.",
    "Requests that arrive together share one forward pass.",
]


def start_server(
    data_dir: Path, port: int, workers: int, allow_roots: tuple[Path, ...] = ()
) -> subprocess.Popen:
    """`embedscale serve` on 127.0.0.1:`port` with `workers` workers (quiet), reading sources
    under `allow_roots`."""
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "EMBEDSCALE_ADMIN_KEY": ADMIN_KEY,
        "PYTHONPATH": str(ROOT),
    }
    roots = [arg for root in allow_roots for arg in ("--allow-root", str(root))]
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "embedscale",
            "serve",
            "--port",
            str(port),
            "--data-dir",
            str(data_dir),
            "--workers",
            str(workers),
            *roots,
        ],
        env=env,
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_ready(url: str, timeout: float = 180) -> None:
    """Return once `/readyz` answers 200 (TimeoutError after `timeout` seconds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if httpx.get(f"{url}/readyz", timeout=5).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    raise TimeoutError("server not ready")


def stop_server(server: subprocess.Popen) -> None:
    """Stop it gracefully (SIGTERM), or kill its whole session after a minute."""
    server.send_signal(signal.SIGTERM)
    try:
        server.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(server.pid, signal.SIGKILL)
