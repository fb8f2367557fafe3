"""The service's doors on a real server: bad keys cost no store read, a key-guessing address is
stopped before the store, keys and sizes are checked before a body is read, a tenant's reads
are limited by its tier (a page of jobs costing by its size), /metrics is made at most once a
second, and the caps on texts, `k` and page size are 4xx naming the field.

Floods come from their own loopback addresses (127.0.0.x), so that the allowance of requests
without a valid key of the other tests' address (127.0.0.1) is not spent here.
"""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from embedscale.api.settings import DEFAULT_MAX_REQUEST_BYTES, Settings
from tests.api_server import metrics_text

pytestmark = pytest.mark.slow


def client_from(server, address: str, key: str | None = None) -> httpx.Client:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    return httpx.Client(
        base_url=server.url,
        headers=headers,
        timeout=30,
        transport=httpx.HTTPTransport(local_address=address),
    )


def key_of(client: httpx.Client) -> str:
    return client.headers["authorization"].removeprefix("Bearer ")


def samples(server) -> dict:
    return {
        (s.name, tuple(sorted(s.labels.items()))): s.value
        for family in text_string_to_metric_families(metrics_text(server.url))
        for s in family.samples
    }


def raw_request(
    server, head: list[str], body: bytes = b"", address: str = "127.0.0.1"
) -> tuple[int, dict]:
    """Send a request's head and `body` (which may be short of its Content-Length: the answer
    must come without the rest), and read the answer: its status and JSON body."""
    with socket.create_connection(
        ("127.0.0.1", server.port), timeout=10, source_address=(address, 0)
    ) as sock:
        sock.sendall(("\r\n".join(head) + "\r\n\r\n").encode() + body)
        data = b""
        while b"\r\n\r\n" not in data:
            data += sock.recv(65536) or b"!"  # a closed socket ends the head
        head_bytes, _, rest = data.partition(b"\r\n\r\n")
        lines = head_bytes.decode("latin-1").split("\r\n")
        headers = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
        while len(rest) < int(headers.get("content-length", 0)):
            chunk = sock.recv(65536)
            if not chunk:
                break
            rest += chunk
    return int(lines[0].split()[1]), json.loads(rest)


def post_head(server, path: str, key: str | None, *extra: str) -> list[str]:
    head = [
        f"POST {path} HTTP/1.1",
        f"Host: 127.0.0.1:{server.port}",
        "Content-Type: application/json",
        *extra,
    ]
    return head + ([f"Authorization: Bearer {key}"] if key else [])


def test_bad_keys_cost_one_store_read_and_a_guessing_address_is_stopped(server):
    tenant = server.tenant("door-keys")
    assert tenant.get("/v1/usage").status_code == 200  # its key found once, and kept
    budget = Settings().unauthenticated_per_minute
    before = samples(server)
    with client_from(server, "127.0.0.3", "es_the-same-wrong-key") as looping:
        for _ in range(30):
            refused = looping.get("/v1/jobs")
            assert refused.status_code == 401 and refused.json() == {"detail": "invalid API key"}
        openai_shaped = looping.post("/v1/embeddings", json={"input": "x"})
        assert openai_shaped.status_code == 401
        assert openai_shaped.json()["error"]["code"] == "invalid_api_key"
    with client_from(server, "127.0.0.4") as guessing:
        # The address's bucket holds `budget` and refills at budget/60 a second while the
        # guesses are made (slowly, on a busy machine): it stops the guesser once it has let
        # through its budget and what refilled meanwhile, no sooner and no later.
        started, guesses = time.monotonic(), 0
        while (
            guessing.get(
                "/v1/jobs", headers={"Authorization": f"Bearer es_guess-{guesses}"}
            ).status_code
            == 401
        ):
            guesses += 1
            assert guesses <= budget + budget * (time.monotonic() - started) / 60 + 1
        assert guesses >= budget
        # On a busy machine a request may come a refill later (budget/60 a second): that
        # token lets one more request through (a 401, counted below), and the next is stopped.
        refilled = 0
        for headers in ({"Authorization": "Bearer es_guess-one-more"}, {}):
            stopped = guessing.get("/v1/usage", headers=headers)
            if stopped.status_code == 401:
                refilled += bool(headers)  # a guess looked up; a missing key is not
                stopped = guessing.get("/v1/usage", headers=headers)
            assert stopped.status_code == 429 and int(stopped.headers["Retry-After"]) >= 1
            assert stopped.json()["detail"].startswith(
                f"client 127.0.0.4 is over its rate limit for requests without a valid key "
                f"({budget} a minute)"
            )
        # A tenant behind the same address is not locked out with the guesser.
        assert (
            guessing.get(
                "/v1/usage", headers={"Authorization": f"Bearer {key_of(tenant)}"}
            ).status_code
            == 200
        )
    assert (
        httpx.get(
            f"{server.url}/v1/jobs",
            headers={  # other addresses: as before
                "Authorization": "Bearer es_elsewhere"
            },
        ).status_code
        == 401
    )
    after = samples(server)

    def delta(name: str, **labels: str) -> float:
        key = (name, tuple(sorted(labels.items())))
        return after.get(key, 0) - before.get(key, 0)

    # One read for the repeated key, one per distinct guess until the address was stopped,
    # one for the other address's: none for the repeats, the stopped guesses or valid keys.
    # The guess the bucket stopped, and the two requests after it, are the address's refusals.
    assert delta("embedscale_api_key_lookups_total", answered_by="store") == guesses + 2 + refilled
    assert delta("embedscale_gate_refusals_total", reason="address_rate_limited") == 3
    assert delta("embedscale_gate_refusals_total", reason="invalid_key") == guesses + 32 + refilled


def test_metrics_are_made_at_most_once_a_second(server):
    # Each /metrics request is counted in the page itself (request latency by route): pages
    # made for each request would all differ.
    with client_from(server, "127.0.0.5") as scraper:
        pages = {scraper.get("/metrics").text for _ in range(20)}
    assert len(pages) <= 3
    assert all("embedscale_jobs" in page for page in pages)


def test_the_key_the_allowance_and_the_size_come_before_the_body(server):
    tenant = server.tenant("door-bodies")
    huge = "Content-Length: 1073741824"  # announced, never sent: answers must not wait for it
    assert raw_request(
        server, post_head(server, "/v1/jobs", "es_wrong", huge), address="127.0.0.6"
    ) == (401, {"detail": "invalid API key"})
    status, answer = raw_request(server, post_head(server, "/v1/jobs", key_of(tenant), huge))
    assert status == 413
    assert answer["detail"].startswith(
        "the request body of 1073741824 bytes is over the limit "
        f"of {DEFAULT_MAX_REQUEST_BYTES} bytes (16 MiB, "
        "max_request_bytes)"
    )
    # Without a Content-Length, the body is counted as it comes.
    chunk = b"x" * (1 << 20)
    body = b"".join(
        b"%x\r\n%s\r\n" % (len(chunk), chunk)
        for _ in range(DEFAULT_MAX_REQUEST_BYTES // len(chunk) + 1)
    )
    status, answer = raw_request(
        server, post_head(server, "/v1/jobs", key_of(tenant), "Transfer-Encoding: chunked"), body
    )
    assert status == 413 and "is over the limit of" in answer["detail"]
    # A tenant out of job creations is refused before its body is read.
    limited = server.tenant("door-submitter", tier="limited")  # 2 job creations a minute
    for _ in range(2):
        assert limited.post("/v1/jobs", json={"table": "t", "texts": ["x"]}).status_code == 201
    status, answer = raw_request(
        server, post_head(server, "/v1/jobs", key_of(limited), "Content-Length: 100000")
    )
    assert status == 429 and "job creation (2 a minute)" in answer["detail"]


def test_reads_are_limited_by_tier_and_a_page_costs_by_its_size(server):
    reader = server.tenant("door-reader", tier="limited")  # reads: 10 x 2 a minute
    over = reader.get("/v1/jobs", params={"limit": 101})
    assert over.status_code == 422
    assert over.json()["detail"][0]["loc"] == ["query", "limit"]
    assert "over the most a page holds (100)" in over.json()["detail"][0]["msg"]
    for _ in range(2):  # 10 reads each
        assert reader.get("/v1/jobs", params={"limit": 100}).status_code == 200
    refused = reader.get("/v1/usage")
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert refused.json()["detail"].startswith(
        "tenant 'door-reader' is over its rate limit for reads (20 a minute)"
    )
    other = server.tenant("door-neighbour")
    assert other.get("/v1/usage").status_code == 200  # another tenant's allowance is its own


def test_texts_and_k_have_caps_named_in_the_answer(server):
    client = server.tenant("door-caps")
    many = client.post("/v1/jobs", json={"table": "t", "texts": ["x"] * 10_001})
    assert many.status_code == 422 and many.json()["detail"][0]["loc"] == ["body", "texts"]
    assert "at most 10000" in many.json()["detail"][0]["msg"]
    deep = client.post("/v1/tables/t/search", json={"query": "q", "k": 1001})
    assert deep.status_code == 422 and deep.json()["detail"][0]["loc"] == ["body", "k"]
