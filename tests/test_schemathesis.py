"""Schemathesis, a real OpenAPI fuzzer, against the running app: no input yields a 5xx.

Driven through schemathesis's Python API (each operation's Hypothesis strategy) rather than its
pytest plugin, whose `from_fixture` integration fails on pytest 9 (`Function._nodeid`).
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis.checks import not_a_server_error

from tests.api_server import ADMIN_KEY

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 30  # per operation: bounded, so the suite stays short
LONE_SURROGATE = "\ud800"


def poisoned(body: Any, target: int) -> Any:
    """`body` with a lone surrogate put into its `target`-th string (keys and values, in
    order, modulo their number). Schemathesis never generates one (its strings must encode for
    the wire), but JSON can carry "\\ud800" and Python decodes it into a str UTF-8 cannot
    encode; `allow_x00` (on by default) already covers NUL."""
    strings = 0

    def walk(value: Any) -> Any:
        nonlocal strings
        if isinstance(value, str):
            strings += 1
            return value + LONE_SURROGATE if strings - 1 == target else value
        if isinstance(value, list):
            return [walk(v) for v in value]
        if isinstance(value, dict):
            return {walk(k): walk(v) for k, v in value.items()}
        return value

    walk(body)  # count the strings first
    if not strings:
        return body
    target %= strings
    strings = 0
    return walk(body)


def test_no_input_makes_the_server_fail(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    tenant = server.tenant("fuzzer", tier="enterprise")
    headers = {
        "tenant": {"Authorization": tenant.headers["authorization"]},
        "admin": {"Authorization": f"Bearer {ADMIN_KEY}"},
    }
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    calls = []
    bodied, surrogates = set(), set()  # operations sent a JSON body; one with a lone surrogate

    def fuzz(operation, auth: dict[str, str]) -> None:
        @given(case=operation.as_strategy(), poison=st.none() | st.integers(0, 1000))
        @settings(
            max_examples=MAX_EXAMPLES,
            deadline=None,
            database=None,
            suppress_health_check=list(HealthCheck),
        )
        def run(case, poison: int | None) -> None:
            if isinstance(case.body, dict | list):
                bodied.add((operation.method.upper(), operation.path))
            if poison is not None and isinstance(case.body, dict | list):
                # Sent by hand: schemathesis validates a body it sends, and its validator
                # cannot encode the surrogate either. json.dumps writes it as "\ud800".
                response = httpx.request(
                    case.method,
                    server.url + case.formatted_path,
                    params=case.query,
                    headers={**auth, "content-type": "application/json"},
                    content=json.dumps(poisoned(case.body, poison)),
                    timeout=60,
                )
                assert response.status_code < 500, (case.method, case.path, response.text)
                surrogates.add((operation.method.upper(), operation.path))
            else:
                response = case.call_and_validate(
                    base_url=server.url, headers=auth, checks=[not_a_server_error]
                )
            calls.append((operation.method.upper(), operation.path, response.status_code))

        run()

    for operation in operations:
        admin = operation.path.startswith(("/v1/tenants", "/v1/admin/"))
        fuzz(operation, headers["admin" if admin else "tenant"])
    assert len(calls) >= len(operations)
    assert all(code < 500 for _, _, code in calls)
    # Every operation with a JSON body was also sent one with a lone surrogate in a string.
    assert (
        surrogates == bodied
        and {("POST", "/v1/jobs"), ("POST", "/v1/tables/{name}/search")} <= bodied
    ), bodied
    # Every operation was reached with the right credentials (not only refused at the door).
    reached = {(method, path) for method, path, code in calls if code != 401}
    assert reached == {(op.method.upper(), op.path) for op in operations}
