"""A table's versions (issue 17 item 4): its history names the jobs that made each version, a
restore brings an old version back as a new commit, and a cleanup removes the versions past the
retention window, never one still needed, the latest or the empty first one. Real Lance tables,
written as the sink writes them (tests/table_commits.py): no cluster, no model."""

from __future__ import annotations

from datetime import timedelta

import pytest

from embedscale.engine.errors import TableError, TableNotFoundError
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.storage.locations import NO_OPTIONS
from embedscale.engine.tables import versions
from embedscale.engine.tables.commit_log import commit_at, commits_after
from embedscale.engine.tables.undo import undo_job
from tests.table_commits import commit_docs, new_table

RETAIN_NOTHING = timedelta(0)


def doc_ids(table: ChunkTable, version: int | None = None) -> list[str]:
    return sorted(table.dataset(version).to_table(columns=["doc_id"]).column("doc_id").to_pylist())


@pytest.fixture
def table(tmp_path) -> ChunkTable:
    """A table of three jobs' commits: versions 2 (a, b), 3 (c) and 4 (d)."""
    table = new_table(tmp_path)
    commit_docs(table, "job-1", ["a", "b"])
    commit_docs(table, "job-2", ["c"])
    commit_docs(table, "job-3", ["d"])
    return table


def test_history_names_the_job_of_each_version_newest_first(table):
    listed = versions.history(table.uri)
    assert [v.version for v in listed] == [4, 3, 2, 1]
    assert [v.jobs for v in listed] == [("job-3",), ("job-2",), ("job-1",), ()]
    assert [v.rows for v in listed] == [4, 3, 2, 0]
    assert listed[0].operation == "Append"
    assert listed[0].timestamp.tzinfo is not None
    assert [v.version for v in versions.history(table.uri, limit=2, before=4)] == [3, 2]


def test_a_restore_is_a_new_commit_with_the_old_rows_that_names_itself(table):
    made = versions.restore(table.uri, NO_OPTIONS, 2)
    assert made == 5
    assert doc_ids(table) == ["a", "b"]
    assert doc_ids(table, 4) == ["a", "b", "c", "d"]  # the version undone stays, to go back to
    newest = versions.history(table.uri, limit=1)[0]
    assert (newest.version, newest.operation, newest.restored, newest.jobs) == (
        5,
        "Restore",
        2,
        (),
    )
    # The table's readers see a restore, not a job's commit.
    restore = commit_at(table, 5)
    assert restore is not None and restore.restored == 2 and not restore.jobs()
    assert [c.version for c in commits_after(table, 4)] == [5]
    assert versions.restore(table.uri, NO_OPTIONS, 4) == 6  # and back again
    assert doc_ids(table) == ["a", "b", "c", "d"]


def test_a_restore_to_the_latest_version_changes_nothing(table):
    assert versions.restore(table.uri, NO_OPTIONS, 4) == 4
    assert table.dataset().version == 4


@pytest.mark.parametrize("version", [0, 9, -1])
def test_a_restore_to_a_version_the_table_lacks_is_refused_and_changes_nothing(table, version):
    with pytest.raises(TableError, match=rf"no version {version} to restore.*versions 1-4"):
        versions.restore(table.uri, NO_OPTIONS, version)
    assert table.dataset().version == 4
    assert doc_ids(table) == ["a", "b", "c", "d"]


def test_a_cancel_shows_in_the_history(table):
    undo_job(table, "job-3")
    newest = versions.history(table.uri, limit=1)[0]
    assert newest.undone == "job-3" and newest.jobs == () and newest.rows == 3


def test_cleanup_keeps_what_is_needed_the_latest_and_the_empty_first_version(table):
    before = versions.describe(table.uri)
    report = versions.cleanup(table.uri, NO_OPTIONS, RETAIN_NOTHING, keep_from=3)
    assert (report.versions, report.first, report.last) == (1, 2, 2)
    assert report.bytes > 0
    kept = sorted(v["version"] for v in table.dataset().versions())
    assert kept == [1, 3, 4]
    after = versions.describe(table.uri)
    assert (after.versions, after.oldest_version, after.rows) == (3, 1, 4)
    assert after.bytes < before.bytes
    # The needed version can still be restored; the removed one is a clear error.
    with pytest.raises(TableError, match=r"no version 2 to restore.*versions 1, 3-4"):
        versions.restore(table.uri, NO_OPTIONS, 2)
    assert versions.restore(table.uri, NO_OPTIONS, 3) == 5
    assert doc_ids(table) == ["a", "b", "c"]


def test_cleanup_without_keep_from_keeps_only_the_latest(table):
    report = versions.cleanup(table.uri, NO_OPTIONS, RETAIN_NOTHING)
    assert report.versions == 2  # 2 and 3; 1 is the empty first version, 4 the latest
    assert sorted(v["version"] for v in table.dataset().versions()) == [1, 4]
    assert doc_ids(table) == ["a", "b", "c", "d"]
    assert versions.cleanup(table.uri, NO_OPTIONS, RETAIN_NOTHING).versions == 0


def test_cleanup_keeps_what_is_inside_the_retention_window(table):
    assert versions.cleanup(table.uri, NO_OPTIONS, timedelta(days=7)).versions == 0
    assert len(table.dataset().versions()) == 4


def test_cleanup_keeps_a_tagged_version(table):
    table.dataset().tags.create("before-reembed", 2)
    report = versions.cleanup(table.uri, NO_OPTIONS, RETAIN_NOTHING)
    assert report.versions == 1
    assert sorted(v["version"] for v in table.dataset().versions()) == [1, 2, 4]


def test_readers_of_the_table_commits_see_only_what_cleanup_kept(table):
    versions.cleanup(table.uri, NO_OPTIONS, RETAIN_NOTHING, keep_from=4)
    assert commit_at(table, 2) is None  # removed: what a resume then reads whole
    assert [c.version for c in commits_after(table, 0)] == [4]
    assert [v.version for v in versions.history(table.uri)] == [4]


def test_describe_counts_rows_fragments_versions_and_bytes(table):
    details = versions.describe(table.uri)
    assert (details.rows, details.fragments, details.version, details.versions) == (4, 3, 4, 4)
    assert details.bytes > 0


def test_a_missing_table_is_not_found(tmp_path):
    uri = ChunkTable(tmp_path, "nothing").uri
    for call in (
        lambda: versions.history(uri),
        lambda: versions.describe(uri),
        lambda: versions.restore(uri, NO_OPTIONS, 1),
    ):
        with pytest.raises(TableNotFoundError):
            call()
