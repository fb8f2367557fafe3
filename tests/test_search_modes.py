"""Search by vector, text and hybrid (engine.tables.search) on real LanceDB tables, indexed and
not, and the parameters' way through every front door (engine, JobService, HTTP POST and GET,
the Client, the CLI, embedscale.search), each bad value a clear error naming its field."""

from __future__ import annotations

import json
from datetime import UTC, datetime

import lance
import numpy as np
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

import embedscale
from embedscale.api.cli.main import main
from embedscale.api.client.service import Client
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.fusion import RRF_K, reciprocal_rank_fusion
from embedscale.engine.tables.indexes import TEXT_INDEX, index_state, refresh_indexes
from embedscale.engine.tables.search import checked_where, find, open_table, search
from embedscale.engine.tables.search_options import (
    DEFAULT_NPROBES,
    DEFAULT_REFINE,
    MAX_NPROBES,
    SearchOptions,
    SearchParameterError,
    search_options,
)
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.service import JobService
from tests.search_tables import append_rows, corpus, synthetic_table

# --- reciprocal rank fusion ---------------------------------------------------------------


def test_rank_fusion_adds_reciprocal_ranks():
    fused = reciprocal_rank_fusion([["a", "b", "c"], ["c", "a", "d"]])
    assert [item for item, _ in fused] == ["a", "c", "b", "d"]
    scores = dict(fused)
    assert scores["a"] == pytest.approx(1 / (RRF_K + 1) + 1 / (RRF_K + 2))
    assert scores["d"] == pytest.approx(1 / (RRF_K + 3))
    # Ties: the better best rank, then the earlier ranking.
    assert [i for i, _ in reciprocal_rank_fusion([["x", "y"], ["z"]])] == ["x", "z", "y"]
    assert reciprocal_rank_fusion([[], []]) == []


# --- parameters ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "given,field,message",
    [
        ({"mode": "fuzzy"}, "mode", "unknown search mode 'fuzzy': use one of vector, text"),
        ({"k": 0}, "k", "k=0"),
        ({"nprobes": 0}, "nprobes", "nprobes=0: search at least one partition"),
        ({"nprobes": -3}, "nprobes", "nprobes=-3"),
        ({"nprobes": MAX_NPROBES + 1}, "nprobes", f"at most {MAX_NPROBES}"),
        ({"nprobes": True}, "nprobes", "give a whole number"),
        ({"refine": 0}, "refine", "refine=0"),
        ({"refine": 2.5}, "refine", "give a whole number"),
    ],
)
def test_bad_parameters_are_refused_naming_the_field(given, field, message):
    with pytest.raises(SearchParameterError, match=message) as err:
        search_options(**given)
    assert err.value.field == field


def test_parameters_take_their_defaults():
    assert search_options() == SearchOptions("vector", 5, DEFAULT_NPROBES, DEFAULT_REFINE)
    assert search_options(3, "hybrid", 7, 2) == SearchOptions("hybrid", 3, 7, 2)
    with pytest.raises(SearchParameterError) as err:
        checked_where("doc_id = 'a'; DROP TABLE t")
    assert err.value.field == "where"


# --- the modes, on an indexed table of synthetic rows -------------------------------------

ROWS = 8192  # two IVF partitions (one per 4,096 rows)


@pytest.fixture(scope="module")
def indexed(tmp_path_factory):
    table = synthetic_table(tmp_path_factory.mktemp("indexed"), rows=ROWS)
    report = refresh_indexes(table.uri, vector_min_rows=1000)
    assert report.vector_params is not None and report.vector_params.num_partitions == 2
    vectors = np.stack(table.dataset().to_table(columns=["vector"])["vector"].to_numpy(False))
    return table, vectors


def _topic(hit) -> int:
    return hit.metadata["topic"]


def test_vector_search_finds_the_exact_neighbours(indexed):
    table, vectors = indexed
    lance_table = open_table(table)
    queries, _, _ = corpus().queries(20)
    found = exact = 0
    for q in queries:
        # 16 dimensions make 2 PQ bytes a row, far coarser than 384 (48 bytes): a deeper
        # exact re-ranking than the default makes up for it.
        hits = find(lance_table, search_options(10, refine=30), "", q)
        assert len(hits) == 10 and [h.score for h in hits] == sorted(
            (h.score for h in hits), reverse=True
        )
        true = set(np.argsort(-(vectors @ q))[:10])
        found += len(true & {int(h.id[1:]) for h in hits})
        exact += 10
        # score: the cosine similarity of the row to the query (rows are unit vectors)
        row = int(hits[0].id[1:])
        assert hits[0].score == pytest.approx(float(vectors[row] @ q / np.linalg.norm(q)), abs=1e-4)
    assert found / exact >= 0.95


def test_text_search_ranks_rows_with_the_query_words(indexed):
    table, _ = indexed
    texts_topics = corpus().queries(5)
    for text, topic in zip(texts_topics[1], texts_topics[2], strict=True):
        hits = find(open_table(table), search_options(5, "text"), text)
        assert len(hits) == 5 and all(_topic(h) == topic for h in hits)
        assert all(h.score > 0 for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    # Query syntax is not interpreted: quotes and operators are words like any other.
    assert find(open_table(table), search_options(3, "text"), '"zka AND (zlo') is not None


def test_hybrid_search_fuses_both_rankings(indexed):
    table, _ = indexed
    vectors, texts, topics = corpus().queries(5)
    for vector, text, topic in zip(vectors, texts, topics, strict=True):
        hits = find(open_table(table), search_options(6, "hybrid"), text, vector)
        assert len(hits) == 6 and len({h.id for h in hits}) == 6
        assert _topic(hits[0]) == topic
        assert all(0 < h.score <= 2 / (RRF_K + 1) for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


@pytest.mark.parametrize("mode", ["vector", "text", "hybrid"])
def test_filters_apply_in_every_mode(indexed, mode):
    table, _ = indexed
    vectors, texts, _ = corpus().queries(1)
    options = search_options(8, mode, nprobes=1, refine=1)
    best = find(open_table(table), options, texts[0], vectors[0])[0]
    lance_where = checked_where(f"doc_id != '{best.doc_id}' AND source != 's0.txt'")
    hits = find(open_table(table), options, texts[0], vectors[0], lance_where)
    assert len(hits) == 8
    assert all(h.doc_id != best.doc_id and h.source != "s0.txt" for h in hits)
    with pytest.raises(SearchParameterError, match="invalid filter") as err:
        find(open_table(table), options, texts[0], vectors[0], "(no_such_column = 1)", "x")
    assert err.value.field == "where"


def test_rows_added_after_indexing_are_still_found(tmp_path):
    table = synthetic_table(tmp_path, rows=2000)
    refresh_indexes(table.uri, vector_min_rows=1000)
    append_rows(table, 2000, 10)  # r2000 .. r2009: in no index
    assert all(i.unindexed_rows == 10 for i in index_state(table.uri))
    new = table.dataset().to_table(filter="id = 'r2005'")
    vector, text = new["vector"][0].as_py(), new["text"][0].as_py()
    lance_table = open_table(table)
    hits = find(lance_table, search_options(1), "", vector)
    assert hits[0].id == "r2005" and hits[0].score == pytest.approx(1.0, abs=1e-5)
    only_new = checked_where("id = 'r2005'")
    for mode in ("text", "hybrid"):
        hits = find(lance_table, search_options(3, mode), text, vector, only_new)
        assert [h.id for h in hits] == ["r2005"]


# --- the whole search, with the real model ------------------------------------------------

TEXTS = {
    "fruit": "Apples and pears grow in the orchard behind the farmhouse.",
    "queue": "A priority queue pops the smallest item first; heapq implements one.",
    "db": "LanceDB stores vectors in columnar files and answers nearest-neighbour queries.",
    "sea": "The ferry crosses the sea to the island twice a day in summer.",
    "tax": "Income tax returns are due at the end of April for most people.",
}


def real_table(data_dir, model, name="notes") -> ChunkTable:
    """A table of TEXTS embedded with the real model, one chunk per document."""
    table = ChunkTable(data_dir, name)
    table.prepare(ModelInfo("all-MiniLM-L6-v2", 384, 256, 2), "append")
    ids, texts = list(TEXTS), list(TEXTS.values())
    vectors = np.asarray(model.embed_texts(texts), dtype=np.float32)
    n = len(ids)
    rows = {
        "id": [f"{d}#0" for d in ids],
        "doc_id": ids,
        "chunk_index": pa.array([0] * n, pa.int32()),
        "text": texts,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.ravel()), 384),
        "token_count": pa.array([12] * n, pa.int32()),
        "char_start": [0] * n,
        "char_end": [len(t) for t in texts],
        "content_hash": ids,
        "source": [f"{d}.txt" for d in ids],
        "metadata": [json.dumps({})] * n,
        "job_id": ["j"] * n,
        "model": ["all-MiniLM-L6-v2"] * n,
        "created_at": pa.array([datetime.now(UTC)] * n, pa.timestamp("us", tz="UTC")),
    }
    lance.write_dataset(pa.table(rows, schema=table.dataset().schema), table.uri, mode="append")
    return table


def test_search_in_each_mode_with_the_tables_model(tmp_path, model):
    table = real_table(tmp_path, model)
    assert index_state(table.uri) == []
    assert search(tmp_path, "notes", "which fruit grows on trees?", k=1)[0].doc_id == "fruit"
    # The first text search builds the full-text index, once.
    hits = search(tmp_path, "notes", "heapq", k=3, mode="text")
    assert [h.doc_id for h in hits] == ["queue"]
    assert [i.name for i in index_state(table.uri)] == [TEXT_INDEX]
    hits = search(tmp_path, "notes", "boat to the island", k=2, mode="hybrid")
    assert hits[0].doc_id == "sea"
    # nprobes and refine are accepted where no vector index exists (every row is compared).
    hits = search(tmp_path, "notes", "tax deadline", k=1, nprobes=3, refine=2, where="1 = 1")
    assert hits[0].doc_id == "tax"


@pytest.mark.parametrize(
    "given,field",
    [
        ({"mode": "semantic"}, "mode"),
        ({"nprobes": -1}, "nprobes"),
        ({"refine": 0}, "refine"),
        ({"where": "doc_id = 'a' ORDER BY x"}, "where"),
    ],
)
def test_bad_parameters_change_nothing_and_come_before_the_table(tmp_path, given, field):
    table = synthetic_table(tmp_path, rows=300)
    version = table.dataset().version
    for name in ("synthetic", "missing"):  # the parameter's error, even for a missing table
        with pytest.raises(SearchParameterError) as err:
            search(tmp_path, name, "query", **given)
        assert err.value.field == field
    assert table.dataset().version == version and index_state(table.uri) == []


# --- the front doors ----------------------------------------------------------------------


@pytest.fixture
def app_with_table(tmp_path, model):
    from embedscale.api.server.app import create_app
    from embedscale.api.settings import Settings

    app = create_app(Settings(data_dir=tmp_path, admin_key=None))
    with JobService(tmp_path) as service:
        app.state.service = service
        _, key = service.create_tenant("acme", "free")
        real_table(service.tenant_data_dir("acme"), model)
        yield service, TestClient(app, headers={"Authorization": f"Bearer {key}"}), key


def test_the_service_names_the_field_of_a_bad_parameter(app_with_table):
    service, _, _ = app_with_table
    for given, field in [
        ({"mode": "x"}, "mode"),
        ({"nprobes": 0}, "nprobes"),
        ({"refine": 0}, "refine"),
        ({"where": "a ="}, "filter"),
        ({"where": "a =", "filter_field": "where", "location": "query"}, "where"),
    ]:
        with pytest.raises(InvalidFieldError) as err:
            service.search("acme", "notes", "q", **given)
        assert err.value.field == field
    hits = service.search("acme", "notes", "heapq", 2, mode="text")
    assert hits[0].doc_id == "queue"


def _field(answer) -> list:
    assert answer.status_code == 422, answer.text
    return [e["loc"] for e in answer.json()["detail"]]


def test_http_search_takes_mode_where_nprobes_refine(app_with_table):
    _, http, _ = app_with_table
    url = "/v1/tables/notes/search"
    body = {"query": "heapq", "k": 2, "mode": "text", "where": "source != 'x.txt'"}
    answer = http.post(url, json=body)
    assert answer.status_code == 200, answer.text
    assert answer.json()["hits"][0]["doc_id"] == "queue"
    params = {"query": "ferry island", "k": 2, "mode": "hybrid", "nprobes": 4, "refine": 3}
    answer = http.get(url, params=params)
    assert answer.status_code == 200, answer.text
    assert answer.json()["hits"][0]["doc_id"] == "sea"
    assert http.post(url, json={"query": "apples"}).json()["hits"][0]["doc_id"] == "fruit"

    assert _field(http.post(url, json={"query": "q", "mode": "fuzzy"})) == [["body", "mode"]]
    assert _field(http.post(url, json={"query": "q", "nprobes": 0})) == [["body", "nprobes"]]
    assert _field(http.post(url, json={"query": "q", "refine": "2"})) == [["body", "refine"]]
    both = {"query": "q", "filter": "1 = 1", "where": "1 = 1"}
    assert _field(http.post(url, json=both)) == [["body", "where"]]
    assert _field(http.post(url, json={"query": "q", "where": "a ="})) == [["body", "where"]]
    assert _field(http.post(url, json={"query": "q", "filter": "a ="})) == [["body", "filter"]]
    assert _field(http.get(url, params={"query": "q", "mode": "x"})) == [["query", "mode"]]
    assert _field(http.get(url, params={"query": "q", "nprobes": -1})) == [["query", "nprobes"]]
    assert _field(http.get(url, params={"query": "q", "where": "a ="})) == [["query", "where"]]
    assert _field(http.get(url, params={"k": 2})) == [["query", "query"]]
    assert http.get("/v1/tables/nope/search", params={"query": "q"}).status_code == 404


def test_the_client_sends_only_what_it_is_given(app_with_table):
    _, http, key = app_with_table
    client = Client("http://testserver", key)
    client._http = http  # the app in process: a TestClient is an httpx.Client
    assert client.search("notes", "heapq", 1, mode="text")[0]["doc_id"] == "queue"
    hits = client.search("notes", "island", 1, where="doc_id = 'sea'", nprobes=2, refine=1)
    assert hits[0]["doc_id"] == "sea"
    with pytest.raises(ValueError, match="not both"):
        client.search("notes", "q", filter="1 = 1", where="1 = 1")
    sent = []
    client._request = lambda method, path, json: sent.append(json) or {"hits": []}  # type: ignore[method-assign]
    client.search("notes", "q", 3, "doc_id = 'a'")
    assert sent == [{"query": "q", "k": 3, "filter": "doc_id = 'a'"}]  # as an older server knows


def test_cli_and_facade_take_the_parameters(tmp_path, model, capsys):
    real_table(tmp_path, model)
    common = ["--data-dir", str(tmp_path)]
    assert main(["search", "notes", "heapq", "--mode", "text", "-k", "1", *common]) == 0
    assert "queue [chunk 0]" in capsys.readouterr().out
    assert main(["search", "notes", "island", "--mode", "hybrid", "--nprobes", "2", *common]) == 0
    assert "sea [chunk 0]  score 0.0" in capsys.readouterr().out
    assert main(["search", "notes", "q", "--mode", "fuzzy", *common]) == 1
    assert "unknown search mode 'fuzzy'" in capsys.readouterr().err
    assert main(["search", "notes", "q", "--refine", "0", *common]) == 1
    assert "refine=0" in capsys.readouterr().err
    hits = embedscale.search("notes", "heapq", 1, mode="hybrid", refine=2, data_dir=tmp_path)
    assert hits[0].doc_id == "queue"
