"""`import embedscale`: the public facade. Light to import; `run` and `search` on the real
model and a real cluster, as a notebook uses them."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import fields
from pathlib import Path

import numpy as np
import pytest

import embedscale
from embedscale.api.client.service import HIT_COLUMNS
from embedscale.engine.errors import TableNotFoundError
from embedscale.engine.tables.search import Hit
from tests.helpers import read_rows

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ["dask", "distributed", "torch", "lancedb", "lance", "duckdb", "pandas", "transformers"]


def test_import_is_light_and_names_load_on_use():
    # A fresh interpreter: this one has long imported everything.
    code = (
        "import sys, json, embedscale\n"
        "before = [m for m in sys.argv[1:] if m in sys.modules]\n"
        "embedscale.Client\n"
        "after_client = [m for m in sys.argv[1:] if m in sys.modules]\n"
        "print(json.dumps([before, after_client, sorted(dir(embedscale))]))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, *HEAVY],
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=True,
        timeout=120,
    )
    before, after_client, names = json.loads(done.stdout)
    assert before == [] and after_client == []  # the HTTP client needs none of the engine
    assert {"Client", "run", "search", "read_table", "tables", "cluster"} <= set(names)
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        embedscale.nope  # noqa: B018


def test_exports_resolve_to_the_internals():
    from embedscale.api.client.service import Client
    from embedscale.jobs.local_run import JobFailedError
    from embedscale.local_jobs import run

    assert embedscale.Client is Client and embedscale.run is run
    assert embedscale.RunFailedError is JobFailedError
    assert sorted(embedscale.__all__) == sorted(embedscale._EXPORTS)
    assert all(getattr(embedscale, name) is not None for name in embedscale.__all__)


def test_hit_columns_are_the_hit_fields():
    # The DataFrame of a search (local or over HTTP) shows every field of a hit, once.
    assert sorted(HIT_COLUMNS) == sorted(f.name for f in fields(Hit))


@pytest.mark.slow
def test_run_texts_then_search(cluster, tmp_path, capsys):
    texts = [
        "LanceDB stores the vectors and their metadata.",
        "Dask schedules the embedding tasks on workers.",
        "DuckDB keeps the job records and the usage ledger.",
    ]
    summary = embedscale.run(
        texts, table="notes", ids=["lance", "dask", "duck"], data_dir=tmp_path, cluster=cluster
    )
    assert summary.ok and (summary.documents, summary.chunks) == (3, 3)
    assert read_rows(tmp_path, "notes").num_rows == 3
    bar = capsys.readouterr().err  # tqdm's text bar, outside Jupyter
    assert "notes: 100%" in bar and "3/3 chunks" in bar and "chunks/s" in bar
    assert "succeeded" in bar

    hits = embedscale.search("notes", "where do job records live?", k=2, data_dir=tmp_path)
    assert [type(h) for h in hits] == [Hit, Hit] and hits[0].doc_id == "duck"
    frame = embedscale.search(
        "notes", "which database keeps vectors?", k=3, data_dir=tmp_path, as_dataframe=True
    )
    assert list(frame.columns) == HIT_COLUMNS and len(frame) == 3
    assert frame["doc_id"].iloc[0] == "lance"
    assert frame["score"].is_monotonic_decreasing
    filtered = embedscale.search(
        "notes", "vectors", data_dir=tmp_path, as_dataframe=True, where="doc_id = 'dask'"
    )
    assert filtered["doc_id"].tolist() == ["dask"]

    [info] = embedscale.tables(data_dir=tmp_path)
    assert (info.name, info.rows, info.dimension) == ("notes", 3, 384)
    rows = embedscale.read_table("notes", ["doc_id", "vector"], data_dir=tmp_path)
    assert list(rows.columns) == ["doc_id", "vector"]
    assert sorted(rows["doc_id"]) == ["dask", "duck", "lance"]
    vectors = np.stack(rows["vector"])
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    with pytest.raises(TableNotFoundError, match="no table 'nope' \\(tables: notes\\)"):
        embedscale.read_table("nope", data_dir=tmp_path)


@pytest.mark.slow
def test_run_source_reports_progress_and_upserts(
    cluster, small_corpus, tmp_path, monkeypatch, capsys
):
    monkeypatch.setenv("EMBEDSCALE_DATA_DIR", str(tmp_path))  # the default data dir
    seen = []
    summary = embedscale.run(
        small_corpus,
        table="docs",
        chunk_tokens=128,
        cluster=cluster,
        partition_bytes=4_000,
        progress=False,
        on_progress=seen.append,
    )
    assert summary.ok and summary.partitions > 1 and summary.table_uri.startswith(str(tmp_path))
    assert capsys.readouterr().err == ""  # progress=False draws nothing
    done = [p.partitions_done for p in seen]  # after each commit (some commit together)
    assert done == sorted(done) and done[-1] == summary.partitions
    assert seen[-1].chunks == summary.chunks and all(p.expected_chunks > 0 for p in seen)
    assert all(p.tokens_per_s > p.chunks_per_s > 0 for p in seen)
    assert seen[-1].eta_seconds is None  # every partition in: nothing left to wait for

    again = embedscale.run(
        str(small_corpus), table="docs", mode="upsert", chunk_tokens=128, cluster=cluster
    )
    assert (again.documents, again.unchanged) == (0, summary.documents)
    bar = capsys.readouterr().err  # nothing embedded, still a finished bar
    assert "docs: no chunks to embed" in bar and "succeeded" in bar
    assert embedscale.search("docs", "heap queue", k=1)[0].doc_id == "heapq.txt"


def test_run_refuses_what_it_cannot_read():
    with pytest.raises(TypeError, match="unexpected keyword argument 'chunk_size'"):
        embedscale.run(["x"], table="t", chunk_size=3)
    with pytest.raises(TypeError, match="not bytes"):
        embedscale.run(b"texts", table="t")
