"""Partitions: the unit of work, retry and commit. They carry references to documents (a file,
a row range of a file, or a few inline texts), never the corpus itself, so the driver and the
scheduler stay small whatever the corpus size."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True, slots=True)
class FileSlice:
    """A whole file, or a row range of a large row-oriented file (jsonl, parquet)."""

    path: str  # absolute path, as the workers open it
    relpath: str  # relative to the source root: part of doc ids and the `source` column
    fmt: str  # one of engine.sources.readers.FORMATS
    size_bytes: int
    start: int | None = None  # jsonl: byte offset of the first line; parquet: first row
    stop: int | None = None  # jsonl: byte offset past the last line; parquet: row past the last
    first_row: int = 0  # jsonl: the row number of the line at `start`


@dataclass(frozen=True, slots=True)
class InlineText:
    """A document given as text (API and Python-client jobs), not read from a file. Its repr
    names the document only: a task's repr (Dask logs it when a task fails) never carries a
    tenant's text."""

    doc_id: str
    text: str = field(repr=False)
    metadata_json: str = field(default="{}", repr=False)


@dataclass(frozen=True, slots=True)
class TableDocs:
    """Documents of a table, read back from their chunk rows as of one version (a migration
    embeds a table's documents again with another model: jobs/migrations/)."""

    uri: str  # the table (one generation of it) the documents are read from
    version: int  # pinned: what the migration planned, whatever is committed meanwhile
    doc_ids: tuple[str, ...]
    size_bytes: int  # the documents' text, about: for planning and the largest-first order


Item = FileSlice | InlineText | TableDocs


@dataclass(frozen=True, slots=True)
class Partition:
    """A group of document references processed, retried and committed as one."""

    index: int
    items: tuple[Item, ...]

    @property
    def size_bytes(self) -> int:
        return sum(len(i.text) if isinstance(i, InlineText) else i.size_bytes for i in self.items)
