"""POST /v1/embeddings against the real server, with the official `openai` package as the client
(unchanged), checked against plain sentence-transformers on the same texts."""

from __future__ import annotations

import base64
import threading
from concurrent.futures import ThreadPoolExecutor

import httpx
import numpy as np
import openai
import pytest
from openai import OpenAI
from prometheus_client.parser import text_string_to_metric_families

from tests.api_server import ADMIN_KEY, metrics_text

pytestmark = pytest.mark.slow
MODEL = "all-MiniLM-L6-v2"
DIM = 384


def tenant_key(server, name: str, tier: str = "premium") -> str:
    return server.tenant(name, tier).headers["authorization"].split()[1]


def client_for(server, key: str, **options) -> OpenAI:
    return OpenAI(base_url=server.url + "/v1", api_key=key, **options)


def usage(server, key: str) -> dict:
    return httpx.get(
        f"{server.url}/v1/usage", headers={"Authorization": f"Bearer {key}"}, timeout=30
    ).json()


def tokens(st_model, texts: list[str]) -> int:
    """What the model reads for `texts`: its own tokenizer, special tokens included."""
    return sum(len(ids) for ids in st_model.tokenizer(texts)["input_ids"])


def assert_same_vectors(got: list[list[float]], st_model, texts: list[str]) -> None:
    got = np.asarray(got, dtype=np.float32)
    want = st_model.encode(texts, convert_to_numpy=True)
    assert got.shape == want.shape == (len(texts), DIM)
    cosine = (got * want).sum(1) / np.linalg.norm(got, axis=1) / np.linalg.norm(want, axis=1)
    assert cosine.min() >= 0.9999, cosine


def test_string_list_and_base64_match_sentence_transformers(server, st_model):
    key = tenant_key(server, "oai-basic")
    client = client_for(server, key)
    one = "Dask schedules tasks on a cluster of workers."
    # The client asks for base64 by default and decodes it: float32 little-endian bytes.
    answer = client.embeddings.create(model=MODEL, input=one)
    assert answer.object == "list" and answer.model == MODEL
    assert [(d.object, d.index) for d in answer.data] == [("embedding", 0)]
    assert_same_vectors([answer.data[0].embedding], st_model, [one])
    assert answer.usage.prompt_tokens == answer.usage.total_tokens == tokens(st_model, [one])

    texts = [
        "LanceDB stores vectors in fragments.",
        "DuckDB keeps the job ledger.",
        "Quotas are charged per chunk; 日本語のテキストも埋め込める。",
    ]
    floats = client.embeddings.create(model=MODEL, input=texts, encoding_format="float")
    assert [d.index for d in floats.data] == [0, 1, 2]
    assert all(isinstance(x, float) for x in floats.data[0].embedding)
    assert_same_vectors([d.embedding for d in floats.data], st_model, texts)
    assert floats.usage.prompt_tokens == tokens(st_model, texts)

    raw = client.embeddings.create(model=MODEL, input=texts, encoding_format="base64")
    decoded = [
        np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") for d in raw.data
    ]  # asked for explicitly, the client hands the string over
    np.testing.assert_allclose(decoded, [d.embedding for d in floats.data], atol=1e-6)
    same = client.embeddings.create(
        model="sentence-transformers/all-MiniLM-L6-v2", input=one, dimensions=DIM
    )  # an alias, the model's own dim
    assert same.model == MODEL and len(same.data[0].embedding) == DIM

    used = usage(server, key)
    assert used["used_chunks"] == 1 + 3 + 3 + 1  # one chunk per input
    assert used["used_tokens"] == 2 * tokens(st_model, [one]) + 2 * tokens(st_model, texts)


def status_error(call) -> openai.APIStatusError:
    with pytest.raises(openai.APIStatusError) as caught:
        call()
    return caught.value


def test_bad_requests_are_openai_errors_naming_the_field(server):
    key = tenant_key(server, "oai-bad")
    client = client_for(server, key, max_retries=0)

    def create(**fields):
        return lambda: client.embeddings.create(**{"model": MODEL, "input": "x", **fields})

    bad_key = status_error(
        lambda: client_for(server, "not-a-key", max_retries=0).embeddings.create(
            model=MODEL, input="x"
        )
    )
    assert isinstance(bad_key, openai.AuthenticationError) and bad_key.status_code == 401
    assert bad_key.code == "invalid_api_key" and "invalid API key" in bad_key.message

    for model in ("no-such-model", "/etc", "BAAI/bge-small-en-v1.5"):  # never loaded
        err = status_error(create(model=model))
        assert isinstance(err, openai.NotFoundError), err
        assert (err.param, err.code) == ("model", "model_not_found")
        assert "not offered by this service" in err.message

    cases = {
        "empty string": (dict(input=""), "input", "empty string"),
        "empty list": (dict(input=[]), "input", "empty list"),
        "one empty text": (dict(input=["a", ""]), "input", "input[1] is an empty string"),
        "token ids": (dict(input=[101, 2023, 102]), "input", "token ids are not accepted"),
        "lists of ids": (dict(input=[[101, 102]]), "input", "token ids are not accepted"),
        "other dimensions": (dict(dimensions=128), "dimensions", "384 dimensions only"),
        "too long": (dict(input=["short", "word " * 600]), "input", "input[1] is 602 tokens"),
        "huge": (dict(input=["a", "b" * 20_001]), "input", "input[1] has 20001 characters"),
        "format": (dict(encoding_format="int8"), "encoding_format", "encoding_format"),
    }
    for name, (fields, param, words) in cases.items():
        err = status_error(create(**fields))
        assert isinstance(err, openai.BadRequestError), (name, err)
        assert err.param == param and words in err.message, (name, err.body)
        assert set(err.body) == {"message", "type", "param", "code"}, err.body
        assert err.type == "invalid_request_error"

    # An unknown field is refused, as OpenAI does; a `user` is accepted.
    plain = httpx.post(
        f"{server.url}/v1/embeddings",
        timeout=30,
        headers={"Authorization": f"Bearer {key}"},
        json={"model": MODEL, "input": "x", "user": "u-1", "dimension": 3},
    )
    assert plain.status_code == 400 and plain.json()["error"]["param"] == "dimension"
    # Nothing refused was charged; the rest of the API keeps its own error shape.
    assert usage(server, key)["used_chunks"] == 0
    other = httpx.get(f"{server.url}/v1/jobs/nope", headers={"Authorization": f"Bearer {key}"})
    assert other.status_code == 404 and "detail" in other.json()


def test_quota_and_rate_limit(server):
    key = tenant_key(server, "oai-quota")
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {ADMIN_KEY}"}, timeout=30
    ) as admin:
        assert admin.patch("/v1/tenants/oai-quota", json={"daily_chunks": 5}).status_code == 200
    client = client_for(server, key)  # default retries: the answer must stop them
    assert len(client.embeddings.create(model=MODEL, input=["a", "b", "c", "d"]).data) == 4
    over = status_error(lambda: client.embeddings.create(model=MODEL, input=["e", "f"]))
    assert isinstance(over, openai.RateLimitError) and over.code == "insufficient_quota"
    assert "1 of 5 chunks left" in over.message
    assert over.response.headers["x-should-retry"] == "false"
    assert usage(server, key)["used_chunks"] == 4  # the refused request charged nothing
    assert len(client.embeddings.create(model=MODEL, input="g").data) == 1  # the last one

    limited = client_for(
        server, tenant_key(server, "oai-limited", tier="limited"), max_retries=0
    )  # 2 requests a minute
    for _ in range(2):
        limited.embeddings.create(model=MODEL, input="x")
    err = status_error(lambda: limited.embeddings.create(model=MODEL, input="x"))
    assert isinstance(err, openai.RateLimitError) and err.code == "rate_limit_exceeded"
    assert int(err.response.headers["retry-after"]) >= 1


def model_calls(server) -> dict[str, float]:
    text = metrics_text(server.url)
    return {
        f.name: f.samples[0].value
        for f in text_string_to_metric_families(text)
        if f.name.startswith("embedscale_embedding_")
    }


def test_concurrent_requests_share_model_calls(server, st_model):
    key = tenant_key(server, "oai-many", tier="enterprise")
    client = client_for(server, key)
    rng = np.random.default_rng(7)
    words = [
        "cluster",
        "worker",
        "model",
        "batch",
        "token",
        "vector",
        "table",
        "quota",
        "tenant",
        "chunk",
        "partition",
        "scheduler",
        "commit",
        "fragment",
        "search",
    ]
    requests = [
        [
            " ".join(rng.choice(words, size=int(rng.integers(3, 12))))
            for _ in range(int(rng.integers(1, 9)))
        ]
        for _ in range(48)
    ]
    before = model_calls(server)
    start = threading.Barrier(len(requests))

    def send(texts: list[str]):
        start.wait()
        return client.embeddings.create(model=MODEL, input=texts)

    with ThreadPoolExecutor(len(requests)) as pool:
        answers = list(pool.map(send, requests))
    for texts, answer in zip(requests, answers):
        assert [d.index for d in answer.data] == list(range(len(texts)))
        assert answer.usage.prompt_tokens == tokens(st_model, texts)
    flat = [t for texts in requests for t in texts]
    assert_same_vectors([d.embedding for a in answers for d in a.data], st_model, flat)

    after = model_calls(server)
    sent = after["embedscale_embedding_requests"] - before["embedscale_embedding_requests"]
    inputs = after["embedscale_embedding_inputs"] - before["embedscale_embedding_inputs"]
    calls = after["embedscale_embedding_model_calls"] - before["embedscale_embedding_model_calls"]
    assert (sent, inputs) == (len(requests), len(flat))
    # Two worker threads: at most two tasks in flight, so the others' requests ride together.
    assert calls <= len(requests) / 3, (calls, sent)
    assert usage(server, key)["used_chunks"] == len(flat)
