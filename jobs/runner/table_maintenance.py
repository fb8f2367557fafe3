"""Compaction of the tables the runner commits to, beside the runner and never in its way.

The runner counts the fragments its commits add to each table (a partition's rows are one or a
few fragments); once a table has taken `after_fragments` since its last compaction, one
compaction of it runs on this module's own thread (engine.tables.maintenance). One at a time per
table,
and apart from the runner's own writes to it: while a table is being compacted, the runner
keeps that table's finished partitions for its next commit instead of committing them
(`busy`), and waits for the compaction before it deletes rows there (`exclusive`: a cancel, the
end of a sync), since a deletion and a rewrite of the same fragments cannot both commit.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.maintenance import compact

log = logging.getLogger(__name__)
COMPACT_AFTER_FRAGMENTS = 64  # fragments a table takes before it is compacted


class TableMaintenance:
    """Compacts the runner's tables as their fragments add up; `on_done` is called (from the
    maintenance thread) after each compaction, so the runner commits what waited."""

    def __init__(
        self, on_done: Callable[[], None], after_fragments: int | None = COMPACT_AFTER_FRAGMENTS
    ) -> None:
        self.on_done, self.after_fragments = on_done, after_fragments
        self.compactions = 0  # done since start, for tests and operators
        self._added: dict[str, int] = {}  # fragments since the last compaction, per table
        self._busy: dict[str, threading.Event] = {}  # table uri -> set once its compaction ends
        self._lock = threading.Lock()
        self._pool = ThreadPoolExecutor(1, "embedscale-maintenance")

    def busy(self, uri: str) -> bool:
        """Whether `uri` is being compacted now (its commits wait)."""
        with self._lock:
            return uri in self._busy

    @contextmanager
    def exclusive(self, uri: str) -> Iterator[None]:
        """Wait out a compaction of `uri`; no new one starts on it inside the block."""
        while True:
            with self._lock:
                running = self._busy.get(uri)
                if running is None:
                    self._busy[uri] = held = threading.Event()
                    break
            running.wait()
        try:
            yield
        finally:
            with self._lock:
                del self._busy[uri]
            held.set()

    def committed(self, table: ChunkTable, fragments: int) -> None:
        """`fragments` were just committed to `table`: compact it if they have added up."""
        if self.after_fragments is None or fragments <= 0:
            return
        with self._lock:
            added = self._added[table.uri] = self._added.get(table.uri, 0) + fragments
            if added < self.after_fragments or table.uri in self._busy:
                return
            self._added[table.uri] = 0
            self._busy[table.uri] = threading.Event()
        self._pool.submit(self._compact, table)

    def _compact(self, table: ChunkTable) -> None:
        try:
            done = compact(table.uri, table.storage)
            self.compactions += 1
            log.info(
                "table %r compacted: %d fragments -> %d (version %d)",
                table.name,
                done.fragments_before,
                done.fragments_after,
                done.version,
            )
        except Exception as exc:  # dropped meanwhile, a store error: the next one tries again
            log.warning("table %r: compaction failed: %s", table.name, exc)
        finally:
            with self._lock:
                self._busy.pop(table.uri).set()
            self.on_done()

    def close(self) -> None:
        """Let a running compaction finish; start no more."""
        self._pool.shutdown(wait=True, cancel_futures=True)
