"""The tables of a data dir as callers see them: their names, size and model; find or drop one.

The control plane and the API reach Lance only through here (and engine.tables.search): a table is a
`<name>.lance` folder under the data dir's `lancedb/`, committed at least once (see
engine.sink.lance_sink.ChunkTable.exists).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from embedscale.engine.errors import TableNotFoundError
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.schema import table_model
from embedscale.engine.storage.locations import (
    Location,
    StorageOptions,
    child_names,
    remove_tree,
)

MAX_NAMES_SHOWN = 10  # in a not-found message: enough to spot a typo, bounded for many tables


@dataclass(frozen=True, slots=True)
class TableInfo:
    """A table's name, row count, and the model and vector dimension it was embedded with
    (None where its metadata does not say)."""

    name: str
    rows: int
    model: str | None
    dimension: int | None


def table_names(
    data_dir: str | Path | Location, storage: StorageOptions | None = None
) -> list[str]:
    """Names of the tables of a data dir, sorted (folders never committed to are left out).
    `data_dir` may be an object-store URI, reached with `storage` (default: the AWS
    variables), as everywhere in this module."""
    probe = ChunkTable(data_dir, "probe", storage)
    names = [
        n.removesuffix(".lance")
        for n in child_names(str(probe.root), probe.storage)
        if n.endswith(".lance")
    ]
    return [n for n in names if ChunkTable(data_dir, n, probe.storage).exists()]


def existing_table(
    data_dir: str | Path | Location, name: str, storage: StorageOptions | None = None
) -> ChunkTable:
    """The table `name` of a data dir; TableNotFoundError (naming those that exist) if there
    is none, TableError for a name no table can have."""
    table = ChunkTable(data_dir, name, storage)
    if not table.exists():
        names = table_names(data_dir, table.storage)
        shown = ", ".join(names[:MAX_NAMES_SHOWN]) or "none"
        more = f", ... {len(names)} in all" if len(names) > MAX_NAMES_SHOWN else ""
        raise TableNotFoundError(f"no table '{name}' (tables: {shown}{more})")
    return table


def describe_table(
    data_dir: str | Path | Location, name: str, storage: StorageOptions | None = None
) -> TableInfo:
    """Rows, model and dimension of one table (TableNotFoundError if there is none)."""
    return _describe(existing_table(data_dir, name, storage))


def list_tables(
    data_dir: str | Path | Location, storage: StorageOptions | None = None
) -> list[TableInfo]:
    """Every table of a data dir, described, by name."""
    infos = []
    for name in table_names(data_dir, storage):
        table = ChunkTable(data_dir, name, storage)
        try:
            infos.append(_describe(table))
        except Exception:
            if table.exists():
                raise
            # dropped between listing and reading: not listed
    return infos


def read_table(
    data_dir: str | Path | Location,
    name: str,
    columns: list[str] | None = None,
    storage: StorageOptions | None = None,
) -> pa.Table:
    """A table's rows (all columns, or `columns`) as Arrow, as of its latest commit."""
    return existing_table(data_dir, name, storage).dataset().to_table(columns=columns)


def drop_table(table: ChunkTable) -> None:
    """Delete a table's folder with all its rows (the caller checked nothing writes to it)."""
    remove_tree(table.uri, table.storage)


def _describe(table: ChunkTable) -> TableInfo:
    ds = table.dataset()
    model, dimension = table_model(ds.schema)
    return TableInfo(table.name, ds.count_rows(), model, dimension)
