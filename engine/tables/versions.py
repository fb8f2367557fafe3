"""A table's versions: its history with the jobs that made each, a restore to one of them, and
the cleanup of those past a retention window.

Every commit to a Lance table makes a version, and Lance keeps them all (with the data files they
reference) until a cleanup removes them. They are what a cancel restores from and what an
operator restores to: a restore brings an old version back as a NEW commit (Lance's Restore), so
the history only grows and the version undone stays there to restore to in turn. Its commit
carries RESTORE_PROPERTY, so the table's readers (engine.tables.commit_log) see a restore and
not a job's lost commit.

A cleanup removes the oldest versions and never the versions a caller still needs
(`keep_from` on: what a running job's undo, resume or sync reads, from the job ledger), the
latest, a tagged one (an operator's tag keeps its version) or the empty version 1 that
`ChunkTable.prepare` made: it holds no data, and its timestamp is when the table was made,
which `embedscale verify` reads. Everything below the first version kept goes (but those
exceptions), so reading the commits back from the newest stops where the history was cut and
misses nothing above it (engine.tables.commit_log.commits_after).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import lance

from embedscale.engine.errors import TableError, TableNotFoundError
from embedscale.engine.sink.transactions import transaction_of
from embedscale.engine.storage.locations import (
    NO_OPTIONS,
    StorageOptions,
    lance_options,
    tree_bytes,
)
from embedscale.engine.tables.commit_log import RESTORE_PROPERTY, decoded_commit

HISTORY_LIMIT = 50  # versions a history lists by default, newest first


@dataclass(frozen=True, slots=True)
class VersionInfo:
    """One version of a table: when it was made, its rows and fragments, the Lance operation
    that made it, and what embedscale did there: the jobs whose work it committed, the job a
    cancel removed, the version a restore brought back."""

    version: int
    timestamp: datetime  # aware, UTC
    rows: int
    fragments: int
    operation: str  # Lance's: Append, Delete, Overwrite, Rewrite (compaction), Restore, ...
    jobs: tuple[str, ...] = ()
    undone: str | None = None
    restored: int | None = None

    def to_dict(self) -> dict:
        return {
            "version": self.version,
            "timestamp": self.timestamp.isoformat(),
            "rows": self.rows,
            "fragments": self.fragments,
            "operation": self.operation,
            "jobs": list(self.jobs),
            "undone": self.undone,
            "restored": self.restored,
        }


@dataclass(frozen=True, slots=True)
class TableDetails:
    """What `embedscale tables show` says of a table's storage: rows and fragments of its latest
    version, how many versions it keeps (and the oldest), and the bytes of all of them."""

    rows: int
    fragments: int
    version: int  # the latest
    versions: int  # kept, the latest included
    oldest_version: int
    bytes: int  # on disk or in the bucket: every version's files

    def to_dict(self) -> dict:
        return {
            "rows": self.rows,
            "fragments": self.fragments,
            "version": self.version,
            "versions": self.versions,
            "oldest_version": self.oldest_version,
            "bytes": self.bytes,
        }


@dataclass(frozen=True, slots=True)
class CleanupReport:
    """What a cleanup removed: `versions` (the oldest, from `first` to `last`; none: 0 and None)
    and the bytes of their files that no kept version references."""

    versions: int
    bytes: int
    first: int | None = None
    last: int | None = None

    def to_dict(self) -> dict:
        return {
            "versions_removed": self.versions,
            "bytes_removed": self.bytes,
            "first": self.first,
            "last": self.last,
        }


def history(
    uri: str,
    storage: StorageOptions = NO_OPTIONS,
    limit: int = HISTORY_LIMIT,
    before: int | None = None,
) -> list[VersionInfo]:
    """The table's versions, newest first: at most `limit`, older than `before` if given (the
    next page). Read one version at a time down from the newest (two small reads each), so a
    table of a million versions lists its latest in milliseconds; the listing ends where a
    cleanup removed the older ones."""
    ds = _open(uri, storage)
    top = ds.version if before is None else min(before - 1, ds.version)
    found: list[VersionInfo] = []
    for version in range(top, max(top - limit, 0), -1):
        try:
            old = ds.checkout_version(version)
        except (OSError, ValueError):
            break  # removed by a cleanup: so are all older ones but version 1
        found.append(_info(old))
    return found


def restore(uri: str, storage: StorageOptions, version: int) -> int:
    """Bring the table back to `version` as a new commit (its rows, schema and indexes as they
    were then); returns the version made. TableError, nothing changed, for a version the table
    does not have (never made, or removed by a cleanup). Restoring the latest version changes
    nothing and returns it."""
    latest = require_version(uri, storage, version)
    if version == latest:
        return latest
    tx = lance.Transaction(
        read_version=latest,
        operation=lance.LanceOperation.Restore(version),
        transaction_properties={RESTORE_PROPERTY: json.dumps(version)},
    )
    made = lance.LanceDataset.commit(uri, tx, storage_options=lance_options(uri, storage))
    return made.version


def require_version(uri: str, storage: StorageOptions, version: int) -> int:
    """The table's latest version, checked first to have `version` to restore: TableError
    (naming the versions it has) if it never made it or a cleanup removed it."""
    ds = _open(uri, storage)
    if not _has_version(ds, version):
        raise TableError(f"no version {version} to restore: {_kept(ds)}")
    return ds.version


def cleanup(
    uri: str,
    storage: StorageOptions,
    retention: timedelta,
    keep_from: int | None = None,
    now: datetime | None = None,
) -> CleanupReport:
    """Remove the versions made longer than `retention` before `now` (default: the present
    time), with the files only they reference, but never `keep_from` or a later one, nor the
    latest, a tagged version or the empty version 1 (see the module docstring). Versions are
    taken as ordered by their timestamps (each writer's clock): the run removed ends before the
    first version inside the window."""
    ds = _open(uri, storage)
    latest = ds.version
    stop = latest if keep_from is None else min(max(keep_from, 1), latest)
    refs = sorted(ref["version"] for ref in ds.version_refs())
    tagged = {tag["version"] for tag in ds.tags.list().values()}
    if refs and refs[0] == 1 and _empty(ds.checkout_version(1)):
        refs = refs[1:]
    candidates = [v for v in refs if v < stop]
    cutoff = (now or datetime.now(UTC)) - retention
    # The first candidate made inside the window: binary search, one manifest read a step.
    lo, hi = 0, len(candidates)
    while lo < hi:
        mid = (lo + hi) // 2
        if _stamp(ds.checkout_version(candidates[mid])) < cutoff:
            lo = mid + 1
        else:
            hi = mid
    # Every version below the first kept one goes but the tagged: reading the history back
    # from the newest stops at the first version removed, so nothing above it is missed.
    run = [v for v in candidates[:lo] if v not in tagged]
    if not run:
        return CleanupReport(0, 0)
    stats = ds.cleanup_old_versions(versions=run, error_if_tagged_old_versions=False)
    return CleanupReport(stats.old_versions, stats.bytes_removed, run[0], run[-1])


def describe(uri: str, storage: StorageOptions = NO_OPTIONS) -> TableDetails:
    """Rows, fragments, versions kept and bytes of the table at `uri`."""
    ds = _open(uri, storage)
    refs = [ref["version"] for ref in ds.version_refs()]
    meta = ds.get_version()["metadata"]
    return TableDetails(
        rows=int(meta.get("total_rows", ds.count_rows())),
        fragments=int(meta.get("total_fragments", len(ds.get_fragments()))),
        version=ds.version,
        versions=len(refs),
        oldest_version=min(refs, default=ds.version),
        bytes=tree_bytes(uri, storage),
    )


def _open(uri: str, storage: StorageOptions) -> lance.LanceDataset:
    try:
        return lance.dataset(uri, storage_options=lance_options(uri, storage))
    except (OSError, ValueError) as exc:
        if "not found" in str(exc).lower():
            raise TableNotFoundError(f"no table at {uri}") from None
        raise


def _info(ds: lance.LanceDataset) -> VersionInfo:
    meta = ds.get_version()["metadata"]
    tx = transaction_of(ds)
    commit = decoded_commit(ds.version, tx)
    return VersionInfo(
        version=ds.version,
        timestamp=_stamp(ds),
        rows=int(meta.get("total_rows", 0)),
        fragments=int(meta.get("total_fragments", 0)),
        operation=type(tx.operation).__name__ if tx is not None else "unknown",
        jobs=tuple(sorted(commit.jobs())) if commit else (),
        undone=commit.undone if commit else None,
        restored=commit.restored if commit else None,
    )


def _stamp(ds: lance.LanceDataset) -> datetime:
    """When the checked-out version was made, aware (Lance gives local time without a zone)."""
    stamp = ds.get_version()["timestamp"]
    if not isinstance(stamp, datetime):
        return datetime.fromtimestamp(stamp / 1e9, UTC)
    return stamp.astimezone(UTC) if stamp.tzinfo is None else stamp


def _empty(ds: lance.LanceDataset) -> bool:
    return ds.get_version()["metadata"].get("total_rows") == "0"


def _has_version(ds: lance.LanceDataset, version: int) -> bool:
    if version < 1 or version > ds.version:
        return False
    try:
        ds.checkout_version(version)
    except (OSError, ValueError):
        return False
    return True


def _kept(ds: lance.LanceDataset) -> str:
    """Which versions the table has, for an error message: "1, 40-52"."""
    runs: list[list[int]] = []
    for version in sorted(ref["version"] for ref in ds.version_refs()):
        if runs and version == runs[-1][-1] + 1:
            runs[-1].append(version)
        else:
            runs.append([version])
    shown = ", ".join(str(r[0]) if len(r) == 1 else f"{r[0]}-{r[-1]}" for r in runs[:10])
    return f"the table has versions {shown}{', ...' if len(runs) > 10 else ''}"
