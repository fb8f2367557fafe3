"""A table's indexes, built and kept up to date through Lance's own calls.

Three indexes serve a chunk table:

- `doc_id`: a BTREE scalar index. The id checks filter on it (`doc_id IN (...)`: upsert's
  change detection, sink.existing_hashes, and the rows a replacing commit deletes,
  sink.replacement) and Lance's planner answers such a filter from the index
  (`ScalarIndexQuery` in the scan's plan) instead of reading the column of every fragment.
- `text`: an INVERTED (full-text, BM25) index, what text and hybrid search need
  (engine.tables.search). Both are built as soon as the table has rows: they are cheap.
- `vector`: an IVF_PQ index on cosine distance, built once the table holds
  `VECTOR_INDEX_MIN_ROWS` rows (below that a search scans every vector, 150 MB at 100,000 x
  384 floats, and is exact), sized by `vector_index_params`.

Rows committed after an index was built are not in it; a search still finds them (Lance scans
unindexed fragments beside the index), only slower. `refresh_indexes` builds what is missing and
brings the others up to date incrementally with `optimize_indices` (new rows are added to the
existing partitions and postings, nothing is retrained; a vector index's delta segments are
merged once there are MAX_SEGMENTS): one commit per index, none of which changes a row.
Compaction and the cleanup of old versions are not done here (engine.tables.maintenance,
engine.tables.versions).

Lance commits an index optimistically: a job's commit meanwhile is fine (its rows are simply
not covered yet), but the caller should not run this beside a compaction of the same table.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import lance

from embedscale.engine.storage.locations import NO_OPTIONS, StorageOptions, lance_options

VECTOR_INDEX_MIN_ROWS = 100_000
# IVF: one partition per this many rows (Lance's own default is 8,192); a million rows make
# 244 partitions. Smaller partitions let `nprobes` pick the scanned share more finely, and the
# k-means that trains them stays cheap (Lance samples 256 rows per partition: 62,000 here).
ROWS_PER_PARTITION = 4096
MAX_PARTITIONS = 4096  # Lance's own cap
# PQ: 8 dimensions per sub-vector (48 sub-vectors of one byte for 384 dimensions, 32x smaller
# than the float32 vector). Lance's default is 16; 8 keeps the codes twice as precise, so
# fewer true neighbours fall out before the exact re-ranking (`refine`), and 8 or 16 values per
# sub-vector let Lance use SIMD. A dimension not divisible by 8 takes the largest length of
# 16, 4, 2, 1 that divides it.
SUB_VECTOR_LENGTHS = (8, 16, 4, 2, 1)
PQ_MIN_ROWS = 256  # PQ trains 256 centroids per sub-vector: fewer rows cannot train it
# A refresh adds a vector index's new rows as a delta segment, which every search probes
# beside the others (`nprobes` partitions each): at this many segments a refresh merges them
# all into one, and Lance splits the partitions that have grown too large meanwhile.
MAX_SEGMENTS = 4

VECTOR_COLUMN, ID_COLUMN, TEXT_COLUMN = "vector", "doc_id", "text"
VECTOR_INDEX, ID_INDEX, TEXT_INDEX = "vector_idx", "doc_id_idx", "text_idx"
METRIC = "cosine"  # what search ranks by: an index must be trained on the same distance


@dataclass(frozen=True, slots=True)
class VectorIndexParams:
    """How a vector index is built: its type, IVF partitions and PQ sub-vectors."""

    index_type: str
    num_partitions: int
    num_sub_vectors: int
    metric: str = METRIC


@dataclass(frozen=True, slots=True)
class IndexInfo:
    """One index of a table: its name, kind (IVF_PQ, BTree, Inverted, ...) and column, and how
    many of the table's rows it covers (`indexed_rows`) or not yet (`unindexed_rows`)."""

    name: str
    kind: str
    column: str
    indexed_rows: int
    unindexed_rows: int


@dataclass(frozen=True, slots=True)
class IndexReport:
    """What `refresh_indexes` did: the indexes it created and those it brought up to date (by
    name), the vector index's parameters when it built one, and the indexes as they are now."""

    rows: int
    created: list[str] = field(default_factory=list)
    refreshed: list[str] = field(default_factory=list)
    vector_params: VectorIndexParams | None = None
    indexes: list[IndexInfo] = field(default_factory=list)


def vector_index_params(rows: int, dimension: int) -> VectorIndexParams:
    """The vector index for `rows` vectors of `dimension` floats: IVF_PQ with one partition per
    ROWS_PER_PARTITION rows (at least 1, at most MAX_PARTITIONS) and sub-vectors of 8
    dimensions (see SUB_VECTOR_LENGTHS)."""
    partitions = min(MAX_PARTITIONS, max(1, round(rows / ROWS_PER_PARTITION)))
    length = next(n for n in SUB_VECTOR_LENGTHS if dimension % n == 0)
    return VectorIndexParams("IVF_PQ", partitions, dimension // length)


def refresh_indexes(
    uri: str,
    storage: StorageOptions = NO_OPTIONS,
    *,
    vector_min_rows: int = VECTOR_INDEX_MIN_ROWS,
) -> IndexReport:
    """Create the table's missing indexes (doc_id and text once it has rows, the vector index
    once it has `vector_min_rows` rows, PQ_MIN_ROWS at least) and bring the existing ones up to
    date with the rows committed since (Lance's optimize_indices). Nothing is done to an
    empty table, nor to an index that already covers every row."""
    options = lance_options(uri, storage)
    ds = lance.dataset(uri, storage_options=options)
    rows = ds.count_rows()
    if rows == 0:
        return IndexReport(0)
    before = {info.column: info for info in _infos(ds)}
    created: list[str] = []
    if ID_COLUMN not in before:
        ds.create_scalar_index(ID_COLUMN, "BTREE", name=ID_INDEX)
        created.append(ID_INDEX)
    if TEXT_COLUMN not in before:
        _create_text_index(ds)
        created.append(TEXT_INDEX)
    params = None
    if VECTOR_COLUMN not in before and rows >= max(vector_min_rows, PQ_MIN_ROWS):
        params = vector_index_params(rows, ds.schema.field(VECTOR_COLUMN).type.list_size)
        ds.create_index(
            VECTOR_COLUMN,
            index_type=params.index_type,
            name=VECTOR_INDEX,
            metric=params.metric,
            num_partitions=params.num_partitions,
            num_sub_vectors=params.num_sub_vectors,
        )
        created.append(VECTOR_INDEX)
    # Created just now, an index covers every row; only the older ones can lag behind.
    stale = sorted(info.name for info in before.values() if info.unindexed_rows > 0)
    segments = {d.name: len(d.segments) for d in ds.describe_indices()}
    for name in stale:
        # Below MAX_SEGMENTS Lance's default: a vector index gets a delta segment of the new
        # rows (scalar indexes merge them in). At MAX_SEGMENTS every segment is merged.
        merge = segments[name] if segments[name] >= MAX_SEGMENTS else None
        ds.optimize.optimize_indices(
            index_names=[name], **({"num_indices_to_merge": merge} if merge else {})
        )
    if not created and not stale:
        return IndexReport(rows, indexes=sorted(before.values(), key=lambda i: i.name))
    ds = lance.dataset(uri, storage_options=options)  # the version the last commit made
    return IndexReport(rows, created, stale, params, _infos(ds))


def ensure_text_index(uri: str, storage: StorageOptions = NO_OPTIONS) -> bool:
    """Create the full-text index on `text` if the table has none; whether it did."""
    options = lance_options(uri, storage)
    ds = lance.dataset(uri, storage_options=options)
    if _has_text_index(ds):
        return False
    try:
        _create_text_index(ds)
    except Exception:
        # Built meanwhile by another process (table maintenance, another search): Lance
        # refuses the second commit, and the index is there all the same.
        if not _has_text_index(lance.dataset(uri, storage_options=options)):
            raise
        return False
    return True


def index_state(uri: str, storage: StorageOptions = NO_OPTIONS) -> list[IndexInfo]:
    """The table's indexes, by name, with the rows each covers and does not yet cover."""
    return _infos(lance.dataset(uri, storage_options=lance_options(uri, storage)))


def _has_text_index(ds: lance.LanceDataset) -> bool:
    return any(TEXT_COLUMN in d.field_names for d in ds.describe_indices())


def _create_text_index(ds: lance.LanceDataset) -> None:
    # Lance's defaults, which are lancedb's FTS() ones: simple tokenizer, lower case, English
    # stemming and stop words, ASCII folding; no positions (no phrase queries; half the size).
    ds.create_scalar_index(TEXT_COLUMN, "INVERTED", name=TEXT_INDEX)


def _infos(ds: lance.LanceDataset) -> list[IndexInfo]:
    # Counted from the fragments each index's segments cover: Lance's index_stats would load a
    # vector index's centroids (and warn about it) only to report the same figures.
    rows_of = {f.fragment_id: f.count_rows() for f in ds.get_fragments()}
    total = sum(rows_of.values())
    infos = []
    for description in ds.describe_indices():
        covered = {i for s in description.segments for i in s.fragment_ids}
        unindexed = sum(n for i, n in rows_of.items() if i not in covered)
        infos.append(
            IndexInfo(
                description.name,
                description.index_type,
                description.field_names[0],
                total - unindexed,
                unindexed,
            )
        )
    return sorted(infos, key=lambda info: info.name)
