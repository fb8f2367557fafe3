"""The notebooks run: their code cells, in order, as a reader would run them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


def run_notebook(name: str) -> dict:
    cells = json.loads((NOTEBOOKS / name).read_text())["cells"]
    namespace: dict = {}
    for cell in cells:
        if cell["cell_type"] == "code":
            exec(compile("".join(cell["source"]), f"{name} cell", "exec"), namespace)
    return namespace


def test_quickstart(tmp_path, monkeypatch):
    monkeypatch.setenv("EMBEDSCALE_DATA_DIR", str(tmp_path))
    monkeypatch.chdir(NOTEBOOKS.parent)
    ns = run_notebook("quickstart.ipynb")
    assert ns["summary"].ok and ns["summary"].chunks > 100
    assert ns["hits"][0].doc_id == "notes/exactly-once.md"
    assert (ns["again"].documents, ns["again"].unchanged) == (0, ns["summary"].documents)


def test_service_client(server, monkeypatch):
    key = server.tenant("notebook").headers["authorization"].split()[1]
    monkeypatch.setenv("EMBEDSCALE_URL", server.url)
    monkeypatch.setenv("EMBEDSCALE_API_KEY", key)
    monkeypatch.chdir(NOTEBOOKS.parent)
    ns = run_notebook("service_client.ipynb")
    assert ns["record"]["status"] == "succeeded"
    assert ns["hits"][0]["doc_id"] == "chunking"
