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
