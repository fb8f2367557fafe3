"""Tables and sources on a real S3-compatible store (SeaweedFS, started by the tests): the same
exactly-once job as on a local disk, each tenant under its own prefix, and one-line errors for a
store that is unreachable, refuses the key or lacks the bucket."""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import lance
import pytest

from embedscale.engine.errors import EmbedscaleError
from embedscale.engine.storage.locations import Location, StorageOptions, resolve_storage_options
from embedscale.engine.tables.catalog import list_tables, read_table
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.service import JobService
from embedscale.jobs.spec import JobSpec, check_source_allowed
from tests.dask_processes import run_cli_in_process
from tests.helpers import run
from tests.spawned import commit_rows

ROOT = Path(__file__).resolve().parents[1]
pytestmark = pytest.mark.slow


def ids_and_vectors(table) -> dict[str, list[float]]:
    rows = table.to_pydict()
    return dict(zip(rows["id"], rows["vector"]))


def test_a_job_reads_and_writes_s3_exactly_as_a_local_one(
    cluster, s3_store, small_corpus, tmp_path
):
    bucket = s3_store.make_bucket()
    s3_store.upload(small_corpus, f"s3://{bucket}/docs")
    tables = f"s3://{bucket}/tables"

    local = run(cluster, table="t", source=str(small_corpus), data_dir=str(tmp_path / "l"))
    remote = run(
        cluster,
        table="t",
        source=f"s3://{bucket}/docs/",
        data_dir=str(tmp_path / "r"),
        tables_uri=tables,
        storage_options=s3_store.options,
    )

    assert remote.table_uri == f"{tables}/lancedb/t.lance"
    assert (remote.documents, remote.chunks, remote.skipped) == (
        local.documents,
        local.chunks,
        local.skipped,
    )
    home = Location(tables, resolve_storage_options(s3_store.options))
    want = ids_and_vectors(read_table(tmp_path / "l", "t", ["id", "vector"]))
    got = ids_and_vectors(read_table(home, "t", ["id", "vector"]))
    assert got.keys() == want.keys()  # same doc ids: relative paths under the source root
    assert all(max(abs(a - b) for a, b in zip(got[k], want[k])) < 1e-5 for k in want)
    # Nothing of the table on the local disk: only the job state is there.
    assert [p.name for p in (tmp_path / "r").iterdir()] == ["embedscale.duckdb"]

    # Run again: every document unchanged, no row written twice.
    again = run(
        cluster,
        table="t",
        source=f"s3://{bucket}/docs/",
        data_dir=str(tmp_path / "r"),
        tables_uri=tables,
        storage_options=s3_store.options,
    )
    assert (again.chunks, again.unchanged) == (0, local.documents)
    assert read_table(home, "t", ["id"]).num_rows == local.chunks

    # A sync after one object is gone from the bucket deletes its rows (in one commit that
    # reads the table's history on S3), and the rest stay.
    s3_store.filesystem().rm(f"{bucket}/docs/heapq.txt")
    synced = run(
        cluster,
        table="t",
        source=f"s3://{bucket}/docs/",
        mode="sync",
        data_dir=str(tmp_path / "r"),
        tables_uri=tables,
        storage_options=s3_store.options,
    )
    assert (synced.chunks, synced.unchanged) == (0, local.documents - 1)
    sources = set(read_table(home, "t", ["source"]).column("source").to_pylist())
    assert "heapq.txt" not in sources and "json.txt" in sources

    # A glob over the bucket, and the table read by Lance itself with the same options.
    globbed = run(
        cluster,
        table="md",
        source=f"s3://{bucket}/docs/*.md",
        data_dir=str(tmp_path / "r"),
        tables_uri=tables,
        storage_options=s3_store.options,
    )
    assert globbed.documents == 1
    ds = lance.dataset(
        f"{tables}/lancedb/md.lance",
        storage_options=dict(resolve_storage_options(s3_store.options)),
    )
    assert set(ds.to_table(columns=["source"]).column("source").to_pylist()) == {"chunking.md"}


def test_each_tenant_has_its_own_prefix_and_drop_removes_the_objects(cluster, s3_store, tmp_path):
    bucket = s3_store.make_bucket()
    storage = resolve_storage_options(s3_store.options)
    with JobService(
        tmp_path / "data", cluster, tables_uri=f"s3://{bucket}/emb", storage=storage
    ) as service:
        service.start()
        service.create_tenant("acme", "premium")
        job = service.submit(
            "acme",
            JobSpec(
                table="notes", texts=["alpha beta gamma"] * 1 + ["delta epsilon"], chunk_tokens=32
            ),
        )
        assert service.wait(job.id, timeout=120).status == "succeeded"
        assert (
            service.table_uri("acme", "notes")
            == f"s3://{bucket}/emb/tenants/acme/lancedb/notes.lance"
        )
        assert [t.name for t in service.tables("acme")] == ["notes"]
        assert service.tables("local") == []
        hits = service.search("acme", "notes", "gamma", k=1)
        assert hits and "gamma" in hits[0].text
        fs = s3_store.filesystem()
        assert fs.find(f"{bucket}/emb/tenants/acme/lancedb/notes.lance")
        service.drop_table("acme", "notes")
        # SeaweedFS may keep an empty folder marker; no object with content is left.
        left = fs.find(f"{bucket}/emb/tenants/acme/lancedb/notes.lance", detail=True)
        assert not [name for name, info in left.items() if info.get("size")]
        assert service.tables("acme") == []
        assert list_tables(Location(f"s3://{bucket}/emb/tenants/acme", storage)) == []


def test_a_missing_bucket_as_source_is_a_4xx_naming_the_source(cluster, s3_store, tmp_path):
    storage = resolve_storage_options(s3_store.options)
    with (
        JobService(tmp_path / "data", cluster, storage=storage) as service,
        pytest.raises(InvalidFieldError) as err,
    ):
        service.submit("local", JobSpec(table="t", source="s3://no-such-bucket/docs/"))
    assert err.value.field == "source"
    assert "bucket 'no-such-bucket' does not exist" in str(err.value)


def test_cli_runs_and_searches_a_table_on_s3(s3_store, tmp_path, small_corpus, cluster):
    """On the session's cluster, whose workers have no credentials of their own: the job
    carries them (tests/test_remote_cluster.py runs the command in a process of its own)."""
    bucket = s3_store.make_bucket()
    args = ["--tables-uri", f"s3://{bucket}/cli", "--data-dir", str(tmp_path / "d")]
    done = run_cli_in_process(
        "run",
        str(small_corpus),
        "--table",
        "docs",
        "--scheduler",
        cluster.client.scheduler.address,
        "--json",
        *args,
        env=s3_store.env,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    assert summary["status"] == "succeeded" and summary["chunks"] > 0
    assert summary["table_uri"] == f"s3://{bucket}/cli/lancedb/docs.lance"
    found = run_cli_in_process(
        "search",
        "docs",
        "how are chunks cut?",
        "-k",
        "1",
        "--json",
        *args,
        env=s3_store.env,
        cwd=tmp_path,
    )
    assert found.returncode == 0, found.stderr
    assert len(json.loads(found.stdout)) == 1
    assert s3_store.env["AWS_SECRET_ACCESS_KEY"] not in done.stdout + done.stderr


@pytest.mark.parametrize("problem", ["unreachable", "wrong key", "no bucket"])
def test_a_store_that_cannot_be_used_is_one_line_naming_the_fix(
    s3_store, tmp_path, small_corpus, problem
):
    env = dict(s3_store.env)
    uri = f"s3://{s3_store.make_bucket()}/t"
    if problem == "unreachable":
        env["AWS_ENDPOINT_URL"] = "http://127.0.0.1:9"  # discard: nothing listens
        expected = "cannot reach the object store at http://127.0.0.1:9"
    elif problem == "wrong key":
        env["AWS_SECRET_ACCESS_KEY"] = "not-the-secret"
        expected = "refused the credentials"
    else:
        uri = "s3://no-such-bucket-here/t"
        expected = "bucket 'no-such-bucket-here' does not exist"
    done = run_cli_in_process(
        "run",
        str(small_corpus),
        "--table",
        "t",
        "--tables-uri",
        uri,
        "--data-dir",
        str(tmp_path / "d"),
        env=env,
        cwd=tmp_path,
    )
    assert done.returncode == 1
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], done.stderr
    assert "Traceback" not in done.stderr and env["AWS_SECRET_ACCESS_KEY"] not in done.stderr
    assert not (tmp_path / "d").exists()  # nothing written, not even the job state


def test_a_relative_data_dir_with_a_remote_scheduler_is_refused(tmp_path, small_corpus):
    done = run_cli_in_process(
        "run",
        str(small_corpus),
        "--table",
        "t",
        "--scheduler",
        "tcp://127.0.0.1:9",
        "--data-dir",
        "relative-data",
        cwd=tmp_path,
    )
    assert done.returncode == 1
    assert "every worker must reach the tables" in done.stderr
    assert "--tables-uri" in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "relative-data").exists()


# --- options, without a store ------------------------------------------------------------------


def test_storage_options_come_from_the_aws_variables_and_the_spec_and_never_print():
    env = {
        "AWS_ENDPOINT_URL": "http://store:8333",
        "AWS_ACCESS_KEY_ID": "AKIDEXAMPLE",
        "AWS_SECRET_ACCESS_KEY": "very-secret",
        "AWS_REGION": "eu-west-1",
    }
    options = resolve_storage_options({"secret_access_key": "spec-secret"}, environ=env)
    assert dict(options) == {
        "aws_endpoint": "http://store:8333",
        "aws_access_key_id": "AKIDEXAMPLE",
        "aws_secret_access_key": "spec-secret",
        "aws_region": "eu-west-1",
        "allow_http": "true",
    }  # an http:// endpoint is consent enough
    shown = repr(options) + str(options) + repr(Location("s3://b/p", options))
    assert "spec-secret" not in shown and "AKIDEXAMPLE" not in shown
    assert "http://store:8333" in shown
    assert pickle.loads(pickle.dumps(options)) == options
    assert resolve_storage_options(environ={}) == StorageOptions()
    with pytest.raises(EmbedscaleError, match="unknown storage option 'endpiont'"):
        resolve_storage_options({"endpiont": "http://x"}, environ={})


def test_object_store_sources_must_lie_under_an_allowed_prefix():
    roots = ["s3://corpora/shared", "/srv/docs"]
    assert check_source_allowed("s3://corpora/shared/a/", roots) == "s3://corpora/shared/a/"
    assert check_source_allowed("s3://corpora/shared/**/*.md", roots)
    for refused in (
        "s3://corpora/sharedother/x",
        "s3://other/shared/x",
        "s3://corpora/shared/../secret/x",
    ):
        with pytest.raises(InvalidFieldError) as err:
            check_source_allowed(refused, roots)
        assert err.value.field == "source"


def test_an_object_gone_or_forbidden_is_skipped_a_passing_failure_is_retried():
    from embedscale.engine.sources.remote_files import RemoteRefused, _refusal
    from embedscale.engine.storage.errors import StoreUnavailable

    options = resolve_storage_options({"endpoint": "http://store:8333"}, environ={})
    assert isinstance(_refusal(FileNotFoundError("x"), "s3://b/k", options), RemoteRefused)
    assert isinstance(_refusal(PermissionError("x"), "s3://b/k", options), RemoteRefused)
    passing = _refusal(ConnectionResetError("reset by peer"), "s3://b/k", options)
    # Not an OSError: the readers skip a document on OSError, this must fail the partition.
    assert isinstance(passing, StoreUnavailable) and not isinstance(passing, OSError)


def test_commits_from_several_processes_to_one_s3_table_all_land(s3_store):
    """Two services (or a serve and a run) may share a --tables-uri: their commits race on the
    store, and Lance's conditional writes must keep every one (none overwrites another)."""
    import multiprocessing

    import pyarrow as pa

    options = dict(resolve_storage_options(s3_store.options))
    uri = f"s3://{s3_store.make_bucket()}/race.lance"
    schema = pa.schema([("a", pa.string())])
    lance.write_dataset(schema.empty_table(), uri, schema=schema, storage_options=options)
    spawn = multiprocessing.get_context("spawn")  # lance is not fork-safe
    writers = [
        spawn.Process(target=commit_rows, args=(uri, options, f"w{n}", 12)) for n in range(3)
    ]
    for w in writers:
        w.start()
    for w in writers:
        w.join(timeout=240)
        assert w.exitcode == 0
    rows = lance.dataset(uri, storage_options=options).to_table().column("a").to_pylist()
    assert sorted(rows) == sorted(f"w{n}-{i}" for n in range(3) for i in range(12))


def test_undo_puts_back_what_a_job_replaced_on_s3(cluster, s3_store, tmp_path):
    """A cancel's undo reads the job's ledger, the table's commits and old versions on the
    store."""
    from embedscale.engine.sink.lance_sink import ChunkTable
    from embedscale.engine.tables.undo import undo_job
    from embedscale.jobs.ledger import job_ledger
    from embedscale.jobs.service import DB_FILE
    from embedscale.jobs.store.duckdb_store import Store

    tables = f"s3://{s3_store.make_bucket()}/tables"
    kw = {
        "table": "t",
        "data_dir": str(tmp_path / "d"),
        "tables_uri": tables,
        "storage_options": s3_store.options,
    }
    run(cluster, texts=["the first text", "the old second text"], ids=["a", "b"], **kw)
    second = run(cluster, texts=["the new second text"], ids=["b"], mode="upsert", **kw)
    home = Location(tables, resolve_storage_options(s3_store.options))

    def texts() -> dict[str, str]:
        rows = read_table(home, "t", ["doc_id", "text"]).to_pydict()
        return dict(zip(rows["doc_id"], rows["text"]))

    assert texts() == {"a": "the first text", "b": "the new second text"}
    store = Store(tmp_path / "d" / DB_FILE)
    table, tenant = ChunkTable(home, "t"), store.get_job(second.job_id).tenant
    ledger = job_ledger(store, tenant, table, second.job_id)
    assert undo_job(table, second.job_id, ledger.replaced, ledger.overwritten_before) == 1
    store.close()
    assert texts() == {"a": "the first text", "b": "the old second text"}


def test_objects_outside_the_roots_too_large_or_not_objects_are_refused(s3_store):
    """A tenant's object-store source goes through the same FileAccess as a local file."""
    from embedscale.engine.sources.file_access import FileAccess, FileRefused

    bucket = s3_store.make_bucket()
    fs = s3_store.filesystem()
    fs.pipe(f"{bucket}/allowed/small.txt", b"fine")
    fs.pipe(f"{bucket}/allowed/huge.txt", b"x" * 4096)
    fs.pipe(f"{bucket}/secret/key.txt", b"do not read")
    access = FileAccess(
        roots=(f"s3://{bucket}/allowed",),
        max_document_bytes=1024,
        storage=resolve_storage_options(s3_store.options),
    )
    assert access.read_whole(f"s3://{bucket}/allowed/small.txt") == b"fine"
    refusals = {
        f"s3://{bucket}/allowed/huge.txt": "over the limit of 1,024 bytes",
        f"s3://{bucket}/secret/key.txt": "outside the allowed roots",
        f"s3://{bucket}/allowed/../secret/key.txt": "'.' and '..' segments are not allowed",
        f"s3://{bucket}/allowedx/key.txt": "outside the allowed roots",
        f"s3://{bucket}/allowed/missing.txt": "no such object",
    }
    for uri, reason in refusals.items():
        with pytest.raises(FileRefused, match=reason.replace(".", r"\.")):
            access.read_whole(uri)
    with pytest.raises(FileRefused, match="a folder"):
        access.size(f"s3://{bucket}/allowed")
