"""The parts of a migration that need no cluster (issue 18 part 2): a document's text rebuilt from
its chunks, the difference of two generations, the generation states, the store's switch (one
transaction that refuses while a job writes the table), the readers' pointer and the report's
figures."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta

import pytest

from embedscale.engine.chunking.chunker import ChunkSettings, chunk_texts
from embedscale.engine.models.limits import local_tokenizer, model_limits
from embedscale.engine.models.registry import resolve_model
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sources.documents import Document
from embedscale.engine.tables.generation_pointer import (
    pointed_home,
    pointed_names,
    remove_pointer,
    write_pointer,
)
from embedscale.engine.tasks.stored_documents import StoredChunks, rebuild_text, reused_chunks
from embedscale.jobs.errors import ConflictError
from embedscale.jobs.generation_states import GenerationState, check_step
from embedscale.jobs.migrations.compare import percentile
from embedscale.jobs.migrations.reconcile import difference
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import Store, utcnow
from embedscale.jobs.store.records import JobRecord

TEXT = (
    "Chunks are windows over a document's tokens.  They overlap, so a sentence cut at a "
    "boundary is still whole in one of them; the spans say where each one lies.\n\nEnd."
)


def chunked(text: str, size: int, overlap: int):
    spec = resolve_model("all-MiniLM-L6-v2")
    tokenizer = local_tokenizer(spec)
    info = model_limits(spec)
    return chunk_texts([text], tokenizer, ChunkSettings.for_model(info, size, overlap)), tokenizer


@pytest.mark.parametrize("overlap", [0, 4])
def test_a_text_rebuilt_from_its_chunks_holds_every_chunk_at_its_span(overlap):
    chunks, _ = chunked(TEXT, 12, overlap)
    starts, ends = chunks.char_start.tolist(), chunks.char_end.tolist()
    pieces = [TEXT[s:e] for s, e in zip(starts, ends)]
    rebuilt = rebuild_text(starts[::-1], ends[::-1], pieces[::-1])  # any order
    assert all(rebuilt[s:e] == TEXT[s:e] for s, e in zip(starts, ends))
    # What no chunk covers (whitespace between chunks without overlap) comes back as spaces.
    assert len(rebuilt) == ends[-1]
    assert rebuilt.split() == TEXT[: ends[-1]].split()


def test_reused_chunks_keep_their_spans_and_ids_unless_one_would_not_fit():
    chunks, tokenizer = chunked(TEXT, 16, 4)
    doc = Document("a", TEXT, "a.txt")
    stored = {"a": StoredChunks(chunks.chunk_index, chunks.char_start, chunks.char_end)}
    reused = reused_chunks([doc], stored, tokenizer, 16, 2)
    assert reused is not None
    assert [x.tolist() for x in reused.content_ids] == [x.tolist() for x in chunks.content_ids]
    assert reused.char_start.tolist() == chunks.char_start.tolist()
    assert reused_chunks([doc], stored, tokenizer, 10, 2) is None  # too long: chunk afresh


@dataclass
class Doc:
    content_hash: str


def test_the_difference_of_two_generations_by_document():
    active = {"a": Doc("1"), "b": Doc("2"), "new": Doc("3")}
    target = {"a": Doc("1"), "b": Doc("old"), "gone": Doc("4")}
    diff = difference(active, target)
    assert (diff.changed, diff.gone, diff.none) == (["b", "new"], ["gone"], False)
    assert difference(active, active).none


def test_generation_steps():
    check_step(GenerationState.BUILT, GenerationState.ACTIVE, "generation 2")
    check_step(GenerationState.RETIRED, GenerationState.ACTIVE, "generation 1")
    with pytest.raises(ConflictError, match="generation 2 is building: it cannot become active"):
        check_step(GenerationState.BUILDING, GenerationState.ACTIVE, "generation 2")
    with pytest.raises(ConflictError):
        check_step(GenerationState.REMOVED, GenerationState.ACTIVE, "generation 1")


def job(tenant: str, table: str, status: JobStatus) -> JobRecord:
    now = utcnow()
    return JobRecord(
        f"job-{status}", tenant, {"table": table}, status, "normal", table, [], now, now
    )


def test_the_switch_is_one_transaction_refused_while_a_job_writes(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    first, new = ("m1", "sentence-transformers"), ("m2", "sentence-transformers")
    g = store.reserve_generation("t1", "docs", first, new, "manual", True)
    with pytest.raises(ConflictError, match="migration under way already"):
        store.reserve_generation("t1", "docs", first, new, "manual", True)
    assert store.active_generation("t1", "docs").generation == 1
    with pytest.raises(ConflictError, match="is building"):
        store.switch_generation("t1", "docs", g.generation, utcnow())
    store.update_generation("t1", "docs", 2, [GenerationState.BUILDING], state="built")
    reconciled = utcnow()
    store.insert_job(job("t1", "docs", JobStatus.QUEUED), [])
    store.start_jobs(["job-queued"])  # running: it writes the table
    with pytest.raises(ConflictError, match="being written by job"):
        store.switch_generation("t1", "docs", 2, reconciled)
    assert store.active_generation("t1", "docs").generation == 1  # nothing changed
    store.finish("job-queued", JobStatus.SUCCEEDED)
    with pytest.raises(ConflictError, match="since the generations were reconciled"):
        store.switch_generation("t1", "docs", 2, reconciled)  # it ended after the comparison
    switched = store.switch_generation("t1", "docs", 2, utcnow() + timedelta(seconds=1))
    assert switched.state == GenerationState.ACTIVE
    states = {x.generation: x.state for x in store.generations("t1", "docs")}
    assert states == {1: GenerationState.RETIRED, 2: GenerationState.ACTIVE}
    assert store.active_generation("t1", "docs").generation == 2
    assert store.active_generation("t2", "docs") is None  # another tenant's: never migrated
    store.forget_generations("t1", "docs")
    assert store.active_generation("t1", "docs") is None
    store.close()


def test_the_readers_pointer(tmp_path):
    assert pointed_home(tmp_path, "docs") == tmp_path and pointed_names(tmp_path) == []
    write_pointer(tmp_path, "docs", "generations/g2")
    assert pointed_home(tmp_path, "docs") == tmp_path / "generations" / "g2"
    assert pointed_names(tmp_path) == ["docs"]
    write_pointer(tmp_path, "docs", "")
    assert pointed_home(tmp_path, "docs") == tmp_path
    write_pointer(tmp_path, "docs", "../elsewhere")  # never out of the data dir
    assert pointed_home(tmp_path, "docs") == tmp_path
    remove_pointer(tmp_path, "docs")
    remove_pointer(tmp_path, "docs")
    assert pointed_names(tmp_path) == []


def test_percentiles():
    assert percentile([], 0.5) == 0.0
    assert percentile([3.0, 1.0, 2.0], 0.5) == 2.0
    assert percentile([float(i) for i in range(1, 101)], 0.95) == 95.0


def test_a_switch_without_a_cluster_then_the_retention_window(tmp_path):
    """A built generation holding the same documents switches at once (no job needed), a
    generation with documents missing waits for its catch-up job, and a retired generation past
    the retention window is removed while the table stays listed."""
    from embedscale.jobs.generations import generation_table
    from embedscale.jobs.service import JobService
    from embedscale.local_tables import tables as local_tables
    from tests.table_commits import commit_docs, new_table

    with JobService(tmp_path / "data") as service:
        home = service.tenant_data_dir("local")
        commit_docs(new_table(home), "j1", ["a", "b"])
        first, target = ("test-model", "sentence-transformers"), ("other", "sentence-transformers")
        g = service.store.reserve_generation("local", "docs", first, target, "manual", True)
        service.store.update_generation(
            "local", "docs", 2, [GenerationState.BUILDING], state="built"
        )
        second = generation_table(home, g)
        second.prepare(model_limits_of("test-model"), "append")
        commit_docs(second, "j2", ["a", "z"])  # b missing, z gone from the active one
        view = service.switch_migration("local", "docs")
        waiting = view.generations[-1]
        assert view.active == 1 and waiting.catch_up_job is not None  # b must be embedded
        catch_up = service.get(waiting.catch_up_job)
        assert (catch_up.kind, catch_up.status, catch_up.details["phase"]) == (
            "migration",
            JobStatus.QUEUED,
            "catch-up",
        )
        service.cancel(catch_up.id)
        service.migrations.advance("local", "docs")  # the switch gives up, and says why
        waited = service.store.generations("local", "docs")[-1]
        assert "cancelled" in (waited.error or "") and not waited.switch_requested

        commit_docs(second, "j3", ["b"])  # what a catch-up would have done
        view = service.switch_migration("local", "docs")
        assert view.active == 2, view.to_dict()
        assert sorted(r["doc_id"] for r in second.dataset().to_table().to_pylist()) == ["a", "b"]
        assert [(t.name, t.rows) for t in service.tables("local")] == [("docs", 2)]

        service.migrations.retention = timedelta(0)
        service.migrations.advance("local", "docs")
        states = {x.generation: str(x.state) for x in service.store.generations("local", "docs")}
        assert states == {1: "removed", 2: "active"}
        assert not ChunkTable(home, "docs").exists()
        assert [t.name for t in service.tables("local")] == ["docs"]
        with pytest.raises(ConflictError, match="no earlier generation"):
            service.rollback_migration("local", "docs")
    # Readers without the store find it through the pointer.
    assert [t.name for t in local_tables(data_dir=tmp_path / "data")] == ["docs"]


def model_limits_of(name: str):
    from tests.table_commits import MODEL

    return MODEL.__class__(name, MODEL.dimension, MODEL.max_tokens, MODEL.special_tokens)
