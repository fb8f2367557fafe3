"""End to end on a real LocalCluster, the real model and a real LanceDB table."""

from __future__ import annotations

import json
from collections import defaultdict

import numpy as np
import pytest

from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sources.enumeration import plan_source
from embedscale.engine.sources.readers import RecordFields, read_item
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.local_run import JobFailedError
from tests.conftest import copy_small_corpus
from tests.helpers import read_rows, run

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def embedded_corpus(tmp_path_factory):
    """small_corpus with a malformed JSON line and a binary file, for the module's one run."""
    corpus = copy_small_corpus(tmp_path_factory.mktemp("pipeline"))
    (corpus / "broken.jsonl").write_text('{"text": "fine row"}\n{oops\n')
    (corpus / "blob.txt").write_bytes(b"\x00\xff\x00 binary")
    return corpus


@pytest.fixture(scope="module")
def embedded(cluster, embedded_corpus):
    """The corpus embedded once for the tests that only read the result: the summary and the
    table's rows."""
    data_dir = embedded_corpus.parent / "data"
    summary = run(
        cluster,
        source=str(embedded_corpus),
        table="docs",
        data_dir=str(data_dir),
        partition_bytes=4096,
    )
    return summary, read_rows(data_dir, "docs")


def source_texts(path) -> dict[str, str]:
    plan = plan_source(path)
    return {
        d.doc_id: d.text
        for p in plan.partitions
        for i in p.items
        for d in read_item(i, RecordFields())[0]
    }


def test_summary_counts_and_skipped_reasons(embedded):
    summary, rows = embedded
    assert summary.ok and summary.partitions > 2
    assert summary.chunks == rows.num_rows
    assert summary.tokens == sum(rows.column("token_count").to_pylist())
    assert summary.documents == len(set(rows.column("doc_id").to_pylist())) == 13
    reasons = sorted((s.source, s.reason.split(":")[0]) for s in summary.skipped)
    assert reasons == [("blob.txt", "binary file"), ("broken.jsonl#1", "malformed JSON line")]


def test_vectors_equal_sentence_transformers_encode(embedded, st_model):
    _, rows = embedded
    vectors = np.asarray(rows.column("vector").to_pylist(), dtype=np.float32)
    reference = st_model.encode(
        rows.column("text").to_pylist(), convert_to_numpy=True, normalize_embeddings=True
    )
    cosine = (vectors * reference).sum(1) / (
        np.linalg.norm(vectors, axis=1) * np.linalg.norm(reference, axis=1)
    )
    assert cosine.min() > 0.999, f"worst cosine {cosine.min()}"


def test_chunks_fit_the_model_cover_their_documents_and_keep_offsets(embedded, embedded_corpus):
    _, rows = embedded
    texts = source_texts(embedded_corpus)
    by_doc = defaultdict(list)
    for r in rows.select(
        [
            "doc_id",
            "chunk_index",
            "text",
            "char_start",
            "char_end",
            "token_count",
            "content_hash",
            "model",
            "metadata",
        ]
    ).to_pylist():
        assert 0 < r["token_count"] <= 64
        assert texts[r["doc_id"]][r["char_start"] : r["char_end"]] == r["text"]
        assert r["model"] == "all-MiniLM-L6-v2"
        json.loads(r["metadata"])
        by_doc[r["doc_id"]].append(r)
    for doc_id, chunks in by_doc.items():
        text = texts[doc_id]
        assert sorted(c["chunk_index"] for c in chunks) == list(range(len(chunks)))
        covered = np.zeros(len(text), dtype=bool)
        for c in chunks:
            covered[c["char_start"] : c["char_end"]] = True
        assert "".join(ch for ch, ok in zip(text, covered) if not ok).strip() == ""


def test_ids_are_unique_and_stable_across_runs(embedded, cluster, embedded_corpus, data_dir):
    _, rows = embedded
    ids = rows.column("id").to_pylist()
    assert len(ids) == len(set(ids))
    again = run(
        cluster,
        source=str(embedded_corpus),
        table="again",
        data_dir=str(data_dir),
        partition_bytes=50_000,
    )  # other partitioning, same ids
    assert set(read_rows(data_dir, "again").column("id").to_pylist()) == set(ids)
    assert again.chunks == len(ids)


def test_overwrite_replaces_and_append_adds_without_repeating_ids(cluster, small_corpus, data_dir):
    one = run(cluster, source=str(small_corpus / "heapq.txt"), table="t", data_dir=str(data_dir))
    # The same document appended again is already there: unchanged, no second copy of its rows.
    again = run(cluster, source=str(small_corpus / "heapq.txt"), table="t", data_dir=str(data_dir))
    assert (again.chunks, again.unchanged) == (0, 1)
    assert read_rows(data_dir, "t").num_rows == one.chunks
    two = run(cluster, source=str(small_corpus / "json.txt"), table="t", data_dir=str(data_dir))
    ids = read_rows(data_dir, "t", ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == one.chunks + two.chunks
    run(
        cluster,
        source=str(small_corpus / "heapq.txt"),
        table="t",
        data_dir=str(data_dir),
        mode="overwrite",
    )
    assert read_rows(data_dir, "t").num_rows == one.chunks


def test_a_table_of_another_model_or_dimension_is_refused(cluster, small_corpus, data_dir):
    ChunkTable(data_dir, "other").prepare(ModelInfo("some-other-model", 768, 512, 2), "append")
    with pytest.raises(
        JobFailedError,
        match=r"start_failed.*holds vectors of model "
        r"'some-other-model' \(768",
    ):
        run(cluster, source=str(small_corpus), table="other", data_dir=str(data_dir))
    assert read_rows(data_dir, "other").num_rows == 0


def test_chunk_size_above_the_model_limit_is_refused(cluster, small_corpus, data_dir):
    with pytest.raises(InvalidFieldError, match="chunk_tokens=512 exceeds"):
        run(cluster, source=str(small_corpus), table="t", data_dir=str(data_dir), chunk_tokens=512)


def test_upsert_replaces_changed_documents_and_skips_unchanged_ones(
    cluster, small_corpus, data_dir
):
    first = run(
        cluster,
        source=str(small_corpus),
        table="up",
        data_dir=str(data_dir),
        mode="upsert",
        partition_bytes=4096,
    )
    before = read_rows(data_dir, "up").to_pylist()
    (small_corpus / "heapq.txt").write_text("Heaps are binary trees kept in a list.\n")
    (small_corpus / "new.md").write_text("# A new note\n\nAdded between the two runs.\n")
    second = run(
        cluster,
        source=str(small_corpus),
        table="up",
        data_dir=str(data_dir),
        mode="upsert",
        partition_bytes=4096,
    )
    after = read_rows(data_dir, "up").to_pylist()

    assert (second.documents, second.unchanged) == (2, first.documents - 1)
    ids = [r["id"] for r in after]
    assert len(ids) == len(set(ids))
    heapq_rows = [r for r in after if r["doc_id"] == "heapq.txt"]
    assert [r["text"] for r in heapq_rows] == ["Heaps are binary trees kept in a list."]
    assert {r["doc_id"] for r in after} == {r["doc_id"] for r in before} | {"new.md"}
    # Unchanged documents were not re-embedded: their rows are the very same (same job).
    untouched = {(r["id"], r["job_id"]) for r in before if r["doc_id"] != "heapq.txt"}
    assert untouched <= {(r["id"], r["job_id"]) for r in after}

    third = run(
        cluster, source=str(small_corpus), table="up", data_dir=str(data_dir), mode="upsert"
    )
    assert (third.documents, third.chunks) == (0, 0)
    assert read_rows(data_dir, "up").num_rows == len(after)


def test_inline_texts(cluster, data_dir):
    summary = run(
        cluster,
        texts=["first text", "second text", " "],
        ids=["a", "b", "c"],
        metadata=[{"k": 1}, None, None],
        table="inline",
        data_dir=str(data_dir),
    )
    rows = read_rows(data_dir, "inline").to_pylist()
    assert sorted(r["doc_id"] for r in rows) == ["a", "b"]
    assert json.loads(next(r for r in rows if r["doc_id"] == "a")["metadata"]) == {"k": 1}
    assert [s.reason for s in summary.skipped] == ["empty document"]
