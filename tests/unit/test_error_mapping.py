"""The error table of INTERFACE §4.1: every domain error maps to one status, type and code.

Rows the deterministic path cannot provoke over HTTP (budget, upstream, circuit) are pinned here; their
end-to-end tests arrive with the governance and provider adapters.
"""

from __future__ import annotations

import orjson
import pytest

from palyra import errors
from palyra.surface.openai_responses import error_body

from openai_schema import validate


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (
            errors.InvalidRequest("bad", code="invalid_value", param="x"),
            400,
            "invalid_request_error",
            "invalid_value",
        ),
        (errors.AuthenticationFailed("no"), 401, "authentication_error", "invalid_api_key"),
        (errors.PermissionDenied("no"), 403, "permission_error", "missing_scope"),
        (errors.PermissionDenied("no", code="agent_forbidden"), 403, "permission_error", "agent_forbidden"),
        (errors.ModelNotFound("no"), 404, "invalid_request_error", "model_not_found"),
        (errors.RequestTooLarge("big"), 413, "invalid_request_error", "request_too_large"),
        (errors.RateLimited("slow", retry_after_s=3), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.BudgetExceeded("policy p"), 429, "insufficient_quota", "budget_exceeded"),
        (errors.UpstreamFailed("up", code="rate_limited"), 502, "upstream_error", "rate_limited"),
        (
            errors.NoHealthyProvider("down", retry_after_s=5),
            503,
            "service_unavailable",
            "no_healthy_provider",
        ),
        (errors.UpstreamTimeout("slow"), 504, "upstream_error", "upstream_timeout"),
    ],
)
def test_error_table(exc: errors.PalyraError, status: int, type_: str, code: str) -> None:
    assert exc.status == status
    body = orjson.loads(error_body(exc))
    validate("ErrorResponse", body)
    assert body["error"]["type"] == type_ and body["error"]["code"] == code
