"""A data dir's tables through engine.tables.catalog and the job service, and their errors'
statuses."""

from __future__ import annotations

import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient

from embedscale.api.server.errors import install_error_handlers
from embedscale.engine.errors import TableError, TableNotFoundError
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.tables.catalog import (
    TableInfo,
    describe_table,
    existing_table,
    list_tables,
    table_names,
)
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.service import JobService

MODEL = ModelInfo("tiny", 4, 16, 2)


def make_table(data_dir, name: str) -> ChunkTable:
    table = ChunkTable(data_dir, name)
    table.prepare(MODEL, "append")  # created empty, with the model in its schema
    return table


def test_tables_are_listed_and_described(tmp_path):
    assert list_tables(tmp_path) == [] and table_names(tmp_path) == []
    make_table(tmp_path, "b")
    make_table(tmp_path, "a")
    (tmp_path / "lancedb" / "never-committed.lance").mkdir()  # not a table
    assert list_tables(tmp_path) == [TableInfo("a", 0, "tiny", 4), TableInfo("b", 0, "tiny", 4)]
    assert describe_table(tmp_path, "b") == TableInfo("b", 0, "tiny", 4)


def test_a_missing_table_is_not_found_and_names_the_tables(tmp_path):
    make_table(tmp_path, "docs")
    with pytest.raises(TableNotFoundError, match=r"no table 'doc' \(tables: docs\)"):
        describe_table(tmp_path, "doc")
    for n in range(12):
        make_table(tmp_path, f"t{n:02}")
    with pytest.raises(TableNotFoundError, match=r"t08, \.\.\. 13 in all\)$"):
        existing_table(tmp_path, "nope")
    with pytest.raises(TableError, match="invalid table name"):
        existing_table(tmp_path, "../x")


def test_the_service_reaches_tables_per_tenant(tmp_path):
    with JobService(tmp_path) as service:
        service.create_tenant("acme", "free")
        make_table(service.tenant_data_dir("acme"), "mine")
        assert [t.name for t in service.tables("acme")] == ["mine"]
        assert service.tables("local") == []
        assert service.table("acme", "mine").dimension == 4
        assert service.table_uri("acme", "mine").endswith("tenants/acme/lancedb/mine.lance")
        with pytest.raises(TableNotFoundError):
            service.table("local", "mine")  # another tenant's table is not found
        with pytest.raises(TableNotFoundError):
            service.search("local", "mine", "query")
        # A filter the engine refuses is the request's `filter` field, checked before any
        # model is loaded.
        with pytest.raises(InvalidFieldError, match="filter") as err:
            service.search("acme", "mine", "query", where="doc_id = 'a'; DROP TABLE t")
        assert err.value.field == "filter"
        service.drop_table("acme", "mine")
        assert service.tables("acme") == []
        with pytest.raises(TableNotFoundError):
            service.drop_table("acme", "mine")


@pytest.mark.parametrize(
    "error,status",
    [
        (TableNotFoundError("no table 'x' (tables: none)"), 404),
        (TableError("invalid table name 'a/b'"), 422),
        (InvalidFieldError("filter", "invalid filter"), 422),
    ],
)
def test_table_errors_become_their_statuses(error, status):
    app = FastAPI()
    install_error_handlers(app)

    @app.get("/fail")
    def fail() -> None:
        raise error

    answer = TestClient(app).get("/fail")
    assert answer.status_code == status
    assert str(error) in answer.text
