"""Chunk tables of synthetic rows for the index and search tests: made with the engine's own
ChunkTable (schema, model metadata), filled with benchmarks/synthetic_table.py's clustered
vectors and topic words, one Lance append per call (as a job's commit adds fragments)."""

from __future__ import annotations

import lance

from benchmarks.synthetic_table import SyntheticCorpus
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable

DIMENSION = 16  # small vectors: an index over a few thousand rows trains in a fraction of a second
CLUSTERS = 20


def synthetic_table(data_dir, name: str = "synthetic", rows: int = 0) -> ChunkTable:
    """A table of `rows` synthetic rows (of the corpus `corpus()` makes)."""
    table = ChunkTable(data_dir, name)
    table.prepare(ModelInfo("synthetic", DIMENSION, 128, 2), "append")
    if rows:
        append_rows(table, 0, rows)
    return table


def corpus() -> SyntheticCorpus:
    """The corpus of every synthetic table here (the same rows and queries each time)."""
    return SyntheticCorpus(DIMENSION, clusters=CLUSTERS)


def append_rows(table: ChunkTable, start: int, count: int) -> None:
    """Rows `start` .. `start + count` of the corpus, appended in one commit."""
    rows = corpus().rows(table.dataset().schema, start, count)
    lance.write_dataset(rows, table.uri, mode="append")
