"""The client's progress bar in chunks, and search results as a DataFrame: the bar's arithmetic
alone, then `Job.wait()` and `Client.search` against the real server."""

from __future__ import annotations

import pytest

from embedscale.api.client.progress import ChunkBar, eta_text, expected_total
from embedscale.api.client.service import HIT_COLUMNS, Client


def record(**changes):
    base = {
        "table": "notes",
        "status": "running",
        "chunks_done": 5,
        "estimated_chunks": 20,
        "chunks_per_s": 2.5,
        "tokens_per_s": 310.0,
        "eta_seconds": 6.0,
    }
    return {**base, **changes}


def test_eta_text():
    assert [eta_text(None), eta_text(0.4), eta_text(61.6), eta_text(3725)] == [
        "?",
        "0:00:00",
        "0:01:02",
        "1:02:05",
    ]


def test_the_bar_is_as_long_as_the_chunks_expected():
    assert expected_total(record()) == 20  # admission's estimate
    assert expected_total(record(chunks_done=31)) == 31  # the job outgrew it
    assert expected_total(record(chunks_done=31, expected_chunks=60)) == 60  # extrapolated
    # Succeeded: what it made, so the bar ends full even where the estimate was high.
    assert expected_total(record(status="succeeded", chunks_done=12)) == 12


def test_the_bar_shows_rates_and_eta_then_ends_full(capsys):
    bar = ChunkBar(record())
    bar.update(record(chunks_done=10, eta_seconds=None))
    bar.update(record(status="succeeded", chunks_done=18, chunks_per_s=3.0))
    bar.close()
    frames = capsys.readouterr().err.split("\r")
    assert any(
        "5/20 chunks" in f and "2.5 chunks/s · 310 tokens/s · running · ETA 0:00:06" in f
        for f in frames
    )
    assert any("10/20 chunks" in f and "ETA ?" in f for f in frames)
    assert "notes: 100%" in frames[-1] and "18/18 chunks" in frames[-1]
    assert "3.0 chunks/s" in frames[-1] and "ETA" not in frames[-1]


def test_nothing_to_embed_is_no_empty_bar(capsys):
    bar = ChunkBar(record(status="succeeded", chunks_done=0, estimated_chunks=0))
    bar.close()
    assert "notes: no chunks to embed" in capsys.readouterr().err


@pytest.fixture(scope="module")
def client(server):
    key = server.tenant("progressbar").headers["authorization"].split()[1]
    with Client(server.url, key) as c:
        yield c


@pytest.mark.slow
def test_wait_draws_a_bar_in_chunks(client, capsys):
    texts = ["LanceDB stores the vectors.", "Dask runs the tasks.", "DuckDB keeps the jobs."]
    record = client.submit("bar", texts=texts, ids=["lance", "dask", "duck"]).wait(timeout=60)
    assert record["status"] == "succeeded" and record["chunks_done"] == 3
    assert record["tokens_per_s"] > 0 and record["eta_seconds"] is None
    frames = capsys.readouterr().err.split("\r")
    assert "bar: 100%" in frames[-1] and "3/3 chunks" in frames[-1]
    assert "chunks/s" in frames[-1] and "succeeded" in frames[-1]

    quiet = client.submit("bar", texts=["one more"], ids=["more"]).wait(60, progress=False)
    assert quiet["status"] == "succeeded" and capsys.readouterr().err == ""

    frame = client.search("bar", "which database keeps vectors?", k=3, as_dataframe=True)
    assert list(frame.columns) == HIT_COLUMNS and len(frame) == 3
    assert frame["doc_id"].iloc[0] == "lance" and frame["score"].is_monotonic_decreasing
    assert client.search("bar", "vectors", k=1)[0]["doc_id"] == "lance"  # still a list
    empty = client.search("bar", "vectors", filter="doc_id = 'none'", as_dataframe=True)
    assert empty.empty and list(empty.columns) == HIT_COLUMNS
