"""Schemathesis against the admin API's own OpenAPI document (/api/v1/openapi.json), admin token in hand.

Every operation the document lists is called with generated requests, valid and invalid, against a
daemon of its own (the calls create tokens, budgets, profiles and run jobs). Whatever it sends, the
answer must not be a 5xx, must be what the document promises when it promises anything, and must
leak no internals.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis import APIOperation, GenerationMode
from schemathesis.checks import content_type_conformance, not_a_server_error, response_schema_conformance

from conftest import Daemon, start_daemon
from leaks import assert_no_internals

EXAMPLES_PER_OPERATION = 25
# One answer must come within this, however odd the request.
RESPONSE_BOUND_S = 5.0


@pytest.fixture(scope="module")
def admin_daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("schemathesis"))
    yield d
    d.stop()


def check_operation(operation: APIOperation, daemon: Daemon) -> None:
    """Run the generated cases of one operation; hypothesis raises the first failure, shrunk."""
    auth = {"Authorization": f"Bearer {daemon.admin_token}"}

    cases = operation.as_strategy(GenerationMode.POSITIVE) | operation.as_strategy(GenerationMode.NEGATIVE)

    @given(case=cases)
    @settings(
        max_examples=EXAMPLES_PER_OPERATION,
        deadline=None,
        database=None,
        suppress_health_check=list(HealthCheck),
    )
    def run(case: schemathesis.Case) -> None:
        started = time.monotonic()
        response = case.call(headers=auth, timeout=10)
        took = time.monotonic() - started
        assert took < RESPONSE_BOUND_S, f"{case.method} {case.formatted_path} took {took:.1f} s"
        case.validate_response(
            response, checks=[not_a_server_error, response_schema_conformance, content_type_conformance]
        )
        assert_no_internals(response.text)

    run()


def test_admin_api_conforms_and_never_fails(admin_daemon: Daemon) -> None:
    schema = schemathesis.openapi.from_url(admin_daemon.base_url + "/api/v1/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    assert len(operations) > 40, "the document should list every admin operation"
    failures: list[str] = []
    for operation in operations:
        try:
            check_operation(operation, admin_daemon)
        except (Exception, BaseExceptionGroup) as exc:  # every operation runs; failures reported together
            failures.append(f"{operation.label}: {type(exc).__name__}: {str(exc)[:2000]}")
    assert not failures, "\n\n".join(failures)
    assert admin_daemon.proc.poll() is None, "the daemon died under the fuzzer"
