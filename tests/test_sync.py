"""mode=sync, atomic replacement and cancels that restore: a reader never sees a document
missing or doubled, documents gone from the source are deleted (never because the source
suddenly lists nothing), and cancelling an overwrite, upsert or sync puts back what it replaced."""

from __future__ import annotations

import json
import os
from collections import Counter
from pathlib import Path

import cloudpickle
import lance
import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.states import JobStatus
from tests import faults
from tests.test_control_plane import held_writes, release, wait_for

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)


def write_docs(folder: Path, docs: dict[str, str]) -> Path:
    """One .txt file per document (its id is its file name); removes files not in `docs`."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("*.txt"):
        if old.stem not in docs:
            old.unlink()
    for name, text in docs.items():
        (folder / f"{name}.txt").write_text(text)
    return folder


def write_jsonl(path: Path, version: str, rows: int = 48) -> Path:
    """`rows` documents of one short chunk each, `version` in their text, in lines of ~720
    bytes: the planner cuts by bytes, the filler (row metadata) keeps the partitions as many
    while the model embeds ~40 tokens a row."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(
        "".join(
            json.dumps(
                {
                    "id": f"doc-{i}",
                    "text": f"{version} document {i} " + "about heaps and queues " * 6,
                    "filler": "-" * 552,
                }
            )
            + "\n"
            for i in range(rows)
        )
    )
    return path


def table(service, name, tenant="local"):
    return ChunkTable(service.tenant_data_dir(tenant), name)


def docs_in(uri: str, version: int | None = None) -> dict[str, set[str]]:
    """doc_id -> its content hashes, at `version` (default: the latest)."""
    rows = lance.dataset(uri, version=version).to_table(columns=["doc_id", "content_hash"])
    found: dict[str, set[str]] = {}
    for doc_id, h in zip(
        rows.column("doc_id").to_pylist(), rows.column("content_hash").to_pylist()
    ):
        found.setdefault(doc_id, set()).add(h)
    return found


def chunk_ids_unique(uri: str, version: int | None = None) -> bool:
    ids = lance.dataset(uri, version=version).to_table(columns=["id"]).column("id").to_pylist()
    return len(ids) == len(set(ids))


def run(service, spec, **kwargs):
    job = service.submit("local", spec, **kwargs)
    final = service.wait(job.id, timeout=240)
    assert final.status == "succeeded", final.error
    return final


def test_sync_counts_new_changed_unchanged_and_deleted(service, tmp_path):
    src = write_docs(
        tmp_path / "src",
        {
            "a": "alpha text about heaps",
            "b": "beta text about queues",
            "c": "gamma text about stacks",
        },
    )
    first = run(service, {"table": "s", "source": str(src), "mode": "sync"})
    assert (first.documents_done, first.documents_changed, first.documents_deleted) == (3, 0, 0)
    write_docs(
        src,
        {"a": "alpha text about heaps", "b": "beta text, rewritten", "d": "delta text about tries"},
    )
    second = run(service, {"table": "s", "source": str(src), "mode": "sync"})
    new = second.documents_done - second.documents_changed
    assert (
        new,
        second.documents_changed,
        second.documents_unchanged,
        second.documents_deleted,
    ) == (1, 1, 1, 1)
    uri = table(service, "s").uri
    after = docs_in(uri)
    assert sorted(after) == ["a.txt", "b.txt", "d.txt"] and chunk_ids_unique(uri)
    assert all(len(hashes) == 1 for hashes in after.values())
    assert second.to_dict()["documents_deleted"] == 1
    # The same source again: nothing to embed, nothing to delete.
    third = run(service, {"table": "s", "source": str(src), "mode": "sync"})
    assert (third.documents_done, third.documents_unchanged, third.documents_deleted) == (0, 3, 0)


def test_a_sync_of_a_source_that_lists_nothing_is_refused_unless_allowed(service, tmp_path):
    src = write_docs(tmp_path / "src", {"a": "alpha", "b": "beta"})
    run(service, {"table": "s", "source": str(src), "mode": "sync"})
    write_docs(src, {})  # the folder is there but empty, as an unmounted mount point is
    with pytest.raises(InvalidFieldError) as refused:
        service.submit("local", {"table": "s", "source": str(src), "mode": "sync"})
    assert refused.value.field == "source" and "allow_empty" in str(refused.value)
    assert sorted(docs_in(table(service, "s").uri)) == ["a.txt", "b.txt"]  # untouched
    emptied = run(service, {"table": "s", "source": str(src), "mode": "sync", "allow_empty": True})
    assert emptied.documents_deleted == 2 and docs_in(table(service, "s").uri) == {}


def test_a_sync_keeps_documents_whose_file_could_not_be_read(service, tmp_path):
    src = write_docs(tmp_path / "src", {"a": "alpha text", "b": "beta text", "c": "gamma"})
    run(service, {"table": "s", "source": str(src), "mode": "sync"})
    (src / "b.txt").unlink()
    os.mkfifo(src / "b.txt")  # there, but not a document: skipped by the planner
    (src / "c.txt").write_bytes(b"\xff\xfe not text")  # skipped by the worker that reads it
    final = run(service, {"table": "s", "source": str(src), "mode": "sync"})
    assert final.documents_deleted == 0 and final.skipped_count == 2
    assert sorted(docs_in(table(service, "s").uri)) == ["a.txt", "b.txt", "c.txt"]


def test_an_upsert_replaces_each_document_in_one_commit(service, tmp_path):
    """Every version of the table, including each commit of the upsert, holds every document
    exactly once: never missing (deleted, not yet re-added), never doubled."""
    corpus = tmp_path / "docs.jsonl"
    run(service, {"table": "u", "source": str(write_jsonl(corpus, "v1"))})
    uri = table(service, "u").uri
    start = lance.dataset(uri).version
    final = run(
        service,
        {"table": "u", "source": str(write_jsonl(corpus, "v2")), "mode": "upsert"},
        partition_bytes=8 * 1024,
    )
    assert final.partitions_total > 2 and final.documents_changed == 48
    versions = [v["version"] for v in lance.dataset(uri).versions() if v["version"] >= start]
    assert len(versions) > 2
    for version in versions:
        found = docs_in(uri, version)
        assert len(found) == 48 and all(len(h) == 1 for h in found.values()), version
        assert chunk_ids_unique(uri, version), version


@pytest.mark.parametrize("mode", ["upsert", "sync", "overwrite"])
def test_cancelling_a_replacing_job_puts_back_what_it_replaced(service, cluster, tmp_path, mode):
    corpus = tmp_path / "docs.jsonl"
    run(service, {"table": "r", "source": str(write_jsonl(corpus, "v1"))})
    uri = table(service, "r").uri
    before = docs_in(uri)
    rows_before = lance.dataset(uri).count_rows()
    gate = held_writes(cluster, tmp_path, "/r.lance")
    try:
        job = service.submit(
            "local",
            {"table": "r", "mode": mode, "source": str(write_jsonl(corpus, "v2"))},
            partition_bytes=8 * 1024,
        )
        gate.let_one()
        wait_for(lambda: service.get(job.id).partitions_done == 1)
        replaced = docs_in(uri)  # mid-job: some documents are v2 now
        assert replaced != before
        if mode != "overwrite":
            assert set(replaced) == set(before)  # none missing meanwhile
        assert service.cancel(job.id).status == "cancelling"
        final = service.wait(job.id, timeout=120)
    finally:
        release(cluster, gate)
    assert final.status == JobStatus.CANCELLED
    assert docs_in(uri) == before and lance.dataset(uri).count_rows() == rows_before
    assert chunk_ids_unique(uri)
    jobs = Counter(lance.dataset(uri).to_table(columns=["job_id"]).column("job_id").to_pylist())
    assert job.id not in jobs


def test_a_sync_deletes_exactly_the_gone_ids_whatever_characters_they_hold(service):
    """Document ids are the tenant's text and go into Lance filters: quotes, SQL and
    non-ASCII ids are matched literally, and only the one gone is deleted."""
    ids = ["plain", "it's", "x') OR (1=1", "back\\slash", "ünïcode-文書", 'a"b']
    texts = [f"document number {i} about queues" for i in range(len(ids))]
    run(service, {"table": "q", "texts": texts, "ids": ids, "mode": "sync"})
    final = run(
        service,
        {"table": "q", "texts": texts[:2] + texts[3:], "ids": ids[:2] + ids[3:], "mode": "sync"},
    )
    assert final.documents_deleted == 1 and final.documents_unchanged == 5
    assert sorted(docs_in(table(service, "q").uri)) == sorted(ids[:2] + ids[3:])
