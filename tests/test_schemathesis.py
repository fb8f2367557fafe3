"""Schemathesis, a real OpenAPI fuzzer, against the running app: no input yields a 5xx.

Driven through schemathesis's Python API (each operation's Hypothesis strategy) rather than its
pytest plugin, whose `from_fixture` integration fails on pytest 9 (`Function._nodeid`).
"""
from __future__ import annotations

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from tests.api_server import ADMIN_KEY

pytestmark = pytest.mark.slow
MAX_EXAMPLES = 30  # per operation: bounded, so the suite stays short


def test_no_input_makes_the_server_fail(server):
    schema = schemathesis.openapi.from_url(f"{server.url}/openapi.json")
    tenant = server.tenant("fuzzer", tier="enterprise")
    headers = {"tenant": {"Authorization": tenant.headers["authorization"]},
               "admin": {"Authorization": f"Bearer {ADMIN_KEY}"}}
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) >= 14
    calls = []

    def fuzz(operation, auth: dict[str, str]) -> None:
        @given(case=operation.as_strategy())
        @settings(max_examples=MAX_EXAMPLES, deadline=None, database=None,
                  suppress_health_check=list(HealthCheck))
        def run(case) -> None:
            response = case.call_and_validate(base_url=server.url, headers=auth,
                                              checks=[not_a_server_error])
            calls.append((operation.method.upper(), operation.path, response.status_code))

        run()

    for operation in operations:
        fuzz(operation, headers["admin" if operation.path.startswith("/v1/tenants")
                                else "tenant"])
    assert len(calls) >= len(operations)
    assert all(code < 500 for _, _, code in calls)
    # Every operation was reached with the right credentials (not only refused at the door).
    reached = {(method, path) for method, path, code in calls if code != 401}
    assert reached == {(op.method.upper(), op.path) for op in operations}
