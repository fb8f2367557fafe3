"""`embedscale tables list|show|optimize|history|restore|drop` (issue 17 item 5), in process
against a data dir whose table and ledger are written as the runner writes them."""

from __future__ import annotations

import json

import pytest

from embedscale.jobs.service import JobService
from tests.helpers import embedscale_in_process
from tests.table_commits import ledger_job, new_table


@pytest.fixture
def data_dir(tmp_path):
    """A table `docs` of tenant local: version 1 empty, 2 and 3 one job each."""
    data = tmp_path / "data"
    with JobService(data) as service:
        table = new_table(service.tenant_data_dir("local"))
        ids = [ledger_job(service.store, table, docs) for docs in (["a", "b"], ["c"])]
    return data, ids


def tables(data, *args):
    return embedscale_in_process("tables", *args, "--data-dir", str(data))


def test_list_show_and_history(data_dir):
    data, (first, second) = data_dir
    listed = tables(data, "list", "--json")
    assert listed.returncode == 0, listed.stderr
    assert [(t["name"], t["rows"]) for t in json.loads(listed.stdout)] == [("docs", 3)]
    shown = tables(data, "show", "docs", "--json")
    assert shown.returncode == 0, shown.stderr
    view = json.loads(shown.stdout)
    assert (view["rows"], view["fragments"], view["versions"], view["version"]) == (3, 2, 3, 3)
    assert view["bytes"] > 0 and view["indexes"] == []
    human = tables(data, "show", "docs")
    assert (
        "3 rows in 2 fragments" in human.stdout
        and "versions: 3 kept, oldest 1, latest 3" in human.stdout
    )
    history = json.loads(tables(data, "history", "docs", "--json").stdout)
    assert [(v["version"], v["jobs"]) for v in history] == [(3, [second]), (2, [first]), (1, [])]
    assert second[:8] in tables(data, "history", "docs").stdout


def test_restore_then_history_shows_it(data_dir):
    data, _ = data_dir
    restored = tables(data, "restore", "docs", "--version", "2")
    assert restored.returncode == 0, restored.stderr
    assert "restored to version 2 as version 4" in restored.stdout
    newest = json.loads(tables(data, "history", "docs", "--json", "--limit", "1").stdout)
    assert (newest[0]["operation"], newest[0]["restored"]) == ("Restore", 2)
    assert json.loads(tables(data, "list", "--json").stdout)[0]["rows"] == 2
    assert embedscale_in_process("verify", "docs", "--data-dir", str(data)).returncode == 0


def test_bad_input_is_one_line_and_changes_nothing(data_dir):
    data, _ = data_dir
    missing = tables(data, "restore", "docs", "--version", "42")
    assert missing.returncode == 1
    assert "no version 42 to restore: the table has versions 1-3" in missing.stderr
    assert tables(data, "show", "nope").stderr.startswith("embedscale: error: no table 'nope'")
    bad = tables(data, "optimize", "docs", "--retention-days", "-1")
    assert bad.returncode == 1 and "retention" in bad.stderr
    assert json.loads(tables(data, "show", "docs", "--json").stdout)["version"] == 3


def test_optimize_then_drop(data_dir):
    data, _ = data_dir
    optimized = tables(data, "optimize", "docs", "--retention-days", "0")
    assert optimized.returncode == 0, optimized.stderr + optimized.stdout
    assert "compaction: fragments_before 2, fragments_after 1" in optimized.stdout
    assert "optimized (maintenance job" in optimized.stdout
    view = json.loads(tables(data, "show", "docs", "--json").stdout)
    assert (view["rows"], view["fragments"]) == (3, 1)
    assert view["indexes"], "optimize builds the doc_id and text indexes"
    assert embedscale_in_process("verify", "docs", "--data-dir", str(data)).returncode == 0
    dropped = tables(data, "drop", "docs")
    assert dropped.returncode == 0 and "dropped" in dropped.stdout
    assert json.loads(tables(data, "list", "--json").stdout) == []


def test_the_facade_lists_restores_and_optimizes(data_dir):
    import embedscale

    data, (first, _) = data_dir
    assert [t.name for t in embedscale.tables(data_dir=data)] == ["docs"]
    assert embedscale.history("docs", data_dir=data, limit=2)[1].jobs == (first,)
    done = embedscale.restore("docs", 2, data_dir=data)
    assert (done.version, done.made) == (2, 4)
    record = embedscale.optimize("docs", retention_days=0, data_dir=data)
    assert record is not None and record.error is None
    assert (record.details or {})["cleanup"]["versions"] > 0
    assert embedscale.read_table("docs", data_dir=data).shape[0] == 2
