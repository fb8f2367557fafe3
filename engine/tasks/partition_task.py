"""The task each partition becomes on a worker: read -> chunk -> embed -> write fragments.

The stages run fused in one task so a partition's text, token ids and vectors never leave the
worker's memory, and a retry redoes the whole partition from its references. Only the small
PartitionResult (fragment metadata and counts) goes back to the driver.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from typing import TypeVar, cast

import numpy as np
import pyarrow as pa

from embedscale.engine.chunking.chunker import Chunks, ChunkSettings, chunk_texts
from embedscale.engine.cluster.gpu_stats import gpu_busy_since, gpu_peak_bytes, watch_gpu
from embedscale.engine.errors import error_line
from embedscale.engine.models.batching import embed_inputs
from embedscale.engine.models.cache import get_model
from embedscale.engine.models.registry import ModelSpec
from embedscale.engine.sink import lance_sink as sink
from embedscale.engine.sink.schema import chunk_schema
from embedscale.engine.sources.documents import Document, Skipped, chunk_id
from embedscale.engine.sources.file_access import FileAccess
from embedscale.engine.sources.partitions import Partition, TableDocs
from embedscale.engine.sources.readers import RecordFields, read_item
from embedscale.engine.storage.locations import NO_OPTIONS, StorageOptions
from embedscale.engine.tasks.slices import (
    FLUSH_ROWS,
    RATES,
    STATES,
    YIELDS,
    PartitionChanged,
    SliceCursor,
    SliceState,
    chunking_digest,
    slice_stop,
    worker_address,
)
from embedscale.engine.tasks.stored_documents import StoredChunks, read_stored, reused_chunks

_T = TypeVar("_T")


@dataclass(frozen=True, slots=True)
class TaskConfig:
    """Everything a worker needs for any partition of a job; small, picklable, shared."""

    job_id: str
    model: ModelSpec
    chunking: ChunkSettings
    table_uri: str
    mode: str = "append"
    fields: RecordFields = field(default_factory=RecordFields)
    token_budget: int | None = None
    access: FileAccess = field(default_factory=FileAccess)  # checked again at every open
    # Reaches a table on an object store (engine.storage.locations): the driver's options travel
    # with
    # the job, so workers of a remote cluster need no credentials of their own.
    storage: StorageOptions = NO_OPTIONS
    # Seconds of model time one task may take on a partition (engine.tasks.slices): a longer
    # partition is embedded in slices, each a task, so other jobs' tasks run between them.
    # None: the whole partition in one task.
    slice_seconds: float | None = None
    # How long a task sent while its job had the cluster to itself may go on, slice after
    # slice, before it returns (it ends sooner when the runner asks: engine.tasks.slices).
    # None: one slice per task.
    alone_slice_seconds: float | None = None
    # A migration between models of one tokenizer: the chunks of documents read back from a
    # table (TableDocs) keep their spans and numbers (engine.tasks.stored_documents).
    reuse_chunks: bool = False


@dataclass(slots=True)
class PartitionResult:
    """What a partition produced: fragments to commit and counts for progress and the summary."""

    partition: int
    fragments: list = field(default_factory=list)
    documents: int = 0  # documents read and embedded
    unchanged: int = 0  # documents already in the table with the same content hash
    chunks: int = 0
    tokens: int = 0
    doc_ids: list[str] = field(default_factory=list)  # documents whose rows it wrote
    replaced_doc_ids: list[str] = field(default_factory=list)
    # sync: every document read from the source (embedded, unchanged or skipped), which is
    # how the end of the job tells what is gone; None in other modes.
    seen_doc_ids: list[str] | None = None
    skipped: list[Skipped] = field(default_factory=list)
    seconds: float = 0.0
    device: str = ""  # where the model ran ("cuda", "cpu"; "" for an HTTP provider)
    gpu_busy_percent: float | None = None  # NVML busy of the worker's GPU while it ran
    gpu_peak_bytes: int | None = None  # the most GPU memory the worker's torch has held
    # Set on a slice that left work to do (engine.tasks.slices): where the next slice starts. The
    # document figures above come with a partition's first slice; later slices add fragments,
    # chunks, tokens and time (`add_slice`).
    cursor: SliceCursor | None = None
    # The runner's, for a partition split into ranges (engine.tasks.slices.split_cursor): the
    # cursors of its other ranges left, `cursor` being the first.
    other_ranges: list[SliceCursor] = field(default_factory=list)

    def ranges_left(self) -> list[SliceCursor]:
        """The cursors of every range of the partition still to embed, in order."""
        return ([self.cursor] if self.cursor is not None else []) + self.other_ranges

    def set_ranges(self, ranges: list[SliceCursor]) -> None:
        """Record the ranges left (in any order): the first as `cursor`, the rest beside."""
        ranges = sorted(ranges, key=lambda c: c.embedded)
        self.cursor, self.other_ranges = (ranges[0] if ranges else None), ranges[1:]

    def add_slice(self, later: PartitionResult) -> PartitionResult:
        """This partial result with a later slice of its partition added; the cursor is the
        later slice's (None once the partition is done)."""
        self.fragments = self.fragments + later.fragments
        self.chunks += later.chunks
        self.tokens += later.tokens
        if later.gpu_busy_percent is not None:
            busy = (self.gpu_busy_percent or 0.0) * self.seconds
            busy += later.gpu_busy_percent * later.seconds
            self.gpu_busy_percent = busy / max(self.seconds + later.seconds, 1e-9)
        if later.gpu_peak_bytes is not None:
            self.gpu_peak_bytes = max(self.gpu_peak_bytes or 0, later.gpu_peak_bytes)
        self.seconds += later.seconds
        self.device = later.device or self.device
        self.cursor = later.cursor
        return self


@dataclass(frozen=True, slots=True)
class PartitionFailed:
    """A partition of a batched task that failed on its own (the others went on)."""

    partition: int
    job_id: str
    error: str


@dataclass(slots=True)
class _Prepared:
    """A partition read, checked against its table and chunked, ready for the model."""

    config: TaskConfig
    result: PartitionResult
    docs: list[Document]
    chunks: Chunks
    inputs: list[np.ndarray]
    texts: list[str]  # each chunk's text, what an HTTP provider is sent
    started: float
    device: str = ""


def embed_partition(
    partition: Partition,
    config: TaskConfig,
    cursor: SliceCursor | None = None,
    alone_since: float | None = None,
) -> PartitionResult:
    """Embed a partition on this worker, or its next slice when `config.slice_seconds` is set
    (engine.tasks.slices): the result's `cursor` then says where the next one starts, None once the
    partition is done. `alone_since`: the runner's time when it sent this task with its job
    alone on the cluster, so that it may go on past one slice. Bad documents are skipped, not
    fatal."""
    if config.slice_seconds is None and cursor is None:
        prepared = _prepare(partition, config)
        return _write(
            prepared,
            _embed(get_model(config.model), prepared.inputs, prepared.texts, config.token_budget),
        )
    return _embed_slice(partition, config, cursor, alone_since)


def _embed_slice(
    partition: Partition,
    config: TaskConfig,
    cursor: SliceCursor | None,
    alone_since: float | None,
) -> PartitionResult:
    started = time.perf_counter()
    state = STATES.take(cursor) if cursor is not None else None
    if state is None:
        state = _slice_state(partition, config, cursor)
    # Every SliceState is made by _slice_state, from a _Prepared (slices.py cannot name it).
    prepared = cast(_Prepared, state.prepared)
    # The document figures come with the first slice only; a later one adds its rows.
    result = prepared.result if cursor is None else PartitionResult(partition.index)
    lengths = np.fromiter(map(len, prepared.inputs), np.int64, len(prepared.inputs))
    model = get_model(config.model)
    one_batch = config.token_budget or getattr(model, "token_budget", None) or 4096
    # Sent alone: slice after slice until the partition ends, the time is up, or the runner
    # asks for the worker back.
    alone_until = started + (config.alone_slice_seconds or 0.0)
    while True:
        budget = RATES.slice_tokens(config.model, config.slice_seconds or 0.0, one_batch)
        start = state.embedded
        end = state.end  # the partition's end, or its range's (engine.tasks.slices)
        stop = slice_stop(lengths[:end], start, budget) if start < end else start
        if stop > start:
            embed_started = time.perf_counter()
            state.unwritten.append(
                _embed(
                    model,
                    prepared.inputs[start:stop],
                    prepared.texts[start:stop],
                    config.token_budget,
                )
            )
            RATES.record(
                config.model, int(lengths[start:stop].sum()), time.perf_counter() - embed_started
            )
            state.embedded = stop
        # A slice that had to read its partition again writes what it embedded at once: were
        # the state lost at every slice, the partition would otherwise never get past its last
        # flush.
        if stop == end or state.embedded - state.written >= FLUSH_ROWS or state.reread:
            _flush(state, result, lengths)
            state.reread = False
        if state.embedded >= end or not _goes_on(alone_since, alone_until):
            break
    result.seconds = time.perf_counter() - started
    result.device = prepared.device
    result.gpu_busy_percent = gpu_busy_since(prepared.device, started)
    result.gpu_peak_bytes = gpu_peak_bytes(prepared.device)
    if state.embedded < state.end:
        result.cursor = SliceCursor(
            state.run,
            state.written,
            state.embedded,
            state.total,
            state.digest,
            worker_address(),
            state.stop,
            _seconds_left(config.model, lengths[state.embedded : state.end]),
        )
        STATES.keep(state)
    else:
        result.cursor = None
    return result


def _seconds_left(model: ModelSpec, lengths: np.ndarray) -> float | None:
    """Model seconds the chunks of `lengths` take at this worker's measured rate."""
    rate = RATES.get(model)
    return float(lengths.sum()) / rate if rate else None


def _goes_on(alone_since: float | None, alone_until: float) -> bool:
    """Whether a task goes on to another slice: it was sent alone, its time is not up, and the
    runner has not asked for the worker back since it was sent."""
    return (
        alone_since is not None
        and time.perf_counter() < alone_until
        and not YIELDS.asked_since(alone_since)
    )


def _slice_state(
    partition: Partition, config: TaskConfig, cursor: SliceCursor | None
) -> SliceState:
    """A partition read and chunked on this worker: afresh for its first slice, or again for a
    later one whose state is not here (embedding resumes after the rows already written)."""
    prepared = _prepare(partition, config)
    lengths = np.fromiter(map(len, prepared.inputs), np.int64, len(prepared.inputs))
    digest = chunking_digest(
        [d.doc_id for d in prepared.docs], [d.content_hash for d in prepared.docs], lengths
    )
    if cursor is None:
        return SliceState(uuid.uuid4().hex, prepared, digest)
    STATES.misses += 1  # read again: its holder died, or Dask ran the slice elsewhere
    if digest != cursor.digest or cursor.total != len(lengths):
        raise PartitionChanged(
            f"partition {partition.index} changed since its first slice (a document was "
            "edited, or committed by another job, meanwhile); it runs again from its start"
        )
    return SliceState(
        cursor.run, prepared, digest, cursor.written, cursor.written, reread=True, stop=cursor.stop
    )


def _flush(state: SliceState, result: PartitionResult, lengths: np.ndarray) -> None:
    """Write the rows embedded and not yet written as fragments of the slice's result."""
    prepared = cast(_Prepared, state.prepared)  # made by _slice_state, as above
    start, stop = state.written, state.embedded
    if stop > start:
        vectors = np.concatenate(state.unwritten)
        chunks = prepared.chunks
        part = Chunks(
            chunks.doc_index[start:stop],
            chunks.chunk_index[start:stop],
            chunks.char_start[start:stop],
            chunks.char_end[start:stop],
            chunks.content_ids[start:stop],
        )
        rows = _rows(
            prepared.docs,
            part,
            prepared.inputs[start:stop],
            prepared.texts[start:stop],
            vectors,
            prepared.config,
        )
        result.fragments = result.fragments + sink.write_fragments(
            prepared.config.table_uri, rows, prepared.config.storage
        )
    # Added to: a task that goes on past one slice may flush more than once.
    result.chunks += stop - start
    result.tokens += int(lengths[start:stop].sum())
    state.written, state.unwritten = stop, []


def embed_partitions(
    batch: list[tuple[Partition, TaskConfig]],
) -> list[PartitionResult | PartitionFailed]:
    """Several small partitions (of one or many jobs, one model) in one task: their inputs
    share the model's forward passes, and each partition still gets its own fragments and
    result, so the runner commits, charges and retries each on its own. A partition that
    fails is reported as PartitionFailed; the others go on."""
    outcomes = [
        _isolated(partition, config, partial(_prepare, partition, config))
        for partition, config in batch
    ]
    ready = {i: o for i, o in enumerate(outcomes) if isinstance(o, _Prepared)}
    written: dict[int, PartitionResult | PartitionFailed] = {}
    if ready:
        config = next(iter(ready.values())).config
        inputs = [x for prepared in ready.values() for x in prepared.inputs]
        texts = [t for prepared in ready.values() for t in prepared.texts]
        vectors = _embed(get_model(config.model), inputs, texts, config.token_budget)
        start = 0
        for i, prepared in ready.items():
            share = vectors[start : start + len(prepared.inputs)]
            start += len(prepared.inputs)
            written[i] = _isolated(batch[i][0], prepared.config, partial(_write, prepared, share))
    return [written[i] if isinstance(o, _Prepared) else o for i, o in enumerate(outcomes)]


def _embed(
    model, inputs: list[np.ndarray], texts: list[str], token_budget: int | None
) -> np.ndarray:
    """Vectors of the chunks: from their token ids (local models: one tokenization), or from
    their texts for a provider that takes texts (HTTP), each text's token count its weight."""
    if getattr(model, "takes_texts", False):
        return model.embed_chunks(texts, [len(x) for x in inputs])
    return embed_inputs(model, inputs, token_budget)


def _isolated(
    partition: Partition, config: TaskConfig, step: Callable[[], _T]
) -> _T | PartitionFailed:
    try:
        return step()
    except Exception as exc:  # this partition's own failure: report it, keep the others
        return PartitionFailed(partition.index, config.job_id, error_line(exc))


def _prepare(partition: Partition, config: TaskConfig) -> _Prepared:
    started = time.perf_counter()
    model = get_model(config.model)
    stored: dict[str, StoredChunks] = {}
    docs, skipped = _read(partition, config, stored)
    result = PartitionResult(partition.index, skipped=skipped)
    if config.mode == "sync":  # what the source has, unreadable sources included
        result.seen_doc_ids = [d.doc_id for d in docs] + [s.source for s in skipped]
    docs, result.unchanged, result.replaced_doc_ids = _changed_only(docs, config, skipped)
    chunks = None
    if config.reuse_chunks and stored:
        info = model.info
        chunks = reused_chunks(docs, stored, model.tokenizer, info.max_tokens, info.special_tokens)
    if chunks is None:
        chunks = chunk_texts([d.text for d in docs], model.tokenizer, config.chunking)
    no_tokens = set(range(len(docs))) - set(chunks.doc_index.tolist())
    skipped.extend(Skipped(docs[i].doc_id, "no tokens in text") for i in sorted(no_tokens))
    result.doc_ids = [d.doc_id for i, d in enumerate(docs) if i not in no_tokens]
    result.documents = len(docs) - len(no_tokens)
    inputs = [model.wrap(ids) for ids in chunks.content_ids]
    texts = [
        docs[d].text[s:e] for d, s, e in zip(chunks.doc_index, chunks.char_start, chunks.char_end)
    ]
    device = "" if getattr(model, "takes_texts", False) else str(getattr(model, "device", ""))
    watch_gpu(device)  # samples this GPU's busy from now on (a no-op on the CPU)
    return _Prepared(config, result, docs, chunks, inputs, texts, started, device)


def _write(prepared: _Prepared, vectors: np.ndarray) -> PartitionResult:
    result, config = prepared.result, prepared.config
    if len(prepared.chunks):
        rows = _rows(
            prepared.docs, prepared.chunks, prepared.inputs, prepared.texts, vectors, config
        )
        result.fragments = sink.write_fragments(config.table_uri, rows, config.storage)
    result.chunks = len(prepared.chunks)
    result.tokens = int(sum(len(x) for x in prepared.inputs))
    result.seconds = time.perf_counter() - prepared.started
    result.device = prepared.device
    result.gpu_busy_percent = gpu_busy_since(prepared.device, prepared.started)
    result.gpu_peak_bytes = gpu_peak_bytes(prepared.device)
    return result


def _read(
    partition: Partition, config: TaskConfig, stored: dict[str, StoredChunks] | None = None
) -> tuple[list[Document], list[Skipped]]:
    """The partition's documents and what was skipped; documents read back from a table
    (a migration's) add their chunks as stored to `stored`."""
    docs: list[Document] = []
    skipped: list[Skipped] = []
    seen: dict[str, str] = {}
    for item in partition.items:
        if isinstance(item, TableDocs):
            item_docs, item_skipped, item_chunks = read_stored(item, config.storage)
            if stored is not None:
                stored.update(item_chunks)
        else:
            item_docs, item_skipped = read_item(item, config.fields, config.access)
        skipped.extend(item_skipped)
        for d in item_docs:
            if d.doc_id in seen:  # equal ids would give equal chunk ids: keep the first
                skipped.append(Skipped(d.doc_id, f"duplicate id (first in {seen[d.doc_id]})"))
                continue
            seen[d.doc_id] = d.source
            docs.append(d)
    return docs, skipped


def _changed_only(
    docs: list[Document], config: TaskConfig, skipped: list[Skipped]
) -> tuple[list[Document], int, list[str]]:
    """Documents to embed, how many are already in the table unchanged, and (upsert) which
    have rows to replace. Row ids are unique within a table in every mode: a document whose id
    is in the table with the same content is not embedded again; with other content, upsert
    replaces it and the other modes skip it with the reason. (The runner checks again at
    commit time, against what other jobs committed meanwhile.)"""
    existing = sink.existing_hashes(config.table_uri, [d.doc_id for d in docs], config.storage)
    changed = [d for d in docs if existing.get(d.doc_id) != {d.content_hash}]
    if config.mode in sink.REPLACING_MODES:
        return (
            changed,
            len(docs) - len(changed),
            [d.doc_id for d in changed if d.doc_id in existing],
        )
    new = [d for d in changed if d.doc_id not in existing]
    skipped.extend(
        Skipped(
            d.doc_id, "id already in the table with other content; use mode upsert to replace it"
        )
        for d in changed
        if d.doc_id in existing
    )
    return new, len(docs) - len(changed), []


def _rows(
    docs: list[Document],
    chunks: Chunks,
    inputs: list[np.ndarray],
    texts: list[str],
    vectors: np.ndarray,
    config: TaskConfig,
) -> pa.Table:
    model = config.model.name
    d_idx = chunks.doc_index
    doc_ids = [docs[i].doc_id for i in d_idx]
    meta_json = [json.dumps(d.metadata, ensure_ascii=False, default=str) for d in docs]
    n, dim = vectors.shape
    now = datetime.now(UTC)
    spec = config.model
    schema = chunk_schema(
        model, dim, spec.backend, spec.location if spec.backend == "openai" else None
    )
    columns = {
        "id": [chunk_id(doc, int(c), model) for doc, c in zip(doc_ids, chunks.chunk_index)],
        "doc_id": doc_ids,
        "chunk_index": chunks.chunk_index,
        "text": texts,
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        "token_count": np.fromiter((len(x) for x in inputs), np.int32, n),
        "char_start": chunks.char_start,
        "char_end": chunks.char_end,
        "content_hash": [docs[i].content_hash for i in d_idx],
        "source": [docs[i].source for i in d_idx],
        "metadata": [meta_json[i] for i in d_idx],
        "job_id": pa.repeat(config.job_id, n) if n else [],
        "model": pa.repeat(model, n) if n else [],
        "created_at": pa.repeat(pa.scalar(now, pa.timestamp("us", tz="UTC")), n),
    }
    return pa.table({name: columns[name] for name in schema.names}, schema=schema)
