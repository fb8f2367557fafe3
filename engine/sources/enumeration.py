"""Enumerate a source into partitions of document references, on the driver.

A source is a directory (read recursively), a single file, a glob, or a list of texts. The
planner looks at file names and sizes only; large row-oriented files (jsonl, parquet) are split
into row ranges, so one huge file still spreads over the cluster. The corpus itself is read on
the workers (engine.sources.readers).
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embedscale.engine.errors import EmptySourceError, SourceError, scrub_message
from embedscale.engine.sources.documents import Skipped, content_hash
from embedscale.engine.sources.file_access import UNRESTRICTED, FileAccess, FileRefused, is_inside
from embedscale.engine.sources.partitions import FileSlice, InlineText, Partition
from embedscale.engine.sources.readers import EXTENSIONS
from embedscale.engine.sources.remote_files import (
    RemoteRefused,
    check_allowed,
    list_objects,
    relative,
)
from embedscale.engine.storage.locations import is_uri

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
    source: str | os.PathLike,
    *,
    parallelism: int = 1,
    partition_bytes: int | None = None,
    access: FileAccess = UNRESTRICTED,
    min_partition_bytes: int = MIN_PARTITION_BYTES,
) -> SourcePlan:
    """Plan a directory, file or glob into partitions of about `partition_bytes` each.

    `partition_bytes` defaults to a size that gives each of `parallelism` workers several
    partitions, none under `min_partition_bytes` (a few MiB for GPU workers, whose batches
    must be large: engine.cluster.placement). Files that `access` refuses (FIFOs, devices, links out
    of the allowed roots) are skipped with the reason; the workers check each file again
    when they open it. Raises SourceError when the source does not exist or has nothing to
    embed.
    """
    skipped: list[Skipped] = []
    if is_uri(source):
        root, listed = _list_objects(str(source), access)
        paths: list[str] = list(listed)
    else:
        root, paths = _list_files(str(source), access, skipped)
        listed = {}
    candidates: list[tuple[str, str, str, int]] = []
    for path in paths:
        rel = relative(path, root) if is_uri(path) else os.path.relpath(path, root)
        fmt = EXTENSIONS.get(Path(path).suffix.lower())
        if fmt is None:
            skipped.append(Skipped(rel, f"unsupported file type '{Path(path).suffix or path}'"))
            continue
        try:
            size = listed[path] if path in listed else access.size(path)
            candidates.append((path, rel, fmt, size))
        except FileRefused as exc:
            skipped.append(Skipped(rel, exc.reason))
    if not candidates:
        kinds = ", ".join(sorted(EXTENSIONS))
        raise EmptySourceError(
            f"source has no supported files: {source} ({len(skipped)} other files; "
            f"supported: {kinds})"
        )
    total = sum(c[3] for c in candidates)
    target = partition_bytes or _default_partition_bytes(total, parallelism, min_partition_bytes)
    slices = [
        s for c in candidates for s in _slices(*c, target=target, skipped=skipped, access=access)
    ]
    return SourcePlan(_pack(slices, target), skipped, root, len(candidates), total)


def plan_texts(
    texts: Sequence[str],
    ids: Sequence[str] | None = None,
    metadata: Sequence[dict[str, Any] | None] | None = None,
    *,
    docs_per_partition: int = INLINE_DOCS_PER_PARTITION,
) -> SourcePlan:
    """Plan inline texts. Without `ids`, each text's id is derived from its content
    (`inline_doc_id`): ids are unique within a table whatever the job, and the same text sent
    again is the same document (unchanged, or replaced by upsert), never a duplicate. A text
    repeated within the job is embedded once; the repeats are reported as skipped."""
    if ids is not None and len(ids) != len(texts):
        raise SourceError(f"ids has {len(ids)} entries but texts has {len(texts)}")
    if metadata is not None and len(metadata) != len(texts):
        raise SourceError(f"metadata has {len(metadata)} entries but texts has {len(texts)}")
    if not texts:
        raise SourceError("texts is empty: nothing to embed")
    if ids is not None:
        doc_ids = [str(i) for i in ids]
        if len(set(doc_ids)) != len(doc_ids):
            raise SourceError("ids are not unique: each text needs its own id")
    else:
        doc_ids = [inline_doc_id(t) for t in texts]
    items: list[InlineText] = []
    skipped: list[Skipped] = []
    first: dict[str, int] = {}  # doc id -> the index of the first text with that id
    for i, (doc_id, text) in enumerate(zip(doc_ids, texts)):
        if doc_id in first:
            skipped.append(Skipped(doc_id, f"same text as texts[{first[doc_id]}]"))
            continue
        first[doc_id] = i
        meta = metadata[i] if metadata and metadata[i] else {}
        items.append(InlineText(doc_id, text, json.dumps(meta)))
    parts = [
        Partition(n, tuple(items[i : i + docs_per_partition]))
        for n, i in enumerate(range(0, len(items), docs_per_partition))
    ]
    return SourcePlan(parts, skipped, "inline", 0, sum(len(t) for t in texts))


def inline_doc_id(text: str) -> str:
    """The id of an inline text sent without one: `text-` and 32 hex digits of the SHA-256 of
    its UTF-8 bytes (the same digest as its content hash)."""
    return "text-" + content_hash(text)[:32]


def _default_partition_bytes(
    total: int, parallelism: int, minimum: int = MIN_PARTITION_BYTES
) -> int:
    per_partition = total // max(1, parallelism * PARTITIONS_PER_WORKER)
    return max(minimum, min(max(minimum, MAX_PARTITION_BYTES), per_partition))


def _list_objects(source: str, access: FileAccess) -> tuple[str, dict[str, int]]:
    """The root and {URI: size} of an object-store source, from one listing; a source outside
    the allowed roots is refused whole."""
    try:
        check_allowed(source.rstrip("/"), access.roots)
    except RemoteRefused as exc:
        raise SourceError(f"source {source}: {exc.reason}") from None
    return list_objects(source, access.storage)


def _list_files(source: str, access: FileAccess, skipped: list[Skipped]) -> tuple[str, list[str]]:
    """The root that relative paths start from, and the files of the source, sorted. What is
    not a folder (a file, a FIFO, a device) is listed: the planner decides what to read."""
    if glob.has_magic(source):
        root = _glob_root(source)
        files = [p for p in _glob(root, source) if not os.path.isdir(p)]
        if not files:
            raise EmptySourceError(f"source glob matches no files: {source}")
        return root, sorted(files)
    path = os.path.abspath(source)
    if os.path.isdir(path):
        files = sorted(_walk(path, access, skipped))
        if not files and not skipped:
            raise EmptySourceError(f"source is empty: no files under {source}")
        return path, files
    if os.path.lexists(path):
        return os.path.dirname(path), [path]
    raise SourceError(f"source not found: {source} (give a directory, a file or a glob)")


def _glob_root(pattern: str) -> str:
    parts = Path(pattern).parts
    plain = [p for p in _until_magic(parts)]
    return os.path.abspath(os.path.join(*plain)) if plain else os.getcwd()


def _glob(root: str, pattern: str) -> Iterator[str]:
    """Matches of `pattern` below `root`, without hidden names. pathlib's `**` does not follow
    links to folders (glob.glob's does: two links to '.' make its walk exponential)."""
    parts = Path(pattern).parts
    rest = parts[len(list(_until_magic(parts))) :]
    for match in Path(root).glob(str(Path(*rest))):
        if not any(part.startswith(".") for part in match.relative_to(root).parts):
            yield os.path.abspath(match)


def _until_magic(parts: Sequence[str]) -> Iterator[str]:
    for p in parts:
        if glob.has_magic(p):
            return
        yield p


def _walk(root: str, access: FileAccess, skipped: list[Skipped]) -> Iterator[str]:
    # Hidden files and folders (.git, .DS_Store) are not part of a corpus. Links to folders are
    # not followed (os.walk's default: no cycles, no escapes); they are reported as skipped.
    for dirpath, dirnames, filenames in os.walk(root):
        kept = []
        for d in dirnames:
            if d.startswith("."):
                continue
            full = os.path.join(dirpath, d)
            if os.path.islink(full):
                where = os.path.realpath(full)
                reason = (
                    "a link to a path outside the allowed roots"
                    if access.roots is not None and not is_inside(where, access.roots)
                    else "a link to a folder: not followed"
                )
                skipped.append(Skipped(os.path.relpath(full, root), reason))
            else:
                kept.append(d)
        dirnames[:] = kept
        for name in filenames:
            if not name.startswith("."):
                yield os.path.join(dirpath, name)


def _slices(
    path: str,
    rel: str,
    fmt: str,
    size: int,
    *,
    target: int,
    skipped: list[Skipped],
    access: FileAccess,
) -> list[FileSlice]:
    try:
        # An object-store jsonl is not cut here: finding its line ends would download it
        # whole on the driver (a tenant's request); its workers read it as one slice.
        if size > target and fmt == "jsonl" and not is_uri(path):
            return list(_jsonl_slices(path, rel, size, target, access))
        if size > target and fmt == "parquet":
            return list(_parquet_slices(path, rel, size, target, access))
    except FileRefused as exc:  # swapped for a FIFO or a link since it was listed
        skipped.append(Skipped(rel, exc.reason))
        return []
    except Exception as exc:
        if fmt != "parquet":
            raise
        skipped.append(Skipped(rel, f"not a readable parquet file: {scrub_message(str(exc))}"))
        return []
    return [FileSlice(path, rel, fmt, size)]


def _jsonl_slices(
    path: str, rel: str, size: int, target: int, access: FileAccess
) -> Iterator[FileSlice]:
    """Cut at line ends into ranges of about `target` bytes, counting rows for doc ids."""
    start = pos = 0
    first_row = row = 0
    with access.open(path) as f:
        for line in f:
            pos += len(line)
            row += 1
            if pos - start >= target:
                yield FileSlice(path, rel, "jsonl", pos - start, start, pos, first_row)
                start, first_row = pos, row
    if pos > start:
        yield FileSlice(path, rel, "jsonl", pos - start, start, pos, first_row)


def _parquet_slices(
    path: str, rel: str, size: int, target: int, access: FileAccess
) -> Iterator[FileSlice]:
    import pyarrow.parquet as pq

    with access.open(path) as f:
        rows = pq.ParquetFile(f).metadata.num_rows
    if rows == 0:
        return
    rows_per_slice = max(1, rows * target // max(size, 1))
    for start in range(0, rows, rows_per_slice):
        stop = min(rows, start + rows_per_slice)
        yield FileSlice(path, rel, "parquet", size * (stop - start) // rows, start, stop)


def _pack(slices: list[FileSlice], target: int) -> list[Partition]:
    """Group slices into partitions of at least `target` bytes (the last may be less): the
    smaller ones in order, each slice of `target` or more alone. A big file packed behind
    small ones would make a partition bigger still, and the biggest partition is what a job's
    last worker still runs when the others are done."""
    partitions: list[Partition] = []
    current: list[FileSlice] = []
    size = 0
    for s in slices:
        if s.size_bytes >= target:
            partitions.append(Partition(len(partitions), (s,)))
            continue
        current.append(s)
        size += s.size_bytes
        if size >= target:
            partitions.append(Partition(len(partitions), tuple(current)))
            current, size = [], 0
    if current:
        partitions.append(Partition(len(partitions), tuple(current)))
    return partitions
