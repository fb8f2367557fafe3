"""A table's indexes (engine.tables.indexes): built once they are due, sized by rule, brought up
to date incrementally, and used by the id checks; on real Lance tables of synthetic rows."""

from __future__ import annotations

import lance
import pytest

from embedscale.engine.sink.lance_sink import existing_hashes
from embedscale.engine.sink.replacement import doc_predicate
from embedscale.engine.tables import indexes
from embedscale.engine.tables.indexes import (
    ID_INDEX,
    MAX_SEGMENTS,
    TEXT_INDEX,
    VECTOR_INDEX,
    VectorIndexParams,
    ensure_text_index,
    index_state,
    refresh_indexes,
    vector_index_params,
)
from tests.search_tables import DIMENSION, append_rows, synthetic_table


@pytest.mark.parametrize(
    "rows,dimension,expected",
    [
        (1_000_000, 384, VectorIndexParams("IVF_PQ", 244, 48)),  # 4,096 rows per partition
        (100_000, 768, VectorIndexParams("IVF_PQ", 24, 96)),  # 8 dimensions per sub-vector
        (1_000, 16, VectorIndexParams("IVF_PQ", 1, 2)),  # at least one partition
        (100_000_000, 1536, VectorIndexParams("IVF_PQ", 4096, 192)),  # Lance's cap
        (100_000, 100, VectorIndexParams("IVF_PQ", 24, 25)),  # 100 = 25 x 4
    ],
)
def test_the_vector_index_is_sized_from_rows_and_dimension(rows, dimension, expected):
    assert vector_index_params(rows, dimension) == expected


def test_an_empty_table_gets_no_index(tmp_path):
    table = synthetic_table(tmp_path)
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=300)
    assert report.rows == 0 and report.created == [] and index_state(table.uri) == []


def test_indexes_are_built_when_due_then_kept_up_to_date(tmp_path):
    table = synthetic_table(tmp_path, rows=1000)
    # Below the vector threshold: the id and text indexes only (brute force is exact and fast).
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=1500)
    assert report.created == [ID_INDEX, TEXT_INDEX] and report.vector_params is None
    assert [
        (i.name, i.kind, i.column, i.indexed_rows, i.unindexed_rows) for i in report.indexes
    ] == [
        (ID_INDEX, "BTree", "doc_id", 1000, 0),
        (TEXT_INDEX, "Inverted", "text", 1000, 0),
    ]
    append_rows(table, 1000, 600)  # a job's commit: 1,600 rows, 600 not in the indexes
    assert {i.name: i.unindexed_rows for i in index_state(table.uri)} == {
        ID_INDEX: 600,
        TEXT_INDEX: 600,
    }
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=1500)
    assert report.created == [VECTOR_INDEX]
    assert report.refreshed == [ID_INDEX, TEXT_INDEX]  # incrementally, not rebuilt
    assert report.vector_params == VectorIndexParams("IVF_PQ", 1, DIMENSION // 8)
    assert {(i.name, i.kind, i.indexed_rows, i.unindexed_rows) for i in report.indexes} == {
        (ID_INDEX, "BTree", 1600, 0),
        (TEXT_INDEX, "Inverted", 1600, 0),
        (VECTOR_INDEX, "IVF_PQ", 1600, 0),
    }
    vector = next(d for d in table.dataset().describe_indices() if d.name == VECTOR_INDEX)
    assert vector.details["metric_type"] == "COSINE"  # what search ranks by

    # Up to date: nothing to do, no commit made.
    version = table.dataset().version
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=1500)
    assert report.created == [] and report.refreshed == [] and len(report.indexes) == 3
    assert table.dataset().version == version

    # New rows go into the existing vector index without retraining it.
    append_rows(table, 1600, 200)
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=1500)
    assert report.refreshed == [ID_INDEX, TEXT_INDEX, VECTOR_INDEX] and report.created == []
    assert all(i.indexed_rows == 1800 and i.unindexed_rows == 0 for i in report.indexes)
    assert table.dataset().count_rows() == 1800  # no row changed


def test_vector_index_deltas_are_merged_once_there_are_enough(tmp_path):
    table = synthetic_table(tmp_path, rows=2000)
    refresh_indexes(table.uri, vector_min_rows=1000)
    counts = []
    for n in range(MAX_SEGMENTS + 1):
        append_rows(table, 2000 + n * 100, 100)
        refresh_indexes(table.uri, vector_min_rows=1000)
        vector = next(d for d in table.dataset().describe_indices() if d.name == VECTOR_INDEX)
        counts.append(len(vector.segments))
    # A delta segment per refresh, until MAX_SEGMENTS are merged into one with the new rows.
    assert counts == [*range(2, MAX_SEGMENTS + 1), 1, 2]
    assert all(i.unindexed_rows == 0 for i in index_state(table.uri))


def test_the_vector_threshold_is_at_least_what_pq_can_train_on(tmp_path):
    table = synthetic_table(tmp_path, rows=200)
    report = refresh_indexes(table.uri, table.storage, vector_min_rows=1)
    assert VECTOR_INDEX not in report.created  # 256 rows at least for PQ's codebooks


def test_the_text_index_is_made_once_on_demand(tmp_path):
    table = synthetic_table(tmp_path, rows=300)
    assert ensure_text_index(table.uri) is True
    assert ensure_text_index(table.uri) is False
    assert [i.name for i in index_state(table.uri)] == [TEXT_INDEX]
    # refresh_indexes takes the index as it is and adds the missing one.
    assert refresh_indexes(table.uri, vector_min_rows=10_000).created == [ID_INDEX]


def test_a_text_index_built_meanwhile_is_taken_as_it_is(tmp_path, monkeypatch):
    table = synthetic_table(tmp_path, rows=300)
    build = indexes._create_text_index

    def racing(ds):
        build(lance.dataset(table.uri))  # another process commits the index first
        raise OSError("Retryable commit conflict for version 3")

    monkeypatch.setattr(indexes, "_create_text_index", racing)
    assert ensure_text_index(table.uri) is False
    assert [i.name for i in index_state(table.uri)] == [TEXT_INDEX]


def test_id_checks_use_the_doc_id_index_and_still_see_unindexed_rows(tmp_path):
    table = synthetic_table(tmp_path, rows=800)
    refresh_indexes(table.uri, vector_min_rows=10_000)
    append_rows(table, 800, 40)  # d200 .. d209: not in the index yet
    # The filters the id checks send (existing_hashes, replacement) are answered by the index.
    plan = table.dataset().scanner(filter=doc_predicate(["d1", "d2"])).explain_plan()
    assert f"@{ID_INDEX}" in plan and "ScalarIndexQuery" in plan
    found = existing_hashes(table.uri, ["d1", "d205", "nope"])
    assert found == {"d1": {"d1"}, "d205": {"d205"}}  # content_hash is the doc id here
