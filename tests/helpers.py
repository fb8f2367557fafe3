"""Small helpers for tests: reading back what a job wrote, waiting for a job over HTTP."""
from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import lance
import pyarrow as pa

from engine.sink import ChunkTable
from jobs.local_run import EmbedRequest, RunSummary, run_embedding


def read_rows(data_dir: Path, table: str, columns: list[str] | None = None) -> pa.Table:
    return lance.dataset(ChunkTable(data_dir, table).uri).to_table(columns=columns)


def run(cluster, **kw) -> RunSummary:
    kw.setdefault("chunk_tokens", 64)
    kw.setdefault("overlap_tokens", 8)
    return run_embedding(EmbedRequest(**kw), cluster)


def wait_done(client: httpx.Client, job_id: str, timeout: float = 120.0) -> dict:
    """A job's record once it has ended, polled through the API."""
    deadline = time.monotonic() + timeout
    while (job := client.get(f"/v1/jobs/{job_id}").json())["status"] not in (
            "succeeded", "failed", "cancelled"):
        assert time.monotonic() < deadline, job
        time.sleep(0.1)
    return job


@contextmanager
def logged(logger_name: str) -> Iterator[list[str]]:
    """The messages a logger emits inside the block (pytest's caplog is off: -p no:logging)."""
    lines: list[str] = []
    handler = logging.Handler()
    handler.emit = lambda record: lines.append(record.getMessage())
    logger = logging.getLogger(logger_name)
    logger.addHandler(handler)
    try:
        yield lines
    finally:
        logger.removeHandler(handler)
