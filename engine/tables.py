"""The tables of a data dir as callers see them: their names, size and model; find or drop one.

The control plane and the API reach Lance only through here (and engine.search): a table is a
`<name>.lance` folder under the data dir's `lancedb/`, committed at least once (see
engine.sink.ChunkTable.exists).
"""
from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import lance
import pyarrow as pa

from engine.errors import TableNotFoundError
from engine.schema import table_model
from engine.sink import ChunkTable, lancedb_dir

MAX_NAMES_SHOWN = 10  # in a not-found message: enough to spot a typo, bounded for many tables


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table's name, row count, and the model and vector dimension it was embedded with
    (None where its metadata does not say)."""

    name: str
    rows: int
    model: str | None
    dimension: int | None


def table_names(data_dir: str | Path) -> list[str]:
    """Names of the tables of a data dir, sorted (folders never committed to are left out)."""
    root = lancedb_dir(data_dir)
    names = sorted(p.stem for p in root.glob("*.lance")) if root.is_dir() else []
    return [n for n in names if ChunkTable(data_dir, n).exists()]


def existing_table(data_dir: str | Path, name: str) -> ChunkTable:
    """The table `name` of a data dir; TableNotFoundError (naming those that exist) if there
    is none, TableError for a name no table can have."""
    table = ChunkTable(data_dir, name)
    if not table.exists():
        names = table_names(data_dir)
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
        more = f", ... {len(names)} in all" if len(names) > MAX_NAMES_SHOWN else ""
        raise TableNotFoundError(f"no table '{name}' (tables: {shown}{more})")
    return table


def describe_table(data_dir: str | Path, name: str) -> TableInfo:
    """Rows, model and dimension of one table (TableNotFoundError if there is none)."""
    return _describe(existing_table(data_dir, name))


def list_tables(data_dir: str | Path) -> list[TableInfo]:
    """Every table of a data dir, described, by name."""
    infos = []
    for name in table_names(data_dir):
        table = ChunkTable(data_dir, name)
        try:
            infos.append(_describe(table))
        except Exception:
            if table.exists():
                raise
            # dropped between listing and reading: not listed
    return infos


def read_table(data_dir: str | Path, name: str, columns: list[str] | None = None) -> pa.Table:
    """A table's rows (all columns, or `columns`) as Arrow, as of its latest commit."""
    return lance.dataset(existing_table(data_dir, name).uri).to_table(columns=columns)


def drop_table(table: ChunkTable) -> None:
    """Delete a table's folder with all its rows (the caller checked nothing writes to it)."""
    shutil.rmtree(table.uri)


def _describe(table: ChunkTable) -> TableInfo:
    ds = lance.dataset(table.uri)
    model, dimension = table_model(ds.schema)
    return TableInfo(table.name, ds.count_rows(), model, dimension)
