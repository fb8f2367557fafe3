"""Small helpers for tests that read back what a job wrote."""
from __future__ import annotations

from pathlib import Path

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
