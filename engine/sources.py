"""Enumerate a source into partitions of document references, on the driver.

A source is a directory (read recursively), a single file, a glob, or a list of texts. The
planner looks at file names and sizes only; large row-oriented files (jsonl, parquet) are split
into row ranges, so one huge file still spreads over the cluster. The corpus itself is read on
the workers (engine.readers).
"""
from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from engine.documents import Skipped
from engine.errors import SourceError
from engine.partitions import FileSlice, InlineText, Partition
from engine.readers import EXTENSIONS

MIN_PARTITION_BYTES = 16 * 1024  # ~16 chunks of 256 tokens: a commit per ~second of work
MAX_PARTITION_BYTES = 16 * 1024 * 1024
PARTITIONS_PER_WORKER = 8  # small enough that uneven partitions still even out
INLINE_DOCS_PER_PARTITION = 256


@dataclass
class SourcePlan:
    """The partitions of a source, and what was skipped while listing it."""

    partitions: list[Partition]
    skipped: list[Skipped] = field(default_factory=list)
    root: str = ""
    files: int = 0
    total_bytes: int = 0


def plan_source(
    source: str | os.PathLike, *, parallelism: int = 1, partition_bytes: int | None = None
) -> SourcePlan:
    """Plan a directory, file or glob into partitions of about `partition_bytes` each.

    `partition_bytes` defaults to a size that gives each of `parallelism` workers several
    partitions. Raises SourceError when the source does not exist or has nothing to embed.
    """
    root, paths = _list_files(str(source))
    skipped: list[Skipped] = []
    candidates: list[tuple[str, str, str, int]] = []
    for path in paths:
        rel = os.path.relpath(path, root)
        fmt = EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            skipped.append(Skipped(rel, f"unsupported file type '{Path(path).suffix or path}'"))
            continue
        try:
            size = os.stat(path).st_size
        except OSError as exc:
            skipped.append(Skipped(rel, f"unreadable: {exc.strerror}"))
            continue
        candidates.append((path, rel, fmt, size))
    if not candidates:
        kinds = ", ".join(sorted(EXTENSIONS))
        raise SourceError(
            f"source has no supported files: {source} ({len(skipped)} other files; "
            f"supported: {kinds})"
        )
    total = sum(c[3] for c in candidates)
    target = partition_bytes or _default_partition_bytes(total, parallelism)
    slices = [s for c in candidates for s in _slices(*c, target=target, skipped=skipped)]
    return SourcePlan(_pack(slices, target), skipped, root, len(candidates), total)


def plan_texts(
    texts: Sequence[str],
    ids: Sequence[str] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
    *,
    docs_per_partition: int = INLINE_DOCS_PER_PARTITION,
) -> SourcePlan:
    """Plan inline texts; ids default to their position (`"0"`, `"1"`, ...)."""
    if ids is not None and len(ids) != len(texts):
        raise SourceError(f"ids has {len(ids)} entries but texts has {len(texts)}")
    if metadata is not None and len(metadata) != len(texts):
        raise SourceError(f"metadata has {len(metadata)} entries but texts has {len(texts)}")
    if not texts:
        raise SourceError("texts is empty: nothing to embed")
    ids = [str(i) for i in (ids if ids is not None else range(len(texts)))]
    if len(set(ids)) != len(ids):
        raise SourceError("ids are not unique: each text needs its own id")
    items = [
        InlineText(doc_id, text, json.dumps(metadata[i] if metadata and metadata[i] else {}))
        for i, (doc_id, text) in enumerate(zip(ids, texts))
    ]
    parts = [
        Partition(n, tuple(items[i : i + docs_per_partition]))
        for n, i in enumerate(range(0, len(items), docs_per_partition))
    ]
    return SourcePlan(parts, [], "inline", 0, sum(len(t) for t in texts))


def _default_partition_bytes(total: int, parallelism: int) -> int:
    per_partition = total // max(1, parallelism * PARTITIONS_PER_WORKER)
    return max(MIN_PARTITION_BYTES, min(MAX_PARTITION_BYTES, per_partition))


def _list_files(source: str) -> tuple[str, list[str]]:
    """The root that relative paths start from, and the files of the source, sorted."""
    if glob.has_magic(source):
        root = _glob_root(source)
        files = [p for p in glob.glob(source, recursive=True) if os.path.isfile(p)]
        if not files:
            raise SourceError(f"source glob matches no files: {source}")
        return root, sorted(os.path.abspath(p) for p in files)
    path = os.path.abspath(source)
    if os.path.isfile(path):
        return os.path.dirname(path), [path]
    if os.path.isdir(path):
        files = sorted(_walk(path))
        if not files:
            raise SourceError(f"source is empty: no files under {source}")
        return path, files
    raise SourceError(f"source not found: {source} (give a directory, a file or a glob)")


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    plain = [p for p in _until_magic(parts)]
    return os.path.abspath(os.path.join(*plain)) if plain else os.getcwd()


def _until_magic(parts: Sequence[str]) -> Iterator[str]:
    for p in parts:
        if glob.has_magic(p):
            return
        yield p


def _walk(root: str) -> Iterator[str]:
    # Hidden files and folders (.git, .DS_Store) are not part of a corpus.
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in filenames:
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def _slices(
    path: str, rel: str, fmt: str, size: int, *, target: int, skipped: list[Skipped]
) -> list[FileSlice]:
    if size > target and fmt == "jsonl":
        return list(_jsonl_slices(path, rel, size, target))
    if size > target and fmt == "parquet":
        try:
            return list(_parquet_slices(path, rel, size, target))
        except Exception as exc:  # not a parquet file: let the worker report it as skipped
            skipped.append(Skipped(rel, f"not a readable parquet file: {exc}"))
            return []
    return [FileSlice(path, rel, fmt, size)]


def _jsonl_slices(path: str, rel: str, size: int, target: int) -> Iterator[FileSlice]:
    """Cut at line ends into ranges of about `target` bytes, counting rows for doc ids."""
    start = pos = 0
    first_row = row = 0
    with open(path, "rb") as f:
        for line in f:
            pos += len(line)
            row += 1
            if pos - start >= target:
                yield FileSlice(path, rel, "jsonl", pos - start, start, pos, first_row)
                start, first_row = pos, row
    if pos > start:
        yield FileSlice(path, rel, "jsonl", pos - start, start, pos, first_row)


def _parquet_slices(path: str, rel: str, size: int, target: int) -> Iterator[FileSlice]:
    import pyarrow.parquet as pq

    rows = pq.ParquetFile(path).metadata.num_rows
    if rows == 0:
        return
    rows_per_slice = max(1, rows * target // max(size, 1))
    for start in range(0, rows, rows_per_slice):
        stop = min(rows, start + rows_per_slice)
        yield FileSlice(path, rel, "parquet", size * (stop - start) // rows, start, stop)


def _pack(slices: list[FileSlice], target: int) -> list[Partition]:
    """Group slices, in order, into partitions of at least `target` bytes (the last may be less)."""
    partitions: list[Partition] = []
    current: list[FileSlice] = []
    size = 0
    for s in slices:
        current.append(s)
        size += s.size_bytes
        if size >= target:
            partitions.append(Partition(len(partitions), tuple(current)))
            current, size = [], 0
    if current:
        partitions.append(Partition(len(partitions), tuple(current)))
    return partitions
