"""`embedscale verify`, the table's half: what a table can prove about itself, in one streaming
pass over its rows (row ids unique, vectors of its dimension and finite, one model), and its
rows counted by job for the control plane to hold against its ledger (jobs/table_verify.py).

Memory stays bounded whatever the table's size: rows are read a batch at a time and only an
8-byte key per row id is kept (the first 8 bytes of the id's hash, for our 32-hex-digit ids). Keys
that repeat are confirmed by a second pass over the ids alone, so a collision of keys is never
reported as a duplicate.
"""

from __future__ import annotations

import hashlib
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.schema import DIMENSION_KEY, table_model

EXAMPLES = 5  # ids (or job ids) named per problem: enough to look one up, bounded for millions
BATCH_ROWS = 8192  # rows per batch read: ~13 MB of 384-float vectors
ERROR, WARNING = "error", "warning"


@dataclass(frozen=True, slots=True)
class Problem:
    """One thing wrong with a table: `kind` (a stable name), a line saying what and what to
    do, how many rows (or ids) it concerns, and a few of them. A warning is worth a look but
    does not fail the check."""

    kind: str
    message: str
    count: int
    examples: tuple[str, ...] = ()
    severity: str = ERROR


@dataclass(slots=True)
class TableScan:
    """What one pass over a table found: its rows, its model and dimension (from its schema),
    its rows counted by job, and the problems the table alone shows."""

    rows: int = 0
    model: str | None = None
    dimension: int | None = None
    rows_by_job: dict[str, int] = field(default_factory=dict)
    problems: list[Problem] = field(default_factory=list)


def scan_table(table: ChunkTable) -> TableScan:
    """Read the table's ids, job ids, models and vectors once, batch by batch, and report
    duplicate ids, vectors of another dimension or not finite, and rows of another model."""
    ds = table.dataset()
    model, dimension = table_model(ds.schema)
    scan = TableScan(model=model, dimension=dimension)
    declared = (ds.schema.metadata or {}).get(DIMENSION_KEY)
    expected_dim = int(declared) if declared else dimension
    if declared and dimension is not None and dimension != expected_dim:
        scan.problems.append(
            Problem(
                "wrong_dimension",
                f"the vector column holds {dimension} floats a row, but the "
                f"table was made for {expected_dim}: rebuild it with --mode overwrite",
                ds.count_rows(),
            )
        )
    keys: list[np.ndarray] = []
    models: Counter[str] = Counter()
    bad_vectors = _Examples()
    for batch in ds.to_batches(columns=["id", "job_id", "model", "vector"], batch_size=BATCH_ROWS):
        ids = batch.column("id")
        scan.rows += batch.num_rows
        keys.append(id_keys(ids))
        _count(scan.rows_by_job, batch.column("job_id"))
        _count(models, batch.column("model"))
        bad = _bad_vectors(batch.column("vector"), expected_dim)
        if bad.any():
            bad_vectors.add(int(bad.sum()), ids.filter(pa.array(bad)))
    if bad_vectors.count:
        scan.problems.append(
            Problem(
                "invalid_vectors",
                f"{bad_vectors.count} rows have a vector that is missing, not of "
                f"{expected_dim} floats, or not finite (NaN or infinity): re-embed their documents "
                "(upsert) or delete them",
                bad_vectors.count,
                bad_vectors.shown(),
            )
        )
    scan.problems += _model_problems(models, model)
    duplicate = _duplicates(ds, np.concatenate(keys) if keys else np.empty(0, np.uint64))
    if duplicate:
        extra = sum(duplicate.values()) - len(duplicate)
        scan.problems.append(
            Problem(
                "duplicate_ids",
                f"{len(duplicate)} row ids appear more than once ({extra} rows "
                "too many; a partition committed twice?)",
                len(duplicate),
                tuple(sorted(duplicate)[:EXAMPLES]),
            )
        )
    return scan


# --- row ids ---------------------------------------------------------------------------------

_HEX = np.full(256, 255, np.uint8)
for _i, _c in enumerate(b"0123456789abcdef"):
    _HEX[_c] = _i
for _i, _c in enumerate(b"ABCDEF", 10):
    _HEX[_c] = _i


def id_keys(ids: pa.Array | pa.ChunkedArray) -> np.ndarray:
    """An 8-byte key per row id: the first 8 bytes of a 32-hex-digit id (our ids are hashes
    already), else of the id's blake2b; equal ids have equal keys."""
    ids = ids.combine_chunks() if isinstance(ids, pa.ChunkedArray) else ids
    if len(ids) == 0:
        return np.empty(0, np.uint64)
    ids = ids.cast(pa.large_binary())
    lengths = pc.binary_length(ids).to_numpy(zero_copy_only=False)
    if ids.null_count == 0 and (lengths == 32).all():
        offsets = np.frombuffer(ids.buffers()[1], np.int64, len(ids) + 1, ids.offset * 8)
        raw = np.frombuffer(ids.buffers()[2], np.uint8, 32 * len(ids), int(offsets[0]))
        nibbles = _HEX[raw.reshape(-1, 32)[:, :16]]
        if (nibbles != 255).all():
            high, low = nibbles[:, 0::2].astype(np.uint64), nibbles[:, 1::2].astype(np.uint64)
            shifts = np.arange(7, -1, -1, dtype=np.uint64) * np.uint64(8)
            return (((high << np.uint64(4)) | low) << shifts).sum(axis=1, dtype=np.uint64)
    # Another kind of id (a table written by hand): hashed one by one, the slow way.
    return np.array(
        [
            int.from_bytes(hashlib.blake2b(v or b"", digest_size=8).digest(), "big")
            for v in ids.to_pylist()
        ],
        np.uint64,
    )


def _duplicates(ds, keys: np.ndarray) -> dict[str, int]:
    """Ids that occur more than once, with their counts: the keys that repeat, confirmed by
    reading the ids whose key is one of them."""
    if len(keys) < 2:
        return {}
    ordered = np.sort(keys)
    repeated = np.unique(ordered[1:][ordered[1:] == ordered[:-1]])
    if not len(repeated):
        return {}
    found: Counter[str] = Counter()
    for batch in ds.to_batches(columns=["id"], batch_size=BATCH_ROWS):
        ids = batch.column("id")
        hit = np.isin(id_keys(ids), repeated)
        if hit.any():
            found.update(ids.filter(pa.array(hit)).to_pylist())
    return {i: n for i, n in found.items() if n > 1}


# --- vectors and models ----------------------------------------------------------------------


def _bad_vectors(vectors: pa.Array, dimension: int | None) -> np.ndarray:
    """A mask of the rows whose vector is null, holds a NaN or an infinity, or (a column of
    lists of any length) is not of `dimension` floats."""
    lengths = pc.list_value_length(vectors).fill_null(0).to_numpy(zero_copy_only=False)
    bad = vectors.is_null().to_numpy(zero_copy_only=False).copy()
    if dimension is not None and not pa.types.is_fixed_size_list(vectors.type):
        bad |= lengths != dimension
    # Flattened, the values run row after row (a null row holds none); a null value is NaN.
    finite = np.isfinite(pc.list_flatten(vectors).to_numpy(zero_copy_only=False))
    if not finite.all():
        rows = np.repeat(np.arange(len(vectors)), lengths)
        bad[rows[~finite]] = True
    return bad


def _model_problems(models: Counter[str], model: str | None) -> list[Problem]:
    others = {m: n for m, n in models.items() if m != model}
    if not others:
        return []
    shown = ", ".join(f"'{m}' ({n} rows)" for m, n in sorted(others.items())[:EXAMPLES])
    rows = sum(others.values())
    return [
        Problem(
            "other_model",
            f"{rows} rows name another model than the table's "
            f"'{model}': {shown}; a table holds one model's vectors",
            rows,
            tuple(sorted(others)[:EXAMPLES]),
        )
    ]


# --- counting --------------------------------------------------------------------------------


def _count(into: dict[str, int] | Counter[str], column: pa.Array) -> None:
    counted = pc.value_counts(column)
    for value, n in zip(counted.field("values").to_pylist(), counted.field("counts").to_pylist()):
        into[value] = into.get(value, 0) + n


class _Examples:
    """A count of rows and the first few of their ids."""

    def __init__(self) -> None:
        self.count = 0
        self.ids: list[str] = []

    def add(self, count: int, ids: pa.Array) -> None:
        self.count += count
        if len(self.ids) < EXAMPLES:
            self.ids += ids.slice(0, EXAMPLES - len(self.ids)).to_pylist()

    def shown(self) -> tuple[str, ...]:
        return tuple(self.ids)
