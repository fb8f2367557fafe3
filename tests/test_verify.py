"""`embedscale verify` and GET /v1/tables/{name}/verify: a table written by real jobs verifies
clean, and each way of breaking it by hand (with lance, or in the ledger) is named, with exit
status 1: a duplicated row, a NaN vector, rows of a cancelled job, a committed partition's rows
gone. Rows of a job another data dir ran are only a warning."""

from __future__ import annotations

import shutil
from pathlib import Path

import lance
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest

from embedscale.api.cli.main import main
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.jobs.store.duckdb_store import Store
from tests.conftest import SAMPLE_CORPUS
from tests.helpers import assert_verified, read_rows, run, verify, wait_done

pytestmark = pytest.mark.slow

TEXTS = [
    "The tide came in slowly over the flats.",
    "A heron waited by the channel.",
    "Gulls argued over the harbour wall at dawn.",
]


@pytest.fixture(scope="module")
def built(cluster, tmp_path_factory) -> tuple[Path, dict[str, str]]:
    """A data dir whose table `t` two real jobs wrote: files in several partitions, then
    inline texts with ids. Built once; each test breaks a copy of it."""
    root = tmp_path_factory.mktemp("verify")
    corpus = root / "corpus"
    corpus.mkdir()
    for name in ["heapq.txt", "json.txt", "argparse.txt", "csv.txt"]:
        shutil.copy(SAMPLE_CORPUS / "stdlib" / name, corpus / name)
    data_dir = root / "data"
    files = run(
        cluster, source=str(corpus), table="t", data_dir=str(data_dir), partition_bytes=2048
    )
    texts = run(cluster, texts=TEXTS, ids=["a", "b", "c"], table="t", data_dir=str(data_dir))
    assert files.partitions > 1 and files.ok and texts.ok
    return data_dir, {"files": files.job_id, "texts": texts.job_id}


@pytest.fixture
def data(built, tmp_path) -> tuple[Path, dict[str, str]]:
    data_dir, jobs = built
    shutil.copytree(data_dir, tmp_path / "data")
    return tmp_path / "data", jobs


def dataset(data_dir: Path) -> lance.LanceDataset:
    return lance.dataset(ChunkTable(data_dir, "t").uri)


def kinds(report: dict) -> dict[str, str]:
    return {p["kind"]: p["severity"] for p in report["problems"]}


def test_a_clean_table_verifies(data, capsys):
    data_dir, jobs = data
    report = assert_verified(data_dir, "t")
    rows = read_rows(data_dir, "t", ["job_id"]).column("job_id").to_pylist()
    assert report["rows"] == len(rows) and set(rows) == set(jobs.values())
    assert (report["jobs"], report["model"], report["dimension"]) == (2, "all-MiniLM-L6-v2", 384)
    assert main(["verify", "t", "--data-dir", str(data_dir)]) == 0  # the text form
    out, err = capsys.readouterr()
    assert not err
    assert out.startswith(f"table 't' of tenant 'local': ok ({len(rows)} rows of 2 jobs")


def test_a_duplicated_row_is_named(data):
    data_dir, jobs = data
    again = dataset(data_dir).to_table(filter=f"job_id = '{jobs['texts']}'").slice(0, 2)
    lance.write_dataset(again, ChunkTable(data_dir, "t").uri, mode="append")
    status, report, err = verify(data_dir, "t")
    assert status == 1 and not report["ok"]
    assert kinds(report) == {"duplicate_ids": "error", "unrecorded_rows": "error"}
    duplicate = next(p for p in report["problems"] if p["kind"] == "duplicate_ids")
    assert duplicate["count"] == 2 and set(duplicate["examples"]) == set(again["id"].to_pylist())
    lines = err.strip().splitlines()
    assert len(lines) == 2 and all(line.startswith("error: table 't'") for line in lines)
    assert "duplicate_ids" in err and jobs["texts"] in err


def test_a_nan_vector_is_named(data):
    data_dir, _ = data
    ds = dataset(data_dir)
    row = ds.to_table(limit=1)
    victim = row["id"][0].as_py()
    vector = np.full((1, 384), np.nan, np.float32)
    vector[0, 1:] = 0.5
    nan_row = row.set_column(
        row.schema.get_field_index("vector"),
        row.schema.field("vector"),
        pa.FixedSizeListArray.from_arrays(pa.array(vector.ravel()), 384),
    )
    ds.delete(f"id = '{victim}'")  # the same row, its vector now NaN: counts unchanged
    lance.write_dataset(nan_row, ds.uri, mode="append")
    status, report, err = verify(data_dir, "t")
    assert status == 1 and kinds(report) == {"invalid_vectors": "error"}
    assert report["problems"][0]["examples"] == [victim] and victim in err


def test_rows_of_a_cancelled_job_are_named(data):
    data_dir, jobs = data
    store = Store(data_dir / "embedscale.duckdb")
    try:  # a cancel whose removal of rows was lost: the ledger says cancelled, rows remain
        with store._lock:
            store._con.execute("UPDATE jobs SET status = 'cancelled' WHERE id = ?", [jobs["texts"]])
    finally:
        store.close()
    status, report, err = verify(data_dir, "t")
    assert status == 1 and kinds(report) == {"cancelled_job_rows": "error"}
    assert report["problems"][0]["examples"] == [jobs["texts"]]
    assert "cancelled_job_rows" in err and jobs["texts"] in err


def test_a_committed_partitions_rows_gone_are_named(data):
    data_dir, jobs = data
    ds = dataset(data_dir)
    gone = ds.count_rows(filter="doc_id = 'json.txt'")
    ds.delete("doc_id = 'json.txt'")  # the rows of one of the files job's partitions
    status, report, err = verify(data_dir, "t")
    assert status == 1 and kinds(report) == {"missing_rows": "error"}
    missing = report["problems"][0]
    assert missing["count"] == gone and missing["examples"] == [jobs["files"]]
    assert "missing_rows" in err and jobs["files"] in err


def test_rows_replaced_by_a_later_upsert_are_not_missing(data, cluster):
    data_dir, _ = data
    changed = run(
        cluster,
        texts=["The tide went out again."],
        ids=["a"],
        table="t",
        data_dir=str(data_dir),
        mode="upsert",
    )
    assert changed.ok and changed.chunks == 1
    assert_verified(data_dir, "t")  # the texts job has a row fewer than it committed: rightly


def test_a_table_dropped_and_written_anew_owes_nothing_of_the_jobs_before(data, cluster):
    data_dir, _ = data
    shutil.rmtree(ChunkTable(data_dir, "t").uri)  # as DELETE /v1/tables/t does
    anew = run(cluster, texts=TEXTS[:1], table="t", data_dir=str(data_dir))
    assert anew.ok
    report = assert_verified(data_dir, "t")
    assert (report["jobs"], report["rows"]) == (3, anew.chunks)


def test_rows_of_a_job_the_ledger_does_not_know_are_a_warning(data):
    data_dir, _ = data
    ds = dataset(data_dir)
    rows = ds.to_table(limit=2)
    rows = rows.set_column(
        rows.schema.get_field_index("id"), "id", pc.binary_join_element_wise(rows["id"], "x", "")
    )
    rows = rows.set_column(
        rows.schema.get_field_index("job_id"), "job_id", pa.array(["elsewhere"] * 2)
    )
    lance.write_dataset(rows.cast(ds.schema), ds.uri, mode="append")
    status, report, err = verify(data_dir, "t")
    assert status == 0 and report["ok"]
    assert kinds(report) == {"unknown_job_rows": "warning"}
    assert report["problems"][0]["examples"] == ["elsewhere"] and err.startswith("warning:")


def test_an_unknown_table_is_a_one_line_error(data, capsys):
    data_dir, _ = data
    assert main(["verify", "nope", "--data-dir", str(data_dir)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no table 'nope' (tables: t)" in err[0]


def test_the_admin_verifies_a_tenants_table_over_http(server):
    client = server.tenant("verified")
    job = client.post("/v1/jobs", json={"table": "notes", "texts": TEXTS}).json()
    assert wait_done(client, job["id"])["status"] == "succeeded"
    with server.admin() as admin:
        report = admin.get("/v1/tables/notes/verify", params={"tenant": "verified"}).json()
        assert report["ok"] and report["problems"] == [] and report["jobs"] == 1
        assert admin.get("/v1/tables/nope/verify", params={"tenant": "verified"}).status_code == 404
        assert admin.get("/v1/tables/notes/verify", params={"tenant": "../x"}).status_code == 422
        # Broken by hand: its report is still a 200, saying what is wrong.
        uri = ChunkTable(server.data_dir / "tenants" / "verified", "notes").uri
        lance.write_dataset(lance.dataset(uri).to_table(limit=1), uri, mode="append")
        broken = admin.get("/v1/tables/notes/verify", params={"tenant": "verified"})
        assert broken.status_code == 200 and not broken.json()["ok"]
        assert "duplicate_ids" in {p["kind"] for p in broken.json()["problems"]}
    refused = client.get("/v1/tables/notes/verify", params={"tenant": "verified"})
    assert refused.status_code == 403 and "admin key" in refused.json()["detail"]
    assert client.get("/v1/tables/notes/verify").status_code == 403
