"""Hostile tenants (issue 7): input that used to be accepted and break later, probe the server's
folders, or come back whole in an error, is refused at the door with a 422 naming the field.

The unit tests prove each rule on JobSpec, the service and the engine without a server; the
tests marked slow send the same input through a real `embedscale serve`.
"""

from __future__ import annotations

import json

import httpx
import lance
import pyarrow as pa
import pytest
from pydantic import ValidationError as PydanticValidationError

from embedscale.api.server.errors import validation_content
from embedscale.api.server.schemas import SearchRequest
from embedscale.engine.errors import TableError
from embedscale.engine.models.limits import model_limits
from embedscale.engine.models.registry import resolve_model
from embedscale.engine.sink.lance_sink import validate_table_name
from embedscale.engine.tables.filters import check_filter, lance_filter
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.service import JobService
from embedscale.jobs.spec import JobSpec, check_model, check_model_allowed
from tests.helpers import wait_done

LONE = "\ud800"  # a lone surrogate: JSON can carry it, UTF-8 cannot encode it
BASE = {"table": "t", "texts": ["a"]}


def refused_loc(spec: dict) -> tuple:
    with pytest.raises(PydanticValidationError) as err:
        JobSpec.model_validate(spec)
    return err.value.errors()[0]["loc"]


# --- 4: text UTF-8 cannot encode, NUL in names and paths -----------------------------------


@pytest.mark.parametrize(
    "change,field",
    [
        ({"texts": ["fine", f"bad {LONE}"]}, "texts"),
        ({"ids": [LONE]}, "ids"),
        ({"metadata": [{"a": {"b": ["ok", LONE]}}]}, "metadata"),
        ({"metadata": [{LONE: 1}]}, "metadata"),
        ({"labels": {"k": LONE}}, "labels"),
        ({"labels": {LONE: "v"}}, "labels"),
        ({"table": f"t{LONE}"}, "table"),
        ({"model": LONE}, "model"),
        ({"text_field": LONE}, "text_field"),
        ({"id_field": LONE}, "id_field"),
        ({"texts": None, "source": f"/data/{LONE}"}, "source"),
        ({"texts": None, "source": "/data/a\x00b"}, "source"),
        ({"model": "x\x00"}, "model"),
        ({"table": "t\x00"}, "table"),
        ({"text_field": "te\x00xt"}, "text_field"),
    ],
)
def test_strings_utf8_cannot_encode_or_nul_in_names_are_refused(change, field):
    assert refused_loc({**BASE, **change})[0] == field


def test_the_surrogate_message_says_where():
    with pytest.raises(PydanticValidationError, match=r"\['a'\]\['b'\]\[1\].*lone surrogate"):
        JobSpec.model_validate({**BASE, "metadata": [{"a": {"b": ["ok", LONE]}}]})
    # Paired surrogates are ordinary text (an emoji), and so is NUL inside a document.
    JobSpec.model_validate({**BASE, "texts": ["\U0001f600 a\x00b"], "labels": {"k": "\u00e9"}})


@pytest.mark.parametrize(
    "body,field",
    [
        ({"query": f"q {LONE}"}, "query"),
        ({"query": "q", "filter": f"source = '{LONE}'"}, "filter"),
        ({"query": "q", "filter": "source = 'a\x00'"}, "filter"),
        ({"query": "q", "k": True}, "k"),
        ({"query": "q", "k": "5"}, "k"),
    ],
)
def test_search_requests_are_utf8_and_strict(body, field):
    with pytest.raises(PydanticValidationError) as err:
        SearchRequest.model_validate(body)
    assert err.value.errors()[0]["loc"] == (field,)


# --- 10: strict numbers, names that fully match, chunk bounds at submission -----------------


@pytest.mark.parametrize(
    "change,field",
    [
        ({"chunk_tokens": True}, "chunk_tokens"),
        ({"chunk_tokens": "10"}, "chunk_tokens"),
        ({"chunk_tokens": 10.0}, "chunk_tokens"),
        ({"overlap_tokens": "3"}, "overlap_tokens"),
        ({"overlap_tokens": False}, "overlap_tokens"),
    ],
)
def test_numbers_are_not_coerced(change, field):
    assert refused_loc({**BASE, **change}) == (field,)


def test_names_with_a_trailing_newline_are_refused(tmp_path):
    for name in ["t\n", "t\r\n", "\nt"]:
        with pytest.raises(TableError, match="invalid table name"):
            validate_table_name(name)
        assert refused_loc({**BASE, "table": name}) == ("table",)
    with pytest.raises(InvalidFieldError) as err:
        JobService(tmp_path).create_tenant("acme\n", "free")
    assert err.value.field == "name"


@pytest.mark.parametrize(
    "change,field,message",
    [
        ({"chunk_tokens": 1}, "chunk_tokens", "leaves no room"),
        ({"chunk_tokens": 2}, "chunk_tokens", "leaves no room"),
        ({"chunk_tokens": 1_000_000}, "chunk_tokens", "exceeds what model"),
        ({"chunk_tokens": 257}, "chunk_tokens", "use at most 256"),
        ({"overlap_tokens": 254}, "overlap_tokens", "less than the chunk's 254 text tokens"),
        ({"chunk_tokens": 64, "overlap_tokens": 62}, "overlap_tokens", "chunk's 62 text tokens"),
    ],
)
def test_chunk_sizes_out_of_the_models_bounds_are_refused_at_submission(
    tmp_path, change, field, message
):
    spec = JobSpec.model_validate({**BASE, **change})
    with pytest.raises(InvalidFieldError, match=message) as err:
        check_model(spec, None)
    assert err.value.field == field
    # Through the service: refused before anything is queued.
    service = JobService(tmp_path)
    with pytest.raises(InvalidFieldError) as err:
        service.submit("local", {**BASE, **change})
    assert err.value.field == field
    assert service.list("local")[0] == []


def test_chunk_sizes_within_the_bounds_pass():
    for change in [
        {},
        {"chunk_tokens": 3},
        {"chunk_tokens": 256, "overlap_tokens": 253},
        {"chunk_tokens": 64, "overlap_tokens": 61},
    ]:
        check_model(JobSpec.model_validate({**BASE, **change}), None)
    # A hub id's limits are unknown until it loads: the job checks them when it starts.
    check_model(
        JobSpec.model_validate({**BASE, "model": "org/some-model", "chunk_tokens": 100_000}), None
    )


def test_limits_read_from_files_are_the_loaded_models(model):
    # The bounds checked at submission are the ones the job applies once the model is loaded.
    assert model_limits(resolve_model("all-MiniLM-L6-v2")) == model.info


# --- 9: models from an allow-list, one message whatever the name ---------------------------


def test_only_allowed_models_pass_with_one_fixed_message(tmp_path):
    (tmp_path / "models" / "real").mkdir(parents=True)
    for name in ["all-MiniLM-L6-v2", "ALL-MINILM-L6-V2", "sentence-transformers/all-MiniLM-L6-v2"]:
        assert check_model_allowed(name, []) == name
    messages = set()
    for name in [
        "../../etc",
        ".",
        "/",
        "/etc",
        str(tmp_path / "models" / "real"),
        str(tmp_path / "models" / "missing"),
        "no-such-model",
        "org/other-model",
    ]:
        with pytest.raises(InvalidFieldError) as err:
            check_model_allowed(name, [])
        assert err.value.field == "model"
        messages.add(str(err.value))
    assert len(messages) == 1, messages  # nothing tells an existing folder from a missing one
    assert "all-MiniLM-L6-v2" in messages.pop()
    allowed = ["org/other-model", "sentence-transformers/all-minilm-l6-v2"]
    assert check_model_allowed("org/other-model", allowed) == "org/other-model"
    with pytest.raises(InvalidFieldError):
        check_model_allowed("org/other-model-2", allowed)
    assert check_model_allowed("../../etc", None) == "../../etc"  # the CLI: anything


def test_the_service_refuses_models_off_its_list(tmp_path):
    service = JobService(tmp_path, allowed_models=[])
    with pytest.raises(InvalidFieldError, match="not offered by this service") as err:
        service.submit("local", {**BASE, "model": "../../etc"})
    assert err.value.field == "model"
    assert service.submit("local", dict(BASE)).status == "queued"
    # Without a list (the CLI), a missing local folder is named as such.
    with pytest.raises(InvalidFieldError, match="model folder not found") as err:
        JobService(tmp_path / "cli").submit("local", {**BASE, "model": "./no-such-folder"})
    assert err.value.field == "model"


def test_serve_takes_allowed_models_from_flags_and_environment(monkeypatch):
    import uvicorn

    import embedscale.api.server.app
    from embedscale.api.cli.main import build_parser
    from embedscale.api.cli.serve import serve_command
    from embedscale.api.settings import Settings

    monkeypatch.setenv("EMBEDSCALE_ALLOWED_MODELS", '["org/a", "org/b"]')
    assert Settings().allowed_models == ["org/a", "org/b"]
    seen = {}

    class NoService:
        def close(self) -> None:
            pass

    monkeypatch.setattr(
        embedscale.api.server.app,
        "create_app",
        lambda settings, **kw: seen.setdefault("settings", settings),
    )
    monkeypatch.setattr(
        embedscale.api.server.app, "open_service", lambda settings: NoService(), raising=False
    )
    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: None)
    args = build_parser().parse_args(["serve", "--allow-model", "org/x", "--allow-model", "./m"])
    assert serve_command(args) == 0
    assert seen["settings"].allowed_models == ["org/x", "./m"]


# --- 12: a filter is one whole condition --------------------------------------------------

BAD_FILTERS = [
    "doc_id = 'x' garbage garbage",
    "doc_id = 'a'; DROP TABLE t",
    "doc_id = 'a';",
    "doc_id = 'a' ORDER BY chunk_index",
    "doc_id = 'a' LIMIT 1",
    "doc_id = 'a' AND",
    "doc_id = 'a') OR (1 = 1",
    "x) WINDOW w AS (",
    "doc_id = ?",
    "doc_id = $1",
    "doc_id = $$a$$",
    "chunk_index = (1",
    "doc_id = 'a' UNION SELECT 1",
    "   ",
]
GOOD_FILTERS = {
    "doc_id = 'a'": ["a"],
    "doc_id = 'a' -- a comment": ["a"],
    "(doc_id = 'a') OR (doc_id = 'b')": ["a", "b"],
    "chunk_index IN (0, 1) AND source LIKE '%.md'": ["b"],
    "`doc_id` = 'b'": ["b"],
    "doc_id = ')'": [],
    "regexp_match(doc_id, '^a')": ["a"],
}


@pytest.mark.parametrize("where", BAD_FILTERS)
def test_filters_with_anything_past_one_condition_are_refused(where):
    with pytest.raises(TableError, match="filter"):
        check_filter(where)


def test_lance_runs_the_checked_filters_and_would_drop_garbage(tmp_path):
    uri = str(tmp_path / "t.lance")
    ds = lance.write_dataset(
        pa.table({"doc_id": ["a", "b"], "chunk_index": [0, 1], "source": ["x.txt", "y.md"]}), uri
    )
    for where, ids in GOOD_FILTERS.items():
        assert sorted(ds.to_table(filter=lance_filter(where))["doc_id"].to_pylist()) == ids
    # Why the check exists: Lance alone drops what follows a condition.
    assert ds.to_table(filter="doc_id = 'a' garbage garbage").num_rows == 1
    with pytest.raises(TableError):
        lance_filter("doc_id = 'a' garbage garbage")


# --- 11: error answers stay small --------------------------------------------------------


def test_validation_answers_are_capped():
    huge = "x" * 1_000_000
    errors = [
        {
            "loc": ("body", "texts", i, huge),
            "msg": huge,
            "type": "string_type",
            "input": huge,
            "ctx": {"error": ValueError(huge), "limit": huge},
        }
        for i in range(50_000)
    ]
    content = validation_content(errors)
    assert len(json.dumps(content)) < 10_000
    assert content["errors_total"] == 50_000 and 1 <= len(content["detail"]) <= 20
    first = content["detail"][0]
    assert first["loc"][:3] == ["body", "texts", 0] and len(first["input"]) < 300
    assert "error" not in first.get("ctx", {})  # an exception is no value to echo
    # One error made only of escapes still fits, and a lone surrogate can be sent.
    nasty = [
        {
            "loc": ("body",) + (LONE * 500,) * 8,
            "msg": "\x01" * 5000,
            "type": "t",
            "input": LONE * 5000,
        }
    ]
    content = validation_content(nasty)
    json.dumps(content, ensure_ascii=False).encode("utf-8")
    assert len(json.dumps(content)) < 10_000 and "errors_total" not in content
    small = validation_content([{"loc": ("body", "k"), "msg": "bad", "type": "t", "input": 5}])
    assert small == {"detail": [{"loc": ["body", "k"], "msg": "bad", "type": "t", "input": 5}]}


# --- the same through a real server ------------------------------------------------------


def post_raw(client: httpx.Client, path: str, body: dict) -> httpx.Response:
    # httpx encodes JSON as UTF-8, which a lone surrogate cannot be; an ASCII-escaped body
    # ("\ud800") is what a hostile client sends.
    return client.post(path, content=json.dumps(body), headers={"content-type": "application/json"})


def assert_422(response: httpx.Response, loc: list) -> dict:
    assert response.status_code == 422, response.text
    assert len(response.content) < 10_000
    detail = response.json()["detail"]
    assert detail[0]["loc"][: len(loc)] == loc, detail
    return detail[0]


@pytest.fixture(scope="module")
def hostile(server):
    return server.tenant("hostile", tier="enterprise")


@pytest.mark.slow
def test_api_refuses_text_utf8_cannot_encode_and_metrics_stay_up(server, hostile):
    cases = [
        ({"texts": [LONE]}, "texts"),
        ({"ids": [LONE]}, "ids"),
        ({"metadata": [{"k": [{"deep": LONE}]}]}, "metadata"),
        ({"metadata": [{LONE: 1}]}, "metadata"),
        ({"labels": {"a": LONE}}, "labels"),
        ({"labels": {LONE: "a"}}, "labels"),
        ({"table": LONE}, "table"),
        ({"model": LONE}, "model"),
        ({"text_field": LONE}, "text_field"),
        ({"id_field": LONE}, "id_field"),
        ({"texts": None, "source": str(server.root / LONE)}, "source"),
        ({"texts": None, "source": str(server.root) + "/a\x00b"}, "source"),
    ]
    for change, field in cases:
        body = {k: v for k, v in {**BASE, **change}.items() if v is not None}
        assert_422(post_raw(hostile, "/v1/jobs", body), ["body", field])
    assert httpx.get(f"{server.url}/metrics").status_code == 200


@pytest.mark.slow
def test_api_models_chunks_strictness_and_names(server, hostile):
    refusals = set()
    for model in ["../../etc", ".", "/", "/etc", str(server.root), "no-such-model"]:
        refusals.add(
            assert_422(hostile.post("/v1/jobs", json={**BASE, "model": model}), ["body", "model"])[
                "msg"
            ]
        )
    assert len(refusals) == 1, refusals
    for change, field in [
        ({"chunk_tokens": 1}, "chunk_tokens"),
        ({"chunk_tokens": 2}, "chunk_tokens"),
        ({"chunk_tokens": 1_000_000}, "chunk_tokens"),
        ({"overlap_tokens": 254}, "overlap_tokens"),
        ({"chunk_tokens": True}, "chunk_tokens"),
        ({"chunk_tokens": "10"}, "chunk_tokens"),
        ({"table": "name\n"}, "table"),
    ]:
        assert_422(hostile.post("/v1/jobs", json={**BASE, **change}), ["body", field])
    for method in ("GET", "DELETE"):
        assert_422(hostile.request(method, "/v1/tables/name%0A"), ["path", "name"])
    assert_422(hostile.post("/v1/tables/name%0A/search", json={"query": "q"}), ["path", "name"])
    assert_422(hostile.get("/v1/jobs", params={"cursor": "nope"}), ["query", "cursor"])
    alias = hostile.post(
        "/v1/jobs",
        json={**BASE, "table": "alias", "model": "sentence-transformers/all-MiniLM-L6-v2"},
    )
    assert alias.status_code == 201, alias.text


@pytest.mark.slow
def test_api_search_refuses_bad_text_and_incomplete_filters(hostile):
    job = hostile.post(
        "/v1/jobs",
        json={
            "table": "docs",
            "ids": ["a", "b"],
            "texts": ["LanceDB stores the vectors.", "Dask runs the tasks."],
        },
    ).json()
    assert wait_done(hostile, job["id"])["status"] == "succeeded"
    search = "/v1/tables/docs/search"
    assert_422(post_raw(hostile, search, {"query": LONE}), ["body", "query"])
    assert_422(
        post_raw(hostile, search, {"query": "q", "filter": f"doc_id = '{LONE}'"}),
        ["body", "filter"],
    )
    for where in [
        "doc_id = 'a' garbage garbage",
        "doc_id = 'a'; DROP TABLE docs",
        "doc_id = 'a' LIMIT 1",
        "doc_id = 'a') OR (1 = 1",
        "doc_id = 'a\x00'",
    ]:
        assert_422(hostile.post(search, json={"query": "q", "filter": where}), ["body", "filter"])
    hits = hostile.post(search, json={"query": "vectors", "filter": "doc_id = 'b'"})
    assert hits.status_code == 200 and [h["doc_id"] for h in hits.json()["hits"]] == ["b"]


@pytest.mark.slow
def test_api_error_answers_stay_small(hostile):
    many = hostile.post("/v1/jobs", json={"table": "t", "texts": ["x"] * 50_000})
    assert_422(many, ["body", "texts"])
    wrong = hostile.post("/v1/jobs", json={"table": "t", "texts": [1] * 5_000})
    assert_422(wrong, ["body", "texts"])
    assert wrong.json()["errors_total"] == 5_000 and len(wrong.json()["detail"]) <= 20
    big_query = hostile.post("/v1/tables/t/search", json={"query": "q" * 1_000_000})
    assert_422(big_query, ["body", "query"])
    long_source = hostile.post("/v1/jobs", json={"table": "t", "source": "/" + "a" * 500_000})
    assert_422(long_source, ["body", "source"])
    long_id = hostile.get("/v1/jobs/" + "x" * 12_000)  # under h11's 16 KB head limit
    assert long_id.status_code == 404 and len(long_id.content) < 10_000
