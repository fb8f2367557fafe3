"""Imports point one way, `api -> jobs -> engine`: read from the source of every module (every
import statement, those inside functions too), without importing anything."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engine", "jobs", "api", "embedscale")

# module (path from the root) -> top-level packages it must not import, and why
FORBIDDEN = {
    "engine": ({"jobs", "api"}, "the data plane knows nothing of the control plane or HTTP"),
    "jobs": ({"api"}, "the control plane knows nothing of HTTP or the CLI"),
    "api": ({"lance", "lancedb", "duckdb"},
            "the API reaches tables through engine and the store through JobService"),
    "embedscale": ({"lance", "lancedb", "duckdb"},
                   "the public facade only names what api, jobs and engine provide"),
}
# The only modules that may import duckdb: the store (jobs/store*.py and the recording of
# progress it calls) opens the control plane's file; the filter check only parses SQL in an
# in-memory connection (no file, no data).
DUCKDB_MODULES = {"jobs/store.py", "jobs/store_connection.py", "jobs/store_guard.py",
                  "jobs/progress_records.py", "jobs/store_schedules.py", "jobs/store_ledger.py",
                  "engine/filters.py"}
# The HTTP client is used from notebooks on machines without the engine: nothing of ours.
INDEPENDENT = {"api/client.py": {"engine", "jobs"}, "api/client_progress.py": {"engine", "jobs"}}


def imported_packages(source: str) -> set[str]:
    """Top-level names of every absolute import in `source`."""
    found = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def modules() -> dict[str, set[str]]:
    return {path.relative_to(ROOT).as_posix(): imported_packages(path.read_text())
            for package in PACKAGES for path in sorted((ROOT / package).rglob("*.py"))}


def test_every_package_is_read():
    found = modules()
    for expected in ("engine/sink.py", "jobs/store.py", "jobs/service.py", "api/app.py",
                     "api/routes/tables.py"):
        assert expected in found
    assert "lance" in found["engine/sink.py"] and "duckdb" in found["jobs/store.py"]


def test_imports_point_one_way():
    wrong = []
    for module, imports in modules().items():
        forbidden, why = FORBIDDEN[module.split("/")[0]]
        wrong += [f"{module} imports {name}: {why}" for name in sorted(imports & forbidden)]
        if "duckdb" in imports and module not in DUCKDB_MODULES:
            wrong.append(f"{module} imports duckdb: only {sorted(DUCKDB_MODULES)} may")
        for name in sorted(imports & INDEPENDENT.get(module, set())):
            wrong.append(f"{module} imports {name}: the HTTP client stands alone")
    assert wrong == []


def test_only_relative_imports_would_escape_and_there_are_none():
    relative = [path.relative_to(ROOT).as_posix()
                for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                if any(isinstance(n, ast.ImportFrom) and n.level
                       for n in ast.walk(ast.parse(path.read_text())))]
    assert relative == []


@pytest.mark.parametrize("source,expected", [
    ("import lance", {"lance"}),
    ("from jobs.store import Store", {"jobs"}),
    ("def f():\n    import duckdb.typing\n", {"duckdb"}),
    ("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from api.app import x\n",
     {"typing", "api"}),
])
def test_the_reader_sees_every_kind_of_import(source, expected):
    assert imported_packages(source) == expected
