"""The DuckDB connection under the store: opening the one file (refusing a locked, damaged or
newer one with a clear way out), its migrations, and the lock and transactions that the API's
threads and the runner's thread share. The lock is a StoreGuard (jobs/store/guard.py): a
storage failure (a full disk) takes the store out with StoreUnavailableError, and it reopens
the file by itself once the disk takes writes again."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

import duckdb

from embedscale.jobs.errors import StoreDamagedError, StoreLockedError, StoreVersionError
from embedscale.jobs.store.guard import StoreGuard
from embedscale.jobs.store.migrations import LATEST_VERSION, MIGRATIONS
from embedscale.jobs.store.rows import scalar


class Connected:
    """One DuckDB file, owned by one process: every operation holds `_lock`."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._con = duckdb.connect(str(self.path))
        except duckdb.IOException as exc:
            if "could not set lock" in str(exc).lower():
                raise StoreLockedError(
                    f"{self.path} is in use by another embedscale process; stop it or use its "
                    "API (one process owns a data directory)"
                ) from None
            raise self._damaged(exc) from None
        except duckdb.Error as exc:  # e.g. "Corrupt database file: computed checksum ..."
            raise self._damaged(exc) from None
        self._lock = StoreGuard(self.path, self._reopen, self._close_quietly)
        try:
            self._check_readable()
        except BaseException as exc:
            self._con.close()
            if isinstance(exc, duckdb.Error):
                raise self._damaged(exc) from None
            raise
        self._migrate()

    def _check_readable(self) -> None:
        """Read every stored row once. A truncated file opens and even answers `max(version)`
        from its statistics; the missing blocks only fail the first query that reads them."""
        con = self._con
        # (The file's size against PRAGMA database_size is no test: a healthy file reopened
        # after a clean close can be shorter than its block count says.)
        tables = con.execute(
            "SELECT table_name FROM duckdb_tables() WHERE database_name = current_database()"
        ).fetchall()
        for (table,) in tables:
            con.execute(f'SELECT count(hash(t)) FROM "{table}" AS t').fetchone()

    def _damaged(self, cause: object) -> StoreDamagedError:
        reason = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
        return StoreDamagedError(
            f"{self.path} is damaged and cannot be opened ({reason}): restore it from a "
            f"backup, or move it aside (mv {self.path} {self.path}.damaged) to start with an "
            "empty control plane (tenants, keys and job history are then lost)"
        )

    def close(self) -> None:
        with self._lock.lock:  # not the guard: closing never reopens
            self._lock.closed = True
            if self._lock.outage is None:  # else the guard closed it already
                self._con.close()

    def _reopen(self) -> None:
        """Open the file again after an outage (under the guard's lock). DuckDB replays the
        WAL, so every commit is back; the file was whole when this process opened it, so
        the full read of _check_readable is not repeated."""
        con = duckdb.connect(str(self.path))
        try:
            con.execute("SELECT max(version) FROM schema_version").fetchone()
        except BaseException:
            con.close()
            raise
        self._con = con
        self._reopened()

    def _reopened(self) -> None:
        """What a store keeps in memory beside the file is forgotten after a reopen (a
        subclass clears its caches here)."""

    def _close_quietly(self) -> None:
        with suppress(duckdb.Error):  # an invalidated database closes; else it is gone anyway
            self._con.close()

    @contextmanager
    def _tx(self) -> Iterator[duckdb.DuckDBPyConnection]:
        with self._lock:
            self._con.execute("BEGIN TRANSACTION")
            try:
                yield self._con
            except BaseException:
                try:
                    self._con.execute("ROLLBACK")
                except duckdb.Error as failed:
                    # The connection broke inside the transaction (or was closed by a failure
                    # the body met): the error raised below says why. Its state is unknown
                    # now, so it is reopened before the next operation.
                    if self._lock.outage is None:
                        self._lock.failed(failed, force=True)
                raise
            self._con.execute("COMMIT")

    # --- schema ---------------------------------------------------------------------------

    def _migrate(self) -> None:
        with self._tx() as con:
            con.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            version = scalar(con.execute("SELECT max(version) FROM schema_version")) or 0
            if version > LATEST_VERSION:
                raise StoreVersionError(
                    f"{self.path} has schema version {version}, newer than this embedscale's "
                    f"{LATEST_VERSION}: upgrade embedscale to open it"
                )
            for number in range(version + 1, LATEST_VERSION + 1):
                con.execute(MIGRATIONS[number - 1])
                con.execute("INSERT INTO schema_version (version) VALUES (?)", [number])

    def schema_version(self) -> int:
        with self._lock:
            return scalar(self._con.execute("SELECT max(version) FROM schema_version"))
