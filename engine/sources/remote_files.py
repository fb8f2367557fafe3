"""Sources on an object store (`s3://bucket/docs/`, `s3://bucket/docs/**/*.md`), through fsspec.

The driver plans from one listing (names and sizes, no object read except where a large jsonl
or parquet file is cut into row ranges); the workers open their own objects and read their own
byte ranges. The rules of local files hold: only objects inside the allowed roots (URI prefixes)
are read, hidden names are left out, and a document over the size limit is refused.
"""

from __future__ import annotations

import io
import posixpath
from typing import BinaryIO

from embedscale.engine.errors import EmptySourceError, SourceError
from embedscale.engine.storage.errors import StoreUnavailable, describe_storage_error
from embedscale.engine.storage.locations import (
    StorageOptions,
    filesystem,
    strip_scheme,
    with_scheme,
)

_MAGIC = ("*", "?", "[")
_READ_BUFFER = 1024 * 1024  # per request to the store: fewer round trips than io's 8 KiB


class RemoteRefused(Exception):
    """An object not to read; `reason` says why."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def normalised(uri: str) -> str:
    """`uri` with no '.' or '..' segment (refused: a prefix check must mean what it says)."""
    scheme, _, rest = uri.partition("://")
    parts = rest.split("/")
    if any(p in (".", "..") for p in parts):
        raise RemoteRefused("'.' and '..' segments are not allowed in object-store paths")
    return f"{scheme.lower()}://{rest}"


def is_inside_prefix(uri: str, roots: tuple[str, ...]) -> bool:
    """Whether `uri` is one of the URI `roots` or lies below one."""
    return any(
        uri == r.rstrip("/") or uri.startswith(r.rstrip("/") + "/") for r in roots if "://" in r
    )


def check_allowed(uri: str, roots: tuple[str, ...] | None) -> str:
    """The normalised `uri`, or RemoteRefused if it lies outside the allowed roots."""
    uri = normalised(uri)
    if roots is not None and not is_inside_prefix(uri, roots):
        raise RemoteRefused("outside the allowed roots")
    return uri


def _refusal(exc: BaseException, uri: str, storage: StorageOptions) -> Exception:
    """What a failed request for an object means for its document: gone or forbidden is for
    good (skipped, with the reason); anything else may pass (retried with the partition)."""
    if isinstance(exc, FileNotFoundError):
        return RemoteRefused("unreadable: no such object")
    if isinstance(exc, PermissionError):
        return RemoteRefused("unreadable: access denied")
    return StoreUnavailable(describe_storage_error(exc, uri, storage.endpoint))


def object_size(uri: str, storage: StorageOptions) -> int:
    """The size of one object; RemoteRefused if it is missing or a prefix, not an object."""
    try:
        info = filesystem(uri, storage).info(strip_scheme(uri))
    except Exception as exc:
        raise _refusal(exc, uri, storage) from None
    if info.get("type") != "file":
        raise RemoteRefused("a folder (prefix), not an object")
    return int(info.get("size") or 0)


def open_object(uri: str, storage: StorageOptions) -> BinaryIO:
    """A seekable binary reader of one object (ranged reads: a slice reads only its bytes)."""
    try:
        # fsspec's file lacks readline(limit), which the jsonl reader bounds lines with: a
        # BufferedReader over it has the whole io interface.
        return io.BufferedReader(
            filesystem(uri, storage).open(strip_scheme(uri), "rb"), buffer_size=_READ_BUFFER
        )
    except Exception as exc:
        raise _refusal(exc, uri, storage) from None


def list_objects(source: str, storage: StorageOptions) -> tuple[str, dict[str, int]]:
    """The root relative paths start from, and {object URI: size} of a source: a prefix (every
    object below it), a glob, or one object. Hidden names (a segment starting with '.') are
    left out, as in local folders. SourceError when nothing is there or the store refuses."""
    fs = filesystem(source, storage)
    path = strip_scheme(source)
    try:
        if any(m in path for m in _MAGIC):
            root = glob_root(path)
            found = fs.glob(path, detail=True)
        else:
            root = path.rstrip("/")
            found = fs.find(root, detail=True)
            if not found:
                info = _info_or_none(fs, root)
                if info is not None and info.get("type") == "file":
                    root = posixpath.dirname(root)
                    found = {info["name"]: info}
    except Exception as exc:
        raise SourceError(describe_storage_error(exc, source, storage.endpoint)) from None
    objects = {
        with_scheme(source, name): int(info.get("size") or 0)
        for name, info in found.items()
        if info.get("type") == "file" and not _hidden(name, root)
    }
    if not objects:
        what = "glob matches no objects" if any(m in path for m in _MAGIC) else "no objects under"
        raise (EmptySourceError if found else SourceError)(f"source {what}: {source}")
    return with_scheme(source, root), dict(sorted(objects.items()))


def relative(uri: str, root: str) -> str:
    """`uri` relative to `root` (both URIs): part of doc ids and the `source` column."""
    return (
        uri[len(root.rstrip("/")) + 1 :]
        if uri.startswith(root.rstrip("/") + "/")
        else posixpath.basename(uri)
    )


def glob_root(path: str) -> str:
    """The part of a path or URI before its first segment with a glob character."""
    plain = []
    for part in path.split("/"):
        if any(m in part for m in _MAGIC):
            break
        plain.append(part)
    return "/".join(plain).rstrip("/")


def _hidden(name: str, root: str) -> bool:
    rest = name[len(root) :].lstrip("/") if name.startswith(root) else name
    return any(part.startswith(".") for part in rest.split("/"))


def _info_or_none(fs, path: str) -> dict | None:
    try:
        return fs.info(path)
    except FileNotFoundError:
        return None
