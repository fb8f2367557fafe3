"""The job ledger lives in DuckDB, not in the table's recent commits (issue 16, item 1).

A busy table takes tens of commits a second, so any window of its recent history passes in
minutes. Each test here puts many commits between what a job did and what reads it: the end of a
sync, the undo of a cancel, a resume after a crash between a Lance commit and its record. The
commits are real, made as cheaply as Lance allows (an empty Append each, on the dataset object:
~1.5-2 ms apiece on this project's 2-core machine; on a path string each reopens the table and
they took three times as long).

The code has no window left to shrink: every reader goes through jobs.ledger.unrecorded_commits,
which reads all the commits after the newest version the ledger recorded. The sync test puts more
commits than the old window (10,000) in between, end to end: the old code fails it. The others,
each another path through that reader, put PAST_COMMITS: reading any fixed window of the newest
commits would miss what they look for just the same, at a tenth of the cost (with 10,001 in
every test this file took ~3 min; so, ~1 min)."""

from __future__ import annotations

import os
import time
from collections import Counter

import cloudpickle
import lance
import pytest

from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.states import JobStatus
from tests import faults
from tests.conftest import started_service
from tests.helpers import assert_verified
from tests.test_control_plane import held_writes, release, wait_for
from tests.test_sync import docs_in, run, write_docs, write_jsonl

pytestmark = pytest.mark.slow
cloudpickle.register_pickle_by_value(faults)

OLD_WINDOW = 10_000  # commits the table's history was read back over before the ledger
PAST_COMMITS = 1_001  # what the tests of the other paths through the same reader put in between


def commits_past_the_window(uri: str, commits: int = OLD_WINDOW + 1) -> int:
    """Make `commits` commits to the table at `uri` (more than the old window unless told),
    each changing nothing; returns the table's version after them."""
    ds = lance.dataset(uri)
    for _ in range(commits):
        ds = lance.LanceDataset.commit(
            ds,
            lance.Transaction(read_version=ds.version, operation=lance.LanceOperation.Append([])),
        )
    return ds.version


def test_a_sync_with_more_commits_than_the_window_deletes_exactly_the_gone(cluster, tmp_path):
    data = tmp_path / "data"
    service = started_service(cluster, data)
    docs = {
        name: f"document {name} about heaps, queues and the order of things" for name in "abcdef"
    }
    src = write_docs(tmp_path / "src", docs)
    try:
        first = service.wait(
            service.submit("local", {"table": "s", "source": str(src), "mode": "sync"}).id,
            timeout=240,
        )
        assert first.status == "succeeded", first.error
        uri = ChunkTable(service.tenant_data_dir("local"), "s").uri
        del docs["f"]
        docs["b"] = "document b, rewritten since the first sync"
        write_docs(src, docs)
        record = service.store.record_partitions_done
        made: list[tuple[int, int]] = []

        def commits_after_the_first_partition(done, *args, **kwargs):
            records = record(done, *args, **kwargs)
            if not made:  # the runner's thread: nothing else commits meanwhile
                before = lance.dataset(uri).version
                made.append((before, commits_past_the_window(uri)))
            return records

        service.store.record_partitions_done = commits_after_the_first_partition
        job = service.submit(
            "local", {"table": "s", "source": str(src), "mode": "sync"}, partition_bytes=64
        )
        final = service.wait(job.id, timeout=300)
    finally:
        service.close()
    assert final.status == JobStatus.SUCCEEDED, final.error
    assert final.partitions_total > 2  # partitions on both sides of the commits
    ((before, after),) = made
    assert after - before > OLD_WINDOW
    assert final.documents_deleted == 1 and final.documents_changed == 1
    assert sorted(docs_in(uri)) == ["a.txt", "b.txt", "c.txt", "d.txt", "e.txt"]
    assert_verified(data, "s")


def test_a_sync_keeps_the_documents_of_every_source_its_planner_skipped(service, tmp_path):
    """job_skipped keeps a job's first 1,000 skipped documents (for people to read); what a
    sync keeps is the ledger's, in full: the 1,001st unreadable source keeps its document."""
    src = write_docs(
        tmp_path / "src",
        {
            "keep": "a document that stays readable",
            "zzz": "a document whose file becomes unreadable",
        },
    )
    run(service, {"table": "k", "source": str(src), "mode": "sync"})
    for i in range(1000):  # skipped by the planner (a type it does not read), before zzz.txt
        (src / f"a{i:04}.bin").write_bytes(b"")
    (src / "zzz.txt").unlink()
    os.mkfifo(src / "zzz.txt")  # there, but not a document: skipped by the planner
    final = run(service, {"table": "k", "source": str(src), "mode": "sync"})
    assert final.skipped_count == 1001 and final.documents_deleted == 0
    assert sorted(docs_in(ChunkTable(service.tenant_data_dir("local"), "k").uri)) == [
        "keep.txt",
        "zzz.txt",
    ]


@pytest.mark.parametrize("mode", ["upsert", "overwrite"])
def test_an_undo_after_many_commits_restores_what_was_replaced(cluster, tmp_path, mode):
    data = tmp_path / "data"
    service = started_service(cluster, data)
    corpus = tmp_path / "docs.jsonl"
    gate = None
    try:
        first = service.wait(
            service.submit("local", {"table": "r", "source": str(write_jsonl(corpus, "v1"))}).id,
            timeout=240,
        )
        assert first.status == "succeeded", first.error
        uri = ChunkTable(service.tenant_data_dir("local"), "r").uri
        before = docs_in(uri)
        rows_before = lance.dataset(uri).count_rows()
        gate = held_writes(cluster, tmp_path, "/r.lance")
        job = service.submit(
            "local",
            {"table": "r", "mode": mode, "source": str(write_jsonl(corpus, "v2"))},
            partition_bytes=8 * 1024,
        )
        gate.let_one()
        wait_for(lambda: service.get(job.id).partitions_done == 1)
        assert docs_in(uri) != before  # some documents are v2 now (or gone: overwrite)
        start = lance.dataset(uri).version
        assert commits_past_the_window(uri, PAST_COMMITS) - start == PAST_COMMITS
        assert service.cancel(job.id).status == "cancelling"
        final = service.wait(job.id, timeout=180)
    finally:
        if gate is not None:
            release(cluster, gate)
        service.close()
    assert final.status == JobStatus.CANCELLED
    assert docs_in(uri) == before and lance.dataset(uri).count_rows() == rows_before
    jobs = Counter(lance.dataset(uri).to_table(columns=["job_id"]).column("job_id").to_pylist())
    assert jobs == {first.id: rows_before}
    assert_verified(data, "r")


class SimulatedCrash(BaseException):
    """Ends the runner's thread the way a dying process ends everything."""


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
@pytest.mark.parametrize("crash_at", [1, 2], ids=["first-commit", "a-later-commit"])
def test_a_commit_cut_off_from_its_record_is_found_after_many_commits(cluster, tmp_path, crash_at):
    """At the table's first commit the ledger has recorded nothing of it: the table's whole
    history is read. At a later one, only the commits after the newest recorded."""
    from embedscale.jobs.service import JobService
    from tests.corpora import jsonl_corpus

    data = tmp_path / "data"
    first = JobService(data, cluster)
    record = first.store.record_partitions_done
    calls: list = []
    lost: list = []

    def crash_after_a_commit(done, *args, **kwargs):
        calls.append(done)
        if len(calls) < crash_at:
            return record(done, *args, **kwargs)
        lost.extend(done)
        raise SimulatedCrash("after the commit, before the record")

    first.store.record_partitions_done = crash_after_a_commit
    first.start()
    job = first.submit(
        "local",
        {
            "table": "t",
            "chunk_tokens": 32,
            # Sixteen partitions of four rows, a quarter of each row text (tests/corpora.py).
            "source": str(jsonl_corpus(tmp_path / "c.jsonl", rows=64, text_chars=250)),
        },
        partition_bytes=4096,
    )
    deadline = time.monotonic() + 120
    while first.runner.alive:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    first.close(timeout=0)
    assert lost
    uri = ChunkTable(data, "t").uri
    start = lance.dataset(uri).version
    # e.g. other work, then a restart
    assert commits_past_the_window(uri, PAST_COMMITS) - start == PAST_COMMITS

    second = started_service(cluster, data)
    try:
        final = second.wait(job.id, timeout=180)
        partitions = {p.partition.index: p for p in second.store.partitions(job.id)}
        usage = second.store.usage("local")[0]
    finally:
        second.close()
    for d in lost:  # taken from the table, not run again
        assert partitions[d.partition].status == "done" and partitions[d.partition].attempts == 0
    ids = lance.dataset(uri).to_table(columns=["id"]).column("id").to_pylist()
    assert final.status == "succeeded" and len(ids) == len(set(ids)) == final.chunks_done
    assert usage == len(ids)
    assert_verified(data, "t")
