"""A table's recent transactions, read back from the newest: how embedscale learns what its own
commits did (their transaction properties name jobs and partitions).

pylance 14 cannot build the Python object of some operations Lance itself commits: the
rewrite of a compaction that remapped an index (its `RewrittenIndex` entries) raises a
TypeError when read, and `get_transactions(n)` fails as a whole. Those commits are Lance's own
maintenance and never carry embedscale's properties, so where the batch read fails, the
transactions are read one version at a time and each unreadable one stands as None (no
properties), as a version Lance recorded no transaction for does.
"""

from __future__ import annotations

from typing import Any

import lance


def recent_transactions(ds: lance.LanceDataset, count: int) -> list[Any | None]:
    """The transactions of `ds`'s newest `count` versions, newest first (fewer where a cleanup
    removed older versions: the read stops at the first version gone); None for a version
    whose transaction cannot be read."""
    if count <= 0:
        return []
    try:
        return list(ds.get_transactions(count))
    except TypeError:
        pass
    found: list[Any | None] = []
    for version in range(ds.version, ds.version - count, -1):
        try:
            old = ds.checkout_version(version)
        except (OSError, ValueError):
            break  # removed by a cleanup: so are all older ones
        found.append(transaction_of(old))
    return found


def transaction_of(ds: lance.LanceDataset) -> Any | None:
    """The transaction that made `ds`'s version (None: none recorded, or unreadable)."""
    try:
        transactions = ds.get_transactions(1)
    except TypeError:
        return None
    return transactions[0] if transactions else None
