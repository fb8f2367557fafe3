"""The store's lock, which also carries its DuckDB connection through a failing disk.

What DuckDB does when the disk fills (measured with DuckDB 2.0 on a full tmpfs): a commit that
cannot write its WAL fails and writes nothing ("Could not write file ....wal: No space left on
device"), and the connection goes on; but a checkpoint that cannot write the file is a fatal
error, after which every query fails with "database has been invalidated ... must be
restarted", even once space is freed. Closing the connection and opening the file again brings
back every commit (the WAL is replayed), with or without space.

So an operation under the lock that fails for storage reasons closes the connection and comes
out as StoreUnavailableError, naming the cause plainly. While the store is out every operation
fails fast with that error; the first one after a backoff checks that the database's folder
takes writes again (a probe file beside it) and reopens the file. Nothing is lost that was
committed: what was committed is in the file or its WAL.
"""

from __future__ import annotations

import errno
import logging
import os
import re
import threading
import time
from collections.abc import Callable
from pathlib import Path
from types import TracebackType

import duckdb

from embedscale.jobs.errors import StoreUnavailableError

log = logging.getLogger(__name__)
# A folder that cannot take 1 MiB would fail the next checkpoint (DuckDB writes blocks of
# 256 KiB) and invalidate the file again at once: the reopen waits for at least that much.
PROBE_BYTES = 1 << 20
FIRST_RETRY_S = 0.25  # the first reopen attempt after a failure...
MAX_RETRY_S = 5.0  # ...then twice as long each time, up to this
_NO_SPACE = "no space left on device"


def storage_failure(exc: BaseException) -> str | None:
    """The cause, short and plain, when `exc` says the database's storage failed (its file
    must be reopened); None for any other error (a constraint, a bad query)."""
    if _NO_SPACE in str(exc).lower():
        return _NO_SPACE
    if isinstance(exc, duckdb.FatalException | duckdb.IOException | duckdb.InternalException):
        return f"a storage error ({type(exc).__name__})"
    if "database has been invalidated" in str(exc):
        return "a storage error (the database was invalidated)"
    if isinstance(exc, OSError):
        return f"an I/O error ({exc.strerror or type(exc).__name__})"
    return None


def _detail(exc: BaseException) -> str:
    """The first line of what failed; for "invalidated", the error that invalidated it."""
    text = str(exc)
    original = re.search(r'Original error: "(.*)"', text, re.S)
    if original:
        text = original.group(1)
    return (text.strip().splitlines() or [type(exc).__name__])[0]


class StoreGuard:
    """The store's re-entrant lock: while it is held the connection is open and usable. An
    operation that fails for storage reasons closes it (StoreUnavailableError); the next one
    after a backoff reopens it once the disk takes writes again."""

    def __init__(self, path: Path, reopen: Callable[[], None], close: Callable[[], None]) -> None:
        self.path = path
        self._reopen, self._close = reopen, close
        self.lock = threading.RLock()
        self._depth = 0  # changed only by the thread that holds `lock`
        self.outage: StoreUnavailableError | None = None
        self._since = 0.0
        self._retry_at = 0.0
        self._backoff = FIRST_RETRY_S
        self.closed = False  # by the store's owner: never reopened then

    def __enter__(self) -> StoreGuard:
        self.lock.acquire()
        self._depth += 1
        if self.outage is not None:
            try:
                if self._depth > 1 or self.closed:  # never reopen under an outer operation
                    raise self.outage
                self._recover(self.outage)
            except BaseException:
                self._leave()
                raise
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        try:
            if isinstance(exc, Exception) and not isinstance(exc, StoreUnavailableError):
                error = self.failed(exc)
                if error is not None:
                    raise error from exc
        finally:
            self._leave()

    def _leave(self) -> None:
        self._depth -= 1
        self.lock.release()

    def failed(self, exc: BaseException, force: bool = False) -> StoreUnavailableError | None:
        """Take the store out if `exc` (or, with `force`, any error) says its storage failed:
        the connection is closed and the error to raise is returned; None otherwise. The
        caller holds the lock."""
        reason = storage_failure(exc) or (f"an error ({type(exc).__name__})" if force else None)
        if reason is None:
            return None
        if self.outage is None:
            log.error(
                "the job store %s failed (%s): %s; it is reopened once it takes writes again",
                self.path,
                reason,
                _detail(exc),
            )
            self._since = time.monotonic()
            self._close()
        self.outage = self._error(reason, _detail(exc))
        self._backoff = FIRST_RETRY_S
        self._retry_at = time.monotonic() + self._backoff
        return self.outage

    def _recover(self, outage: StoreUnavailableError) -> None:
        """Reopen the file if the backoff has passed and the disk takes writes; else raise."""
        now = time.monotonic()
        if now < self._retry_at:
            raise outage
        try:
            self._probe()
            self._reopen()
        except Exception as exc:
            self.outage = self._error(storage_failure(exc) or outage.reason, _detail(exc))
            self._backoff = min(MAX_RETRY_S, self._backoff * 2)
            self._retry_at = time.monotonic() + self._backoff
            raise self.outage from exc
        log.warning("the job store %s is open again after %.1f s", self.path, now - self._since)
        self.outage = None

    def check_space(self) -> None:
        """Raise OSError (ENOSPC) when the database's folder has less than PROBE_BYTES free,
        under the lock: the guard takes the store out then, before DuckDB meets the full disk
        in a checkpoint. Cheap (one statvfs), for health checks."""
        stat = os.statvfs(self.path.parent)
        free = stat.f_bavail * stat.f_frsize
        if free < PROBE_BYTES:
            raise OSError(
                errno.ENOSPC, f"No space left on device ({free} bytes free)", str(self.path.parent)
            )

    def _probe(self) -> None:
        """Raise (OSError) unless the database's folder takes PROBE_BYTES now."""
        probe = self.path.with_name(self.path.name + ".probe")
        try:
            with open(probe, "wb") as f:
                f.write(os.urandom(PROBE_BYTES))  # not zeros: a compressing filesystem
                f.flush()
                os.fsync(f.fileno())
        finally:
            probe.unlink(missing_ok=True)

    def _error(self, reason: str, detail: str) -> StoreUnavailableError:
        hint = f"free space on the disk of {self.path.parent}; " if reason == _NO_SPACE else ""
        return StoreUnavailableError(
            f"the job store {self.path} is unavailable: {reason} ({detail}); {hint}embedscale "
            "reopens it by itself once it can write there again",
            reason,
        )
