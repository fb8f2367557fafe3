"""Slices (engine/tasks/slices.py): a partition embedded a bounded amount at a time gives exactly
the
rows it gives whole, whether its state stays on the worker or is read again; a source changed
between slices is refused. The runner's side (continuations, one commit per partition, small
jobs beside a big one) is in tests/test_fair_share.py."""

from __future__ import annotations

import dataclasses
import time

import lance
import numpy as np
import pytest

from embedscale.engine.tasks import slices
from embedscale.engine.tasks.partition_task import embed_partition
from embedscale.engine.tasks.slices import (
    ModelRates,
    PartitionChanged,
    WorkerStates,
    chunking_digest,
    slice_stop,
)
from embedscale.jobs.service import JobService
from embedscale.jobs.states import JobStatus
from tests.corpora import jsonl_corpus

# --- pure parts -------------------------------------------------------------------------------


def test_a_slice_takes_the_chunks_that_fit_its_tokens_and_at_least_one():
    lengths = np.array([100, 100, 100, 300, 50])
    assert slice_stop(lengths, 0, 250) == 2
    assert slice_stop(lengths, 0, 300) == 3
    assert slice_stop(lengths, 3, 10) == 4  # one chunk even when it alone is over the budget
    assert slice_stop(lengths, 4, 10_000) == 5
    assert slice_stop(lengths, 0, 10_000) == 5


def test_slice_tokens_follow_the_measured_rate():
    rates = ModelRates()
    assert rates.slice_tokens("m", 2.0, first=4096) == 4096  # unknown: one batch
    rates.record("m", tokens=3000, seconds=1.0)
    assert rates.slice_tokens("m", 2.0, first=4096) == 6000
    rates.record("m", tokens=1000, seconds=1.0)  # smoothed toward the newest
    assert rates.slice_tokens("m", 1.0, first=4096) == 2000
    rates.record("m", tokens=0, seconds=0.0)  # nothing measured: nothing changes
    assert rates.get("m") == 2000


def test_the_digest_changes_with_any_document_or_chunk():
    lengths = np.array([10, 20])
    base = chunking_digest(["a", "b"], ["h1", "h2"], lengths)
    assert base == chunking_digest(["a", "b"], ["h1", "h2"], lengths.copy())
    assert base != chunking_digest(["a", "b"], ["h1", "h3"], lengths)
    assert base != chunking_digest(["a", "c"], ["h1", "h2"], lengths)
    assert base != chunking_digest(["a", "b"], ["h1", "h2"], np.array([10, 21]))
    assert base != chunking_digest(["ab"], ["h1h2"], lengths)  # separators count


def test_worker_states_keep_the_newest_and_forget_the_stale():
    states = WorkerStates(capacity=2, ttl=60.0)
    for run in ("a", "b", "c"):
        states.keep(slices.SliceState(run, prepared=None, digest=""))
    assert states.take(at("a")) is None and len(states) == 2  # the oldest went
    b = states.take(at("b"))
    assert b is not None and states.take(at("b")) is None  # taken while its slice runs
    b.used_at = 0.0
    states.keep(b)
    states._states["b"].used_at = time.monotonic() - 120.0
    states.keep(slices.SliceState("d", prepared=None, digest=""))
    assert states.take(at("b")) is None  # stale: its job ended long ago


def at(run: str, written: int = 0, embedded: int = 0) -> slices.SliceCursor:
    return slices.SliceCursor(run, written, embedded, total=10, digest="")


def test_a_state_is_taken_only_where_the_cursor_says():
    states = WorkerStates()
    states.keep(slices.SliceState("a", prepared=None, digest="", written=4, embedded=6))
    assert states.take(at("a", 4, 4)) is None  # ahead of the cursor: dropped...
    assert len(states) == 0  # ...not kept for another try
    states.keep(slices.SliceState("a", prepared=None, digest="", written=4, embedded=6))
    assert states.take(at("a", 4, 6)) is not None


# --- a partition in slices, in this process ---------------------------------------------------

DOCUMENTS = 12


@pytest.fixture
def prepared_job(cluster, tmp_path):
    """A job over 12 documents (5 KiB: one partition, ~50 chunks), prepared (model warm, table
    created) but not run."""
    service = JobService(tmp_path / "data", cluster)  # the runner's loop is not started
    source = jsonl_corpus(tmp_path / "c.jsonl", rows=DOCUMENTS, chars=400)
    job = service.submit("local", {"table": "t", "source": str(source), "chunk_tokens": 32})
    record = service.store.set_status(job.id, JobStatus.RUNNING)
    running = service.runner._preparer.prepare(record, resumed=False)
    yield running, source
    service.close()


class FixedSlices:
    """Slices of a fixed number of tokens, whatever the model's rate."""

    def __init__(self, tokens: int) -> None:
        self.tokens = tokens

    def record(self, *_args) -> None:
        pass

    def slice_tokens(self, *_args) -> int:
        return self.tokens

    def get(self, *_args) -> None:
        return None  # no rate measured: cursors carry no time left


def run_in_slices(partition, config, between=lambda: None):
    """The partition's slices one after another, merged as the runner merges them."""
    result = embed_partition(partition, config)
    slices_run = 1
    while result.cursor is not None:
        between()
        result = result.add_slice(embed_partition(partition, config, result.cursor))
        slices_run += 1
    return result, slices_run


def committed(running, result) -> dict[str, np.ndarray]:
    running.table.commit({running.record.id: [result]})
    rows = lance.dataset(running.table.uri).to_table(columns=["id", "vector"])
    return dict(
        zip(rows.column("id").to_pylist(), rows.column("vector").to_numpy(zero_copy_only=False))
    )


def test_a_partition_in_slices_writes_exactly_its_whole_rows(prepared_job, monkeypatch):
    running, _ = prepared_job
    (index,) = running.pending
    partition = running.partitions[index]
    whole = embed_partition(partition, dataclasses.replace(running.config, slice_seconds=None))
    assert whole.cursor is None and whole.chunks > 20

    monkeypatch.setattr(
        "embedscale.engine.tasks.partition_task.RATES", FixedSlices(1)
    )  # a chunk a slice
    monkeypatch.setattr(
        "embedscale.engine.tasks.partition_task.FLUSH_ROWS", 8
    )  # a fragment every 8 chunks
    sliced_config = dataclasses.replace(running.config, slice_seconds=1.0)
    sliced, n = run_in_slices(partition, sliced_config)
    assert n == whole.chunks
    assert (sliced.chunks, sliced.tokens, sliced.documents, sorted(sliced.doc_ids)) == (
        whole.chunks,
        whole.tokens,
        whole.documents,
        sorted(whole.doc_ids),
    )
    assert len(sliced.fragments) == -(-whole.chunks // 8)  # flushed every 8, then the rest
    assert len(slices.STATES) == 0  # the worker forgot the partition once it was done

    rows = committed(running, sliced)
    assert len(rows) == whole.chunks  # each chunk once
    lance.dataset(running.table.uri).delete("true")
    reference = committed(running, whole)  # the same partition's rows, embedded whole
    assert rows.keys() == reference.keys()
    for row_id, vector in rows.items():
        assert np.dot(vector, reference[row_id]) > 0.9999


@pytest.fixture
def in_slices(prepared_job, monkeypatch):
    """The prepared job's one partition, and a config that embeds it 100 tokens a slice."""
    running, source = prepared_job
    (index,) = running.pending
    monkeypatch.setattr("embedscale.engine.tasks.partition_task.RATES", FixedSlices(100))
    return (
        running,
        source,
        running.partitions[index],
        dataclasses.replace(running.config, slice_seconds=1.0),
    )


def test_a_slice_whose_state_is_gone_reads_the_partition_again(in_slices):
    running, _, partition, config = in_slices
    result, n = run_in_slices(partition, config, between=slices.STATES.clear)
    assert n > 2
    rows = committed(running, result)
    assert len(rows) == result.chunks and result.chunks > 20
    doc_ids = lance.dataset(running.table.uri).to_table(columns=["doc_id"]).column("doc_id")
    assert set(doc_ids.to_pylist()) == {f"doc-{i}" for i in range(DOCUMENTS)}


def test_a_source_changed_between_slices_fails_the_slice(in_slices):
    _, source, partition, config = in_slices
    first = embed_partition(partition, config)
    assert first.cursor is not None
    slices.STATES.clear()  # the worker that held it is gone...
    source.write_text(source.read_text().replace("a", "e"))  # ...and the source changed
    with pytest.raises(PartitionChanged, match="runs again from its start"):
        embed_partition(partition, config, first.cursor)


def test_a_slice_sent_again_with_an_older_cursor_ignores_a_state_ahead_of_it(in_slices):
    """Dask may run a slice twice: it ran elsewhere after its worker died (and kept its state
    there), and the runner, which never took that result, sends the same cursor again. The
    state found is ahead of the cursor; continuing from it would lose the rows the discarded
    result had written."""
    running, _, partition, config = in_slices
    first = embed_partition(partition, config)
    slices.STATES.clear()  # its holder died...
    discarded = embed_partition(partition, config, first.cursor)  # ...Dask ran it elsewhere
    assert discarded.chunks > 0 and len(slices.STATES) == 1  # flushed, and kept, ahead
    result = first.add_slice(embed_partition(partition, config, first.cursor))
    while result.cursor is not None:
        result = result.add_slice(embed_partition(partition, config, result.cursor))
    whole = embed_partition(partition, dataclasses.replace(config, slice_seconds=None))
    rows = committed(running, result)
    assert len(rows) == result.chunks == whole.chunks


def test_a_task_sent_alone_goes_on_slice_after_slice_to_the_partitions_end(
    prepared_job, monkeypatch
):
    """Its job alone on the cluster, a task embeds slice after slice: the whole partition in one
    task, flushed as often as in slices, and exactly the rows of the partition embedded whole."""
    running, _ = prepared_job
    (index,) = running.pending
    partition = running.partitions[index]
    whole = embed_partition(partition, dataclasses.replace(running.config, slice_seconds=None))
    monkeypatch.setattr("embedscale.engine.tasks.partition_task.RATES", FixedSlices(1))
    monkeypatch.setattr("embedscale.engine.tasks.partition_task.FLUSH_ROWS", 8)
    monkeypatch.setattr("embedscale.engine.tasks.partition_task.YIELDS", slices.YieldRequests())
    config = dataclasses.replace(running.config, slice_seconds=1.0, alone_slice_seconds=600.0)

    alone = embed_partition(partition, config, None, time.time())
    assert alone.cursor is None  # one task, a chunk a slice
    assert (alone.chunks, alone.tokens, alone.documents) == (
        whole.chunks,
        whole.tokens,
        whole.documents,
    )
    assert len(alone.fragments) == -(-whole.chunks // 8)  # every flush kept
    rows = committed(running, alone)
    lance.dataset(running.table.uri).delete("true")
    reference = committed(running, whole)
    assert rows.keys() == reference.keys()
    for row_id, vector in rows.items():
        assert np.dot(vector, reference[row_id]) > 0.9999


def test_a_task_sent_alone_ends_at_its_slice_once_asked_or_out_of_time(in_slices, monkeypatch):
    running, _, partition, config = in_slices
    yields = slices.YieldRequests()
    monkeypatch.setattr("embedscale.engine.tasks.partition_task.YIELDS", yields)
    config = dataclasses.replace(config, alone_slice_seconds=600.0)
    sent = time.time()
    yields.ask(time.time())  # another job wants the workers: asked after it was sent
    first = embed_partition(partition, config, None, sent)
    # One slice of 100 tokens: a few chunks of the partition's 60 or so, held unwritten.
    assert first.cursor is not None and 0 < first.cursor.embedded < first.cursor.total / 4
    # Sent after the request: it goes on to the end.
    rest = embed_partition(partition, config, first.cursor, time.time() + 1e-3)
    assert rest.cursor is None
    total = first.add_slice(rest)
    assert len(committed(running, total)) == total.chunks > 20
    # Out of time: one slice, however alone.
    lance.dataset(running.table.uri).delete("true")
    brief = dataclasses.replace(config, alone_slice_seconds=1e-9)
    assert embed_partition(partition, brief, None, time.time() + 1e-3).cursor is not None
    slices.STATES.clear()


# --- a partition split into ranges ------------------------------------------------------------


def test_a_cursor_splits_into_ranges_of_at_least_the_minimum_in_order():
    cursor = slices.SliceCursor("a", 10, 20, total=100, digest="d", holder="w1")
    first, second, third = slices.split_cursor(cursor, 3, min_chunks=10)
    # The holder keeps its state, up to the first range's end...
    assert (first.run, first.written, first.embedded, first.holder) == ("a", 10, 20, "w1")
    assert (first.end, second.embedded, second.end, third.embedded, third.end) == (
        46,
        46,
        73,
        73,
        100,
    )
    # ...and each other range starts where no worker holds anything: it is read again.
    for other in (second, third):
        assert other.written == other.embedded and other.holder == "" and other.run != "a"
    assert len({first.run, second.run, third.run}) == 3
    halves = slices.split_cursor(cursor, 4, min_chunks=30)  # 80 left: two ranges of 40
    assert [(c.embedded, c.end) for c in halves] == [(20, 60), (60, 100)]
    assert slices.split_cursor(cursor, 3, min_chunks=50) == [cursor]  # 80 left: one range
    assert slices.split_cursor(second, 2, min_chunks=10)[0].end == 59  # a range splits again
    # Where the holder measured its rate: at least MIN_RANGE_SECONDS (4 s) of model time each
    # (a GPU's 80 chunks take a fraction of a second: not worth reading the partition again).
    timed = dataclasses.replace(cursor, seconds_left=10.0)
    assert len(slices.split_cursor(timed, 3, min_chunks=10)) == 2
    assert slices.split_cursor(dataclasses.replace(cursor, seconds_left=0.2), 3, 10) == [
        dataclasses.replace(cursor, seconds_left=0.2)
    ]


def test_a_partition_split_into_ranges_writes_exactly_its_whole_rows(in_slices):
    """The first slice, then its rest split in three: the holder's range goes on from its
    state, the two others are read again; together the partition's rows, each once, as
    embedded whole, and the document figures counted once."""
    running, _, partition, config = in_slices
    whole = embed_partition(partition, dataclasses.replace(config, slice_seconds=None))
    result = embed_partition(partition, config)
    ranges = slices.split_cursor(result.cursor, 3, min_chunks=5)
    assert len(ranges) == 3 and len(slices.STATES) == 1  # only the holder's state exists
    results = []
    for cursor in ranges:
        part = embed_partition(partition, config, cursor)
        while part.cursor is not None:  # every range to its end, slice after slice
            assert part.cursor.stop == cursor.stop
            part = part.add_slice(embed_partition(partition, config, part.cursor))
        results.append(part)
    for part in results:
        result.add_slice(part)
    assert (result.chunks, result.tokens, result.documents) == (
        whole.chunks,
        whole.tokens,
        whole.documents,
    )
    assert len(slices.STATES) == 0
    rows = committed(running, result)
    assert len(rows) == whole.chunks
    lance.dataset(running.table.uri).delete("true")
    reference = committed(running, whole)
    assert rows.keys() == reference.keys()
    for row_id, vector in rows.items():
        assert np.dot(vector, reference[row_id]) > 0.9999
