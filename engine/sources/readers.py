"""Read the documents of one partition item, on a worker. One reader per file format.

A bad file or row never fails the partition: it becomes a `Skipped` with its reason (binary,
invalid UTF-8, empty, malformed JSON, missing text field) and the rest is read.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any, BinaryIO

from embedscale.engine.errors import scrub_message
from embedscale.engine.sources.documents import Document, Skipped
from embedscale.engine.sources.file_access import UNRESTRICTED, FileAccess, FileRefused, too_large
from embedscale.engine.sources.html_text import visible_text
from embedscale.engine.sources.partitions import FileSlice, InlineText

# File extension -> format name.
EXTENSIONS = {
    ".txt": "text",
    ".text": "text",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".json": "json",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".csv": "csv",
    ".parquet": "parquet",
}
FORMATS = frozenset(EXTENSIONS.values())
_BINARY_SNIFF_BYTES = 8192


@dataclass(frozen=True, slots=True)
class RecordFields:
    """Which fields of a record (JSON object, CSV row, parquet row) hold the text and the id."""

    text_field: str = "text"
    id_field: str = "id"


ReadResult = tuple[list[Document], list[Skipped]]
_WHOLE_FILE_FORMATS = frozenset({"json", "csv"})  # parsed whole: bounded by max_file_bytes


def read_item(
    item: FileSlice | InlineText, fields: RecordFields, access: FileAccess = UNRESTRICTED
) -> ReadResult:
    """Read one partition item into documents, and the reasons for what was skipped. Files are
    opened through `access`: a refused file (not regular, outside the roots, too large) is
    skipped with its reason."""
    if isinstance(item, InlineText):
        return _read_inline(item)
    try:
        return _READERS[item.fmt](item, fields, access)
    except FileRefused as exc:
        return [], [Skipped(item.relpath, exc.reason)]
    except OSError as exc:  # vanished or unreadable since planning: skip it, the job goes on
        return [], [Skipped(item.relpath, f"unreadable: {exc.strerror or exc}")]


def _read_inline(item: InlineText) -> ReadResult:
    if not item.text.strip():
        return [], [Skipped(item.doc_id, "empty document")]
    metadata = json.loads(item.metadata_json)
    return [Document(item.doc_id, item.text, source="inline", metadata=metadata)], []


def _decode_text_file(item: FileSlice, access: FileAccess) -> str | Skipped:
    """The file's text, or why it is skipped (binary, invalid UTF-8)."""
    limit = access.max_file_bytes if item.fmt in _WHOLE_FILE_FORMATS else None
    raw = access.read_whole(item.path, limit)
    if b"\x00" in raw[:_BINARY_SNIFF_BYTES]:
        return Skipped(item.relpath, "binary file")
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        return Skipped(item.relpath, f"invalid UTF-8 at byte {exc.start}")


def _read_whole_text(item: FileSlice, fields: RecordFields, access: FileAccess) -> ReadResult:
    text = _decode_text_file(item, access)
    if isinstance(text, Skipped):
        return [], [text]
    if item.fmt == "html":
        text = visible_text(text)
    if not text.strip():
        return [], [Skipped(item.relpath, "empty document")]
    meta = {"path": item.relpath, "format": item.fmt}
    return [Document(item.relpath, text, source=item.relpath, metadata=meta)], []


def _record_document(record: Any, item: FileSlice, row: int, fields: RecordFields) -> ReadResult:
    """A document from one record; its id is the record's id field, else `relpath#row`."""
    where = f"{item.relpath}#{row}"
    if not isinstance(record, dict):
        return [], [Skipped(where, f"record is a {type(record).__name__}, not an object")]
    text = record.get(fields.text_field)
    if text is None:
        return [], [Skipped(where, f"no '{fields.text_field}' field")]
    if not isinstance(text, str):
        return [], [Skipped(where, f"'{fields.text_field}' is a {type(text).__name__}, not text")]
    if not text.strip():
        return [], [Skipped(where, "empty document")]
    raw_id = record.get(fields.id_field)
    doc_id = where if raw_id is None or raw_id == "" else str(raw_id)
    meta = {k: v for k, v in record.items() if k not in (fields.text_field, fields.id_field)}
    meta.update(path=item.relpath, row=row)
    return [Document(doc_id, text, source=item.relpath, metadata=meta)], []


def _collect(results: Iterable[ReadResult]) -> ReadResult:
    docs: list[Document] = []
    skipped: list[Skipped] = []
    for d, s in results:
        docs.extend(d)
        skipped.extend(s)
    return docs, skipped


def _read_json(item: FileSlice, fields: RecordFields, access: FileAccess) -> ReadResult:
    text = _decode_text_file(item, access)
    if isinstance(text, Skipped):
        return [], [text]
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        return [], [Skipped(item.relpath, f"invalid JSON: {exc.msg} at line {exc.lineno}")]
    if isinstance(data, dict):
        docs, skips = _record_document(data, item, 0, fields)
        # A single-object file is one document: its id falls back to the path alone.
        for d in docs:
            if d.doc_id == f"{item.relpath}#0":
                d.doc_id = item.relpath
        return docs, skips
    if isinstance(data, list):
        return _collect(_record_document(r, item, i, fields) for i, r in enumerate(data))
    return [], [Skipped(item.relpath, "top-level JSON is neither an object nor a list of objects")]


def _read_jsonl(item: FileSlice, fields: RecordFields, access: FileAccess) -> ReadResult:
    limit = access.max_document_bytes

    def records() -> Iterable[ReadResult]:
        with access.open(item.path) as f:
            f.seek(item.start or 0)
            stop = item.stop if item.stop is not None else float("inf")
            row, pos = item.first_row, item.start or 0
            while pos < stop:
                line = f.readline(limit + 1)
                if not line:
                    break
                pos += len(line)
                if len(line) > limit and not line.endswith(b"\n"):
                    pos += _skip_rest_of_line(f)  # never hold more than a line's limit
                    yield [], [Skipped(f"{item.relpath}#{row}", too_large(None, limit))]
                else:
                    yield _jsonl_line(line, item, row, fields)
                row += 1

    return _collect(records())


def _skip_rest_of_line(f: BinaryIO, block: int = 1 << 20) -> int:
    """Read past the end of an over-long line, a block at a time; returns the bytes passed."""
    passed = 0
    while True:
        part = f.readline(block)
        passed += len(part)
        if not part or part.endswith(b"\n"):
            return passed


def _jsonl_line(line: bytes, item: FileSlice, row: int, fields: RecordFields) -> ReadResult:
    if not line.strip():
        return [], []  # blank lines separate nothing and hold no document
    where = f"{item.relpath}#{row}"
    try:
        record = json.loads(line.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return [], [Skipped(where, f"invalid UTF-8 at byte {exc.start} of the line")]
    except json.JSONDecodeError as exc:
        return [], [Skipped(where, f"malformed JSON line: {exc.msg}")]
    return _record_document(record, item, row, fields)


def _read_csv(item: FileSlice, fields: RecordFields, access: FileAccess) -> ReadResult:
    text = _decode_text_file(item, access)
    if isinstance(text, Skipped):
        return [], [text]
    reader = csv.DictReader(io.StringIO(text, newline=""))
    try:
        if not reader.fieldnames or fields.text_field not in reader.fieldnames:
            return [], [Skipped(item.relpath, f"no '{fields.text_field}' column")]
        return _collect(_record_document(r, item, i, fields) for i, r in enumerate(reader))
    except csv.Error as exc:  # e.g. a field over csv's limit (128 KiB): skip it, not the job
        return [], [Skipped(item.relpath, f"malformed CSV: {scrub_message(str(exc))}")]


def _read_parquet(item: FileSlice, fields: RecordFields, access: FileAccess) -> ReadResult:
    with access.open(item.path) as f:
        return _read_parquet_file(f, item, fields)


def _read_parquet_file(f: BinaryIO, item: FileSlice, fields: RecordFields) -> ReadResult:
    import pyarrow.parquet as pq

    try:
        pf = pq.ParquetFile(f)
    except Exception as exc:  # pyarrow raises ArrowInvalid for a file that is not parquet
        return [], [
            Skipped(item.relpath, f"not a readable parquet file: {scrub_message(str(exc))}")
        ]
    if fields.text_field not in pf.schema_arrow.names:
        return [], [Skipped(item.relpath, f"no '{fields.text_field}' column")]
    start = item.start or 0
    stop = item.stop if item.stop is not None else pf.metadata.num_rows
    groups: list[int] = []
    first_row_of_groups = row = 0  # first_row_of_groups: the first row of groups[0]
    for g in range(pf.metadata.num_row_groups):
        n = pf.metadata.row_group(g).num_rows
        if row + n > start and row < stop:
            if not groups:
                first_row_of_groups = row
            groups.append(g)
        row += n
    if not groups:
        return [], []
    table = pf.read_row_groups(groups)
    offset = start - first_row_of_groups
    rows = table.slice(offset, stop - start).to_pylist()
    return _collect(_record_document(r, item, start + i, fields) for i, r in enumerate(rows))


_READERS: dict[str, Callable[[FileSlice, RecordFields, FileAccess], ReadResult]] = {
    "text": _read_whole_text,
    "markdown": _read_whole_text,
    "html": _read_whole_text,
    "json": _read_json,
    "jsonl": _read_jsonl,
    "csv": _read_csv,
    "parquet": _read_parquet,
}
