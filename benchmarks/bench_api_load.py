"""API load: N concurrent clients submit small inline jobs (1-5 short texts) for a fixed time,
alone or beside another tenant's big job.

Starts a real `embedscale serve` (uvicorn, LocalCluster) in a temporary data dir with
`--tenants` tenants (of `--tiers`, in turn; their daily quotas lifted so the load is not cut
short), the clients spread over them; each client loops: POST /v1/jobs, follow the job until it
ends (over its WebSocket, or with `--poll S` by GET every S seconds, as most HTTP clients do),
repeat. Prints jobs per minute completed, p50/p95/p99 submit-to-succeeded latency, and errors.

With `--big-job CHUNKS`, an enterprise tenant's job over a pydoc corpus of about CHUNKS chunks
(of `--big-chunk-tokens` tokens) runs too, and three phases are measured on the one warm
server: the small jobs alone (`--seconds`), the big job alone, then both together (the small
clients run until the big job ends). Prints the small jobs' figures with and without the big
job, and the big job's chunks per second beside it as a ratio of its own throughput alone.

    python benchmarks/bench_api_load.py [--clients 32] [--tenants 8] [--seconds 60]
                                        [--workers 2] [--poll 0.25] [--tiers free,premium]
                                        [--big-job 10000] [--big-chunk-tokens 64]
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
    async with websockets.connect(
        f"{url.replace('http://', 'ws://')}/v1/jobs/{job_id}/events", additional_headers=headers
    ) as ws:
        async for message in ws:
            status = json.loads(message)["job"]["status"]
    return status


async def follow_polling(client: httpx.AsyncClient, job_id: str, every: float) -> str:
    while True:
        status = (await client.get(f"/v1/jobs/{job_id}")).json()["status"]
        if status in ("succeeded", "failed", "cancelled"):
            return status
        await asyncio.sleep(every)


async def one_client(
    url: str,
    key: str,
    until: float,
    latencies: list[float],
    errors: Counter,
    rng: random.Random,
    poll: float = 0.0,
    stop: asyncio.Event | None = None,
) -> None:
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        while time.monotonic() < until and not (stop is not None and stop.is_set()):
            texts = rng.sample(SENTENCES, rng.randint(1, 5))
            started = time.monotonic()
            try:
                response = await client.post("/v1/jobs", json={"table": "load", "texts": texts})
                if response.status_code != 201:
                    errors[f"HTTP {response.status_code}"] += 1
                    # A rate limit says when to come back; anything else, a short pause.
                    await asyncio.sleep(min(5.0, float(response.headers.get("Retry-After", 0.1))))
                    continue
                job_id = response.json()["id"]
                status = (
                    await follow_polling(client, job_id, poll)
                    if poll > 0
                    else await follow_websocket(url, headers, job_id)
                )
                if status == "succeeded":
                    latencies.append(time.monotonic() - started)
                else:
                    errors[f"job {status}"] += 1
            except Exception as exc:  # a broken connection counts, the load goes on
                errors[type(exc).__name__] += 1


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))]


async def create_tenants(url: str, count: int, tiers: list[str], prefix: str = "load") -> list[str]:
    """API keys of `count` new tenants of `tiers` in turn, their daily quotas lifted."""
    keys = []
    async with httpx.AsyncClient(
        base_url=url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}
    ) as admin:
        for t in range(count):
            name = f"{prefix}{t}"
            created = await admin.post(
                "/v1/tenants", json={"name": name, "tier": tiers[t % len(tiers)]}
            )
            keys.append(created.json()["api_key"])
            await admin.patch(f"/v1/tenants/{name}", json={"daily_chunks": 100_000_000})
    return keys


async def small_load(
    url: str,
    keys: list[str],
    clients: int,
    seconds: float,
    poll: float,
    stop: asyncio.Event | None = None,
) -> tuple[list[float], Counter, float]:
    """Latencies, errors and the elapsed time of `clients` small-job clients over `keys`, for
    `seconds` or until `stop` is set."""
    latencies: list[float] = []
    errors: Counter = Counter()
    started = time.monotonic()
    until = started + seconds
    await asyncio.gather(
        *(
            one_client(
                url, keys[i % len(keys)], until, latencies, errors, random.Random(i), poll, stop
            )
            for i in range(clients)
        )
    )
    return latencies, errors, time.monotonic() - started


async def big_job(url: str, key: str, source: Path, table: str, chunk_tokens: int) -> dict:
    """Submit the big job and poll it (every second) until it ends; its final record."""
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=url, headers=headers, timeout=60) as client:
        response = await client.post(
            "/v1/jobs",
            json={
                "table": table,
                "source": str(source),
                "chunk_tokens": chunk_tokens,
                "mode": "overwrite",
            },
        )
        response.raise_for_status()
        job_id = response.json()["id"]
        while (job := (await client.get(f"/v1/jobs/{job_id}")).json())["status"] not in (
            "succeeded",
            "failed",
            "cancelled",
        ):
            await asyncio.sleep(1.0)
    return job


def chunks_per_second(job: dict) -> float:
    from datetime import datetime

    seconds = (
        datetime.fromisoformat(job["finished_at"]) - datetime.fromisoformat(job["started_at"])
    ).total_seconds()
    return job["chunks_done"] / max(seconds, 1e-9)


def big_corpus(folder: Path, chunks: int, chunk_tokens: int) -> tuple[Path, int]:
    """A folder of pydoc text files that chunk into about `chunks` chunks of `chunk_tokens`,
    counted with the model's own tokenizer; the folder and the count."""
    from benchmarks.corpus import stdlib_docs
    from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
    from embedscale.engine.models import get_model, resolve_model

    model = get_model(resolve_model("all-MiniLM-L6-v2"))
    settings = ChunkSettings.for_model(model.info, chunk_tokens, None)
    folder.mkdir(parents=True, exist_ok=True)
    total = 0
    for name, text in stdlib_docs(64 * 1024 * 1024):
        if total >= chunks:
            break
        (folder / f"{name}.txt").write_text(text)
        total += len(chunk_texts([text], model.tokenizer, settings))
    return folder, total


def report(title: str, latencies: list[float], errors: Counter, elapsed: float) -> None:
    print(
        f"{title}: {len(latencies)} jobs in {elapsed:.1f} s "
        f"({len(latencies) / elapsed * 60:.0f} jobs/minute)"
    )
    if latencies:
        print(
            f"  latency submit->succeeded: p50 {percentile(latencies, 50):.2f} s, "
            f"p95 {percentile(latencies, 95):.2f} s, p99 {percentile(latencies, 99):.2f} s, "
            f"max {max(latencies):.2f} s, mean {statistics.mean(latencies):.2f} s"
        )
    print(f"  errors: {sum(errors.values())} {dict(errors) if errors else ''}")


async def main_async(args: argparse.Namespace) -> None:
    tiers = args.tiers.split(",")
    with tempfile.TemporaryDirectory() as tmp:
        corpus, corpus_chunks = (
            big_corpus(Path(tmp) / "big", args.big_job, args.big_chunk_tokens)
            if args.big_job
            else (None, 0)
        )
        port = 8700 + os.getpid() % 200
        url = f"http://127.0.0.1:{port}"
        server = start_server(Path(tmp) / "data", port, args.workers, (corpus,) if corpus else ())
        try:
            await asyncio.to_thread(wait_ready, url)
            keys = await create_tenants(url, args.tenants, tiers)
            # Warm: the first job loads the model on every worker.
            await one_client(url, keys[0], time.monotonic() + 0.1, [], Counter(), random.Random(0))
            follow = f"polling every {args.poll} s" if args.poll > 0 else "WebSocket"
            print(
                f"clients: {args.clients} over {args.tenants} tenants ({follow}; tiers "
                f"{args.tiers}), workers: {args.workers}"
            )
            alone = await small_load(url, keys, args.clients, args.seconds, args.poll)
            report("small jobs alone", *alone)
            if corpus is None:
                return
            (whale,) = await create_tenants(url, 1, ["enterprise"], prefix="whale")
            print(
                f"big job: {corpus_chunks} chunks of {args.big_chunk_tokens} tokens "
                f"(enterprise tenant)"
            )
            solo = await big_job(url, whale, corpus, "big_alone", args.big_chunk_tokens)
            solo_rate = chunks_per_second(solo)
            print(
                f"big job alone: {solo['status']}, {solo['chunks_done']} chunks, "
                f"{solo_rate:.1f} chunks/s"
            )
            stop = asyncio.Event()

            async def big_then_stop() -> dict:
                try:
                    return await big_job(url, whale, corpus, "big_shared", args.big_chunk_tokens)
                finally:
                    stop.set()

            shared, beside = await asyncio.gather(
                big_then_stop(), small_load(url, keys, args.clients, 24 * 3600.0, args.poll, stop)
            )
            report("small jobs beside the big job", *beside)
            shared_rate = chunks_per_second(shared)
            print(
                f"big job beside the small jobs: {shared['status']}, "
                f"{shared['chunks_done']} chunks, {shared_rate:.1f} chunks/s = "
                f"{shared_rate / solo_rate:.3f}x its throughput alone"
            )
        finally:
            stop_server(server)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=60)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--tenants", type=int, default=8, help="clients are spread over them")
    parser.add_argument(
        "--poll",
        type=float,
        default=0.0,
        help="follow jobs by GET every POLL seconds (default: WebSocket)",
    )
    parser.add_argument(
        "--tiers",
        default="enterprise",
        help="the small-job tenants' tiers, in turn (e.g. free,premium)",
    )
    parser.add_argument(
        "--big-job",
        type=int,
        default=0,
        metavar="CHUNKS",
        help="also run an enterprise tenant's job of about CHUNKS chunks",
    )
    parser.add_argument("--big-chunk-tokens", type=int, default=64)
    asyncio.run(main_async(parser.parse_args()))


if __name__ == "__main__":
    main()
