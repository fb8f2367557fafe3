"""API load: N concurrent clients submit small inline jobs (1-5 short texts) for a fixed time.

Starts a real `embedscale serve` (uvicorn, LocalCluster) in a temporary data dir with
`--tenants` tenants (enterprise tier), the clients spread over them; each client loops: POST
/v1/jobs, follow the job until it ends (over its WebSocket, or with `--poll S` by GET every S
seconds, as most HTTP clients do), repeat. Prints jobs per minute completed, p50/p95/p99
submit-to-succeeded latency, and errors.

    python benchmarks/bench_api_load.py [--clients 32] [--tenants 8] [--seconds 60]
                                        [--workers 2] [--poll 0.25]
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import httpx
import websockets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server import ADMIN_KEY, SENTENCES, start_server, stop_server, wait_ready


async def follow_websocket(url: str, headers: dict, job_id: str) -> str | None:
    status = None
    async with websockets.connect(f"{url.replace('http://', 'ws://')}/v1/jobs/{job_id}/events",
                                  additional_headers=headers) as ws:
        async for message in ws:
            status = json.loads(message)["job"]["status"]
    return status


async def follow_polling(client: httpx.AsyncClient, job_id: str, every: float) -> str:
    while True:
        status = (await client.get(f"/v1/jobs/{job_id}")).json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            return status
        await asyncio.sleep(every)


async def one_client(url: str, key: str, until: float, latencies: list[float],
                     errors: Counter, rng: random.Random, poll: float = 0.0) -> None:
    headers = {"Authorization": f"Bearer {key}"}
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
                status = (await follow_polling(client, job_id, poll) if poll > 0
                          else await follow_websocket(url, headers, job_id))
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
            await asyncio.to_thread(wait_ready, url)
            keys = []
            async with httpx.AsyncClient(base_url=url, headers={
                    "Authorization": f"Bearer {ADMIN_KEY}"}) as admin:
                for t in range(args.tenants):
                    created = await admin.post("/v1/tenants", json={"name": f"load{t}",
                                                                    "tier": "enterprise"})
                    keys.append(created.json()["api_key"])
            # Warm: the first job loads the model on every worker.
            latencies: list[float] = []
            errors: Counter = Counter()
            await one_client(url, keys[0], time.monotonic() + 0.1, [], Counter(),
                             random.Random(0))
            started = time.monotonic()
            until = started + args.seconds
            await asyncio.gather(*(one_client(url, keys[i % len(keys)], until, latencies, errors,
                                              random.Random(i), args.poll)
                                   for i in range(args.clients)))
            elapsed = time.monotonic() - started
        finally:
            stop_server(server)
    follow = f"polling every {args.poll} s" if args.poll > 0 else "WebSocket"
    print(f"clients: {args.clients} over {args.tenants} tenants ({follow}), seconds: "
          f"{elapsed:.1f}, workers: {args.workers}")
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
    parser.add_argument("--tenants", type=int, default=8, help="clients are spread over them")
    parser.add_argument("--poll", type=float, default=0.0,
                        help="follow jobs by GET every POLL seconds (default: WebSocket)")
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
