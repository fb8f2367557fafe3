"""API load: N concurrent clients submit small inline jobs (1-5 short texts) for a fixed time.

Starts a real `embedscale serve` (uvicorn, LocalCluster) in a temporary data dir, then each
client loops: POST /v1/jobs, watch the job over its WebSocket until it ends, repeat. Prints jobs
per minute completed, p50/p95/p99 submit-to-succeeded latency, and errors.

    python benchmarks/bench_api_load.py [--clients 32] [--seconds 60] [--workers 2]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import websockets

ROOT = Path(__file__).resolve().parents[1]
ADMIN_KEY = "bench-admin"
SENTENCES = [
    "Dask schedules the partitions of a job across its workers.",
    "LanceDB stores each chunk's vector next to its text.",
    "A tenant's daily quota counts the chunks actually embedded.",
    "Small jobs take the fast path through a warm model.",
    "The runner commits every partition exactly once.",
    "Priorities and fair sharing decide what runs next.",
]


def start_server(data_dir: Path, port: int, workers: int) -> subprocess.Popen:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "EMBEDSCALE_ADMIN_KEY": ADMIN_KEY,
           "PYTHONPATH": str(ROOT)}
    return subprocess.Popen([sys.executable, "-m", "api.cli", "serve", "--port", str(port),
                             "--data-dir", str(data_dir), "--workers", str(workers)],
                            env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)


async def wait_ready(url: str, timeout: float = 180) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient() as client:
        while time.monotonic() < deadline:
            try:
                if (await client.get(f"{url}/readyz")).status_code == 200:
                    return
            except httpx.HTTPError:
                pass
            await asyncio.sleep(0.5)
    raise TimeoutError("server not ready")


async def one_client(url: str, key: str, until: float, latencies: list[float],
                     errors: Counter, rng: random.Random) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    ws_base = url.replace("http://", "ws://")
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        while time.monotonic() < until:
            texts = rng.sample(SENTENCES, rng.randint(1, 5))
            started = time.monotonic()
            try:
                response = await client.post("/v1/jobs", json={"table": "load", "texts": texts})
                if response.status_code != 201:
                    errors[f"HTTP {response.status_code}"] += 1
                    await asyncio.sleep(0.1)
                    continue
                job_id = response.json()["id"]
                async with websockets.connect(f"{ws_base}/v1/jobs/{job_id}/events",
                                              additional_headers=headers) as ws:
                    status = None
                    async for message in ws:
                        status = json.loads(message)["job"]["status"]
                if status == "succeeded":
                    latencies.append(time.monotonic() - started)
                else:
                    errors[f"job {status}"] += 1
            except Exception as exc:  # a broken connection counts, the load goes on
                errors[type(exc).__name__] += 1


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def main_async(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        port = 8700 + os.getpid() % 200
        url = f"http://127.0.0.1:{port}"
        server = start_server(Path(tmp), port, args.workers)
        try:
            await wait_ready(url)
            async with httpx.AsyncClient(base_url=url, headers={
                    "Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
                created = await admin.post("/v1/tenants", json={"name": "load",
                                                                "tier": "enterprise"})
                key = created.json()["api_key"]
            # Warm: the first job loads the model on every worker.
            latencies: list[float] = []
            errors: Counter = Counter()
            await one_client(url, key, time.monotonic() + 0.1, [], Counter(), random.Random(0))
            started = time.monotonic()
            until = started + args.seconds
            await asyncio.gather(*(one_client(url, key, until, latencies, errors,
                                              random.Random(i)) for i in range(args.clients)))
            elapsed = time.monotonic() - started
        finally:
            server.send_signal(signal.SIGTERM)
            try:
                server.wait(timeout=60)
            except subprocess.TimeoutExpired:
                os.killpg(server.pid, signal.SIGKILL)
    print(f"clients: {args.clients}, seconds: {elapsed:.1f}, workers: {args.workers}")
    print(f"jobs completed: {len(latencies)}  ({len(latencies) / elapsed * 60:.0f} jobs/minute)")
    if latencies:
        print(f"latency submit->succeeded: p50 {percentile(latencies, 50):.2f} s, "
              f"p95 {percentile(latencies, 95):.2f} s, p99 {percentile(latencies, 99):.2f} s, "
              f"mean {statistics.mean(latencies):.2f} s")
    print(f"errors: {sum(errors.values())} {dict(errors) if errors else ''}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
