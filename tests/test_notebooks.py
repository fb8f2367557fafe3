"""The notebooks run: their code cells, in order, as a reader would run them."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from embedscale.api.client.service import HIT_COLUMNS

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str) -> dict:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{name} cell", "exec"), namespace)
    return namespace


def test_quickstart(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("EMBEDSCALE_DATA_DIR", str(tmp_path))
    monkeypatch.setenv("MPLBACKEND", "Agg")  # no display here; Jupyter draws inline
    monkeypatch.chdir(NOTEBOOKS.parent)
    ns = run_notebook("quickstart.ipynb")
    summary = ns["summary"]
    assert summary.ok and summary.chunks > 100
    bar = capsys.readouterr().err.split("\r")  # tqdm's text bar: no kernel here
    assert any(
        "sample: 100%" in f and f"{summary.chunks}/{summary.chunks} chunks" in f for f in bar
    )
    assert list(ns["hits"].columns) == HIT_COLUMNS and len(ns["hits"]) == 5
    assert ns["hits"]["doc_id"].iloc[0] == "notes/exactly-once.md"
    # The plots: one point per chunk in the projection, the job's commits over time.
    assert ns["xy"].shape == (summary.chunks, 2)
    assert ns["history"][-1].chunks == summary.chunks
    assert len(ns["fig"].axes) == 3 and ns["fig"].axes[0].collections
    ns["plt"].close(ns["fig"])
    assert (ns["again"].documents, ns["again"].unchanged) == (0, summary.documents)


def test_service_client(server, monkeypatch):
    key = server.tenant("notebook").headers["authorization"].split()[1]
    monkeypatch.setenv("EMBEDSCALE_URL", server.url)
    monkeypatch.setenv("EMBEDSCALE_API_KEY", key)
    monkeypatch.chdir(NOTEBOOKS.parent)
    ns = run_notebook("service_client.ipynb")
    assert ns["record"]["status"] == "succeeded"
    assert ns["hits"]["doc_id"].iloc[0] == "chunking"


def test_scheduled_sync(server, monkeypatch):
    key = server.tenant("syncbook").headers["authorization"].split()[1]
    monkeypatch.setenv("EMBEDSCALE_URL", server.url)
    monkeypatch.setenv("EMBEDSCALE_API_KEY", key)
    monkeypatch.setenv("EMBEDSCALE_SOURCE_DIR", str(server.root / "sync-demo"))
    monkeypatch.setenv("MPLBACKEND", "Agg")
    monkeypatch.chdir(NOTEBOOKS.parent)
    ns = run_notebook("scheduled_sync.ipynb")
    kinds = ["new", "changed", "unchanged", "deleted"]
    # Seven documents; then quotas.md changed, schedules.md added, csv.txt removed; then none.
    assert ns["counts"][kinds].to_numpy().tolist() == [[7, 0, 0, 0], [1, 1, 5, 1], [0, 0, 7, 0]]
    assert ns["counts"]["chunks embedded"].iloc[2] == 0
    history = ns["history"]
    assert len(history) == 3 and (history["schedule_id"] == ns["schedule"]["id"]).all()
    assert set(history["status"]) == {"succeeded"}
    assert "csv.txt" not in ns["hits"]["doc_id"].tolist() and ns["table"] > 7
    ns["plt"].close(ns["fig"])
