"""Opening a tenant's files safely: regular files only, inside the allowed roots, bounded reads.

A source path comes from a tenant and the files under it can change between planning and
reading, so every check is made on the file actually opened, at the moment it is opened, on the
machine that opens it (the driver while planning, a worker while reading):

- The file is opened with O_NONBLOCK, so a FIFO or a device never blocks the open, and `fstat`
  of the open descriptor decides: only regular files are read (a FIFO, socket or device, such as
  a link to /dev/zero, is refused with its kind).
- The opened descriptor's own path (`/proc/self/fd/N`: every link already followed, no window
  between a check and the open) must lie inside an allowed root; a link that leaves is refused.
- Reads stop at a limit: a document larger than `max_document_bytes` (a file read whole, a
  JSON line) is refused with its size instead of filling a worker's memory.

Objects on an object store (`s3://...`, engine.sources.remote_files) follow the same rules: inside
the
allowed roots (URI prefixes), objects only, bounded reads.

A refusal is a `FileRefused` with a reason; the readers turn it into a skipped document, and
the job goes on.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass
from typing import BinaryIO

from embedscale.engine.storage.locations import NO_OPTIONS, StorageOptions, is_uri

DEFAULT_MAX_DOCUMENT_BYTES = 32 * 1024 * 1024  # ~8M tokens: far beyond any one real document
DEFAULT_MAX_FILE_BYTES = 1024 * 1024 * 1024  # a json/csv file is parsed whole: cap that too
_KINDS = (
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISSOCK, "a socket"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISDIR, "a folder"),
)
_OPEN_FLAGS = os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_NOCTTY", 0) | getattr(os, "O_CLOEXEC", 0)


class FileRefused(Exception):
    """A file that is not read; `reason` says why (kind, location or size)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def real_roots(roots: Iterable[str | os.PathLike]) -> tuple[str, ...]:
    """Allowed roots with every link resolved, as `FileAccess.roots` wants them; object-store
    roots (`s3://bucket/prefix`) as they are, less a trailing '/'."""
    return tuple(str(r).rstrip("/") if is_uri(r) else os.path.realpath(r) for r in roots)


def is_inside(path: str, roots: tuple[str, ...]) -> bool:
    """Whether a resolved `path` is one of `roots` or lies below one."""
    return any(path == r or path.startswith(r.rstrip(os.sep) + os.sep) for r in roots)


def kind_of(mode: int) -> str | None:
    """'a FIFO', 'a socket', ... for what is not a regular file; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    return next((name for test, name in _KINDS if test(mode)), "not a regular file")


@dataclass(frozen=True, slots=True)
class FileAccess:
    """What may be opened: regular files inside `roots` (None: anywhere, for a local user's own
    runs), and how much of one document may be read."""

    roots: tuple[str, ...] | None = None  # resolved (real_roots); None: no restriction
    max_document_bytes: int = DEFAULT_MAX_DOCUMENT_BYTES
    max_file_bytes: int = DEFAULT_MAX_FILE_BYTES
    storage: StorageOptions = NO_OPTIONS  # reaches sources on an object store

    def size(self, path: str) -> int:
        """The size of `path`, or FileRefused saying why it would not be read, judged without
        opening it (planning: `stat` follows links, nothing blocks). `open` checks again."""
        if is_uri(path):
            from embedscale.engine.sources import remote_files

            try:
                return remote_files.object_size(
                    remote_files.check_allowed(path, self.roots), self.storage
                )
            except remote_files.RemoteRefused as exc:
                raise FileRefused(exc.reason) from None
        try:
            st = os.stat(path)
        except OSError as exc:
            raise FileRefused(f"unreadable: {exc.strerror or exc}") from None
        kind = kind_of(st.st_mode)
        if kind is not None:
            raise FileRefused(f"{kind}, not a regular file")
        if self.roots is not None and not is_inside(os.path.realpath(path), self.roots):
            raise FileRefused("a link to a path outside the allowed roots")
        return st.st_size

    def open(self, path: str, limit: int | None = None) -> BinaryIO:
        """Open a regular file inside the roots for reading, or raise FileRefused. With
        `limit`, a file larger than that many bytes is refused too."""
        if is_uri(path):
            return self._open_object(path, limit)
        try:
            fd = os.open(path, _OPEN_FLAGS)
        except OSError as exc:  # vanished, no permission, a socket (ENXIO)
            raise FileRefused(f"unreadable: {exc.strerror or exc}") from None
        try:
            st = os.fstat(fd)
            kind = kind_of(st.st_mode)
            if kind is not None:
                raise FileRefused(f"{kind}, not a regular file")
            if self.roots is not None and not is_inside(_opened_path(fd, path), self.roots):
                raise FileRefused("a link to a path outside the allowed roots")
            if limit is not None and st.st_size > limit:
                raise FileRefused(too_large(st.st_size, limit))
            os.set_blocking(fd, True)
            return os.fdopen(fd, "rb")
        except BaseException:
            os.close(fd)
            raise

    def _open_object(self, uri: str, limit: int | None) -> BinaryIO:
        from embedscale.engine.sources import remote_files

        try:
            uri = remote_files.check_allowed(uri, self.roots)
            if limit is not None:
                size = remote_files.object_size(uri, self.storage)
                if size > limit:
                    raise FileRefused(too_large(size, limit))
            return remote_files.open_object(uri, self.storage)
        except remote_files.RemoteRefused as exc:
            raise FileRefused(exc.reason) from None

    def read_whole(self, path: str, limit: int | None = None) -> bytes:
        """A whole file, refused beyond `limit` bytes (default: max_document_bytes), also when
        it grows past the limit while being read or reports no size (/proc files)."""
        limit = self.max_document_bytes if limit is None else limit
        with self.open(path, limit) as f:
            data = f.read(limit + 1)
        if len(data) > limit:
            raise FileRefused(too_large(None, limit))
        return data


UNRESTRICTED = FileAccess()  # a local user's own runs: any path, still only regular files


def too_large(size: int | None, limit: int) -> str:
    """The reason given for a document over the limit."""
    seen = f"{size:,} bytes" if size is not None else "more bytes"
    return f"{seen}, over the limit of {limit:,} bytes per document (max_document_bytes)"


def _opened_path(fd: int, fallback: str) -> str:
    """Where an open descriptor really points: the kernel's answer where there is /proc (no
    race with a link swapped after the open), else the path resolved now."""
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return os.path.realpath(fallback)
