"""Upstream failure classification, Retry-After parsing, redaction, and the client-facing mapping."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from email.utils import format_datetime

import pytest

from palyra import errors
from palyra.providers.failures import (
    FailureClass,
    UpstreamAttemptError,
    classify_http,
    connection_error,
    malformed_error,
    parse_retry_after,
    redact_known,
    sanitize_remote_error,
    timeout_error,
    to_client_error,
)

F = FailureClass


def openai_body(message: str, type_: str = "invalid_request_error", code: str | None = None) -> str:
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}})


def anthropic_body(message: str, type_: str = "invalid_request_error") -> str:
    return json.dumps({"type": "error", "error": {"type": type_, "message": message}})


# --- classification ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("status", "body", "expected", "retryable", "failover"),
    [
        (401, openai_body("Incorrect API key provided"), F.AUTH_INVALID, False, True),
        (401, anthropic_body("invalid x-api-key", "authentication_error"), F.AUTH_INVALID, False, True),
        (403, openai_body("Project does not have access to model gpt-4o"), F.PERMISSION_DENIED, False, True),
        (403, openai_body("Request blocked by safety system"), F.CONTENT_POLICY, False, False),
        (403, openai_body("This API requires billing to be enabled"), F.QUOTA_EXCEEDED, False, True),
        (402, "payment required", F.QUOTA_EXCEEDED, False, True),
        (
            429,
            openai_body("You exceeded your current quota", "insufficient_quota", "insufficient_quota"),
            F.QUOTA_EXCEEDED,
            False,
            True,
        ),
        (
            429,
            openai_body("Rate limit reached for gpt-4o", "tokens", "rate_limit_exceeded"),
            F.RATE_LIMITED,
            True,
            True,
        ),
        (429, "Quota exceeded for quota metric requests per minute", F.RATE_LIMITED, True, True),
        (429, "rate limit exceeded", F.RATE_LIMITED, True, True),
        (
            400,
            openai_body("This model's maximum context length is 8192 tokens", code="context_length_exceeded"),
            F.CONTEXT_WINDOW_EXCEEDED,
            False,
            False,
        ),
        (
            400,
            anthropic_body("prompt is too long: 210000 tokens > 200000 maximum"),
            F.CONTEXT_WINDOW_EXCEEDED,
            False,
            False,
        ),
        (413, "too many tokens in request", F.CONTEXT_WINDOW_EXCEEDED, False, False),
        (422, "input exceeds the context window", F.CONTEXT_WINDOW_EXCEEDED, False, False),
        (400, "safety policy blocked", F.CONTENT_POLICY, False, False),
        (
            400,
            openai_body("Your request was flagged", code="content_policy_violation"),
            F.CONTENT_POLICY,
            False,
            False,
        ),
        (400, "rejected by moderation", F.CONTENT_POLICY, False, False),
        (
            400,
            anthropic_body("Your credit balance is too low to access the Anthropic API"),
            F.QUOTA_EXCEEDED,
            False,
            True,
        ),
        (400, openai_body("Invalid value for 'temperature': must be <= 2"), F.INVALID_REQUEST, False, False),
        (422, json.dumps({"detail": "field required"}), F.INVALID_REQUEST, False, False),
        (413, "request entity too large", F.INVALID_REQUEST, False, False),
        (
            404,
            openai_body("The model `gpt-9` does not exist", code="model_not_found"),
            F.NOT_FOUND,
            False,
            True,
        ),
        (404, "<html>Not Found</html>", F.NOT_FOUND, False, True),
        (405, "method not allowed", F.NOT_FOUND, False, True),
        (408, "request timeout", F.TRANSIENT, True, True),
        (409, "conflict", F.TRANSIENT, True, True),
        (500, openai_body("The server had an error", "server_error"), F.TRANSIENT, True, True),
        (502, "bad gateway", F.TRANSIENT, True, True),
        (503, "service unavailable", F.TRANSIENT, True, True),
        (504, "gateway timeout", F.TRANSIENT, True, True),
        (529, anthropic_body("Overloaded", "overloaded_error"), F.TRANSIENT, True, True),
        (500, "context_length mentioned in a crash dump", F.TRANSIENT, True, True),
        (507, "insufficient storage", F.TRANSIENT, True, True),
        (599, "", F.TRANSIENT, True, True),
        (451, "unavailable for legal reasons", F.PERMISSION_DENIED, False, True),
        (415, "unsupported media type", F.MALFORMED, False, True),
        (302, "", F.MALFORMED, False, True),
    ],
)
def test_classification_rules(
    status: int, body: str, expected: FailureClass, retryable: bool, failover: bool
) -> None:
    err = classify_http(status, body, {}, "openai-main")
    assert isinstance(err, UpstreamAttemptError)
    assert (err.failure_class, err.retryable, err.failover_eligible) == (expected, retryable, failover)
    assert err.status == status and err.provider_id == "openai-main"
    assert err.message.startswith(f"openai-main returned HTTP {status}: ")
    assert str(err) == err.message


@pytest.mark.parametrize(
    "failure_class",
    [
        F.RATE_LIMITED,
        F.TRANSIENT,
        F.TIMEOUT,
        F.MALFORMED,
        F.QUOTA_EXCEEDED,
        F.AUTH_INVALID,
        F.PERMISSION_DENIED,
        F.NOT_FOUND,
    ],
)
def test_failover_eligible_classes(failure_class: FailureClass) -> None:
    statuses = {
        F.RATE_LIMITED: 429,
        F.TRANSIENT: 503,
        F.QUOTA_EXCEEDED: 402,
        F.AUTH_INVALID: 401,
        F.PERMISSION_DENIED: 403,
        F.NOT_FOUND: 404,
        F.MALFORMED: 415,
    }
    if failure_class is F.TIMEOUT:
        err = timeout_error("p", "read")
    else:
        err = classify_http(statuses[failure_class], "", {}, "p")
    assert err.failure_class is failure_class and err.failover_eligible


def test_message_extracts_openai_error_message() -> None:
    err = classify_http(400, openai_body("Invalid 'temperature'"), {}, "openai-main")
    assert err.message == "openai-main returned HTTP 400: Invalid 'temperature'"


def test_message_extracts_anthropic_error_message() -> None:
    err = classify_http(529, anthropic_body("Overloaded", "overloaded_error"), {}, "claude")
    assert err.message == "claude returned HTTP 529: Overloaded"


@pytest.mark.parametrize(
    ("body", "shown"),
    [
        (json.dumps({"error": "model 'llama9' not found"}), "model 'llama9' not found"),
        (json.dumps([{"error": {"code": 429, "message": "Resource exhausted"}}]), "Resource exhausted"),
        (json.dumps({"detail": "Not Found"}), "Not Found"),
        (json.dumps({"error": {"code": 500}}), '{"error": {"code": 500}}'),
        ("upstream\r\nconnect error\tor disconnect", "upstream connect error or disconnect"),
        ("", "<empty>"),
        ("   \n  ", "<empty>"),
    ],
)
def test_message_falls_back_to_sanitised_raw_text(body: str, shown: str) -> None:
    assert classify_http(503, body, {}, "p").message == f"p returned HTTP 503: {shown}"


def test_message_is_sanitised_and_bounded() -> None:
    body = openai_body("bad key sk-proj-ABCDEFGHIJKLMNOP1234 " + "x" * 1000)
    err = classify_http(400, body, {}, "p")
    assert "sk-proj-ABCDEFGH" not in err.message and "<redacted>" in err.message
    assert err.message.endswith("…") and len(err.message) <= len("p returned HTTP 400: ") + 241


def test_known_secrets_are_redacted_from_the_message() -> None:
    err = classify_http(
        401, "key my-custom-provider-key-1234 is wrong", {}, "p", secrets=["my-custom-provider-key-1234"]
    )
    assert "my-custom-provider-key-1234" not in err.message and "<redacted>" in err.message


def test_timeout_connection_and_malformed_errors() -> None:
    t = timeout_error("openai-main", "connect")
    assert (t.failure_class, t.retryable, t.failover_eligible, t.status) == (F.TIMEOUT, True, True, None)
    assert "openai-main" in t.message and "connect" in t.message

    c = connection_error(
        "openai-main", ConnectionRefusedError("refused; Authorization: Bearer sk-abcdefghijkl")
    )
    assert (c.failure_class, c.retryable, c.failover_eligible, c.status) == (F.TRANSIENT, True, True, None)
    assert "ConnectionRefusedError" in c.message and "sk-abcdefghijkl" not in c.message
    assert connection_error("p", OSError()).message == "p could not be reached: OSError"

    m = malformed_error("openai-main", "the response has no choices\nat all")
    assert (m.failure_class, m.retryable, m.failover_eligible, m.status) == (F.MALFORMED, False, True, None)
    assert m.message == "openai-main returned a malformed response: the response has no choices at all"


def test_error_is_raisable_and_keyword_constructible() -> None:
    with pytest.raises(UpstreamAttemptError) as info:
        raise UpstreamAttemptError(
            failure_class=F.TRANSIENT,
            status=None,
            message="p closed the stream",
            retryable=True,
            retry_after_s=None,
            failover_eligible=True,
            provider_id="p",
        )
    assert info.value.message == "p closed the stream"
    assert "transient" in repr(info.value)


# --- Retry-After ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({"Retry-After": "7"}, 7.0),
        ({"retry-after": "1.5"}, 1.5),
        ({"RETRY-AFTER": " 0 "}, 0.0),
        ({"retry-after-ms": "250"}, 0.25),
        ({"Retry-After-Ms": "1500", "Retry-After": "2"}, 1.5),
        ({"retry-after-ms": "junk", "retry-after": "3"}, 3.0),
        ({"retry-after": "-5"}, None),
        ({"retry-after": "nan"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": ""}, None),
        ({}, None),
        ({"x-ratelimit-reset-requests": "1s"}, None),
    ],
)
def test_retry_after_seconds_and_ms(headers: dict[str, str], expected: float | None) -> None:
    assert parse_retry_after(headers) == expected


def test_retry_after_http_date() -> None:
    now = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC).timestamp()
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:30 GMT"}, now=now) == 30.0
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 11:00:00 GMT"}, now=now) == 0.0
    assert parse_retry_after({"Retry-After": "Thu, 01 Jan 2026 12:00:30 -0000"}, now=now) is None


def test_retry_after_http_date_against_the_clock() -> None:
    future = datetime.now(UTC).timestamp() + 120
    value = parse_retry_after(
        {"Retry-After": format_datetime(datetime.fromtimestamp(future, UTC), usegmt=True)}
    )
    assert value is not None and 110 <= value <= 120


def test_classify_http_carries_retry_after() -> None:
    assert classify_http(429, "slow down", {"Retry-After": "12"}, "p").retry_after_s == 12.0
    assert classify_http(503, "", {"retry-after-ms": "800"}, "p").retry_after_s == 0.8
    assert classify_http(503, "", {}, "p").retry_after_s is None


# --- sanitize_remote_error and redact_known ------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "canary"),
    [
        ("Authorization: Bearer abc.def-ghi_jkl", "abc.def-ghi_jkl"),
        ("bearer ya29.a0AfH6SMBx", "ya29.a0AfH6SMBx"),
        ("Basic dXNlcjpwYXNzd29yZA==", "dXNlcjpwYXNzd29yZA"),
        ("bad key sk-abcdefgh12345678", "abcdefgh12345678"),
        ("bad key SK-ABCDEFGH12345678", "ABCDEFGH12345678"),
        ("key sk-ant-api03-Zx9_abcdefghijklmnop", "api03-Zx9_abcdefghijklmnop"),
        ("key=sk-proj-CANARYcanary1234567890", "CANARYcanary1234567890"),
        ("caller palyra_CANARYtoken_abc-123 rejected", "CANARYtoken_abc-123"),
        ("admin palyra_admin_Zm9vYmFy", "Zm9vYmFy"),
        ("url?api_key=hunter2hunter2&x=1", "hunter2hunter2"),
        ("url?apikey=hunter2hunter2", "hunter2hunter2"),
        ("API_KEY = hunter2hunter2", "hunter2hunter2"),
        ("access_token=ya29hunter2;", "ya29hunter2"),
        ("token=t0k3n-value, more", "t0k3n-value"),
        ("client_secret=s3cr3t-value)", "s3cr3t-value"),
        ("password=correct-horse-battery", "correct-horse-battery"),
        ("x-api-key: anthr0pic-key-value", "anthr0pic-key-value"),
        ('{"api_key": "json-secret-value", "n": 1}', "json-secret-value"),
        ('{"refresh_token":"rt with spaces\\" inside"}', "rt with spaces"),
        ("{'password': 'py dict secret'}", "py dict secret"),
        ("key AIzaSyA-CANARY_canary_canary_1234567", "CANARY_canary"),
        ("jwt eyJhbGciOiJSUzI1NiJ9.eyJzdWIiOiIxMjM0NTY3ODkwIn0.c2lnbmF0dXJl", "eyJzdWIiOiIxMjM0NTY3ODkwIn0"),
    ],
)
def test_secret_patterns_are_redacted(text: str, canary: str) -> None:
    out = sanitize_remote_error(text)
    assert canary not in out
    assert "<redacted>" in out


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("Authorization: Bearer abc123", "Authorization: Bearer <redacted>"),
        ("api_key=abc123&model=x", "api_key=<redacted>&model=x"),
        ("x-api-key: abc123 rest", "x-api-key: <redacted> rest"),
        ('{"api_key": "abc123"}', '{"api_key": "<redacted>"}'),
        ("token='abc 123'", "token='<redacted>'"),
        ("key sk-proj-abcdefgh1234 end", "key <redacted> end"),
        ("max_tokens=5 is invalid", "max_tokens=5 is invalid"),
        ("task-12345678 and basic tier", "task-12345678 and basic tier"),
        ("  a\r\n\tb   c  ", "a b c"),
        ("nul\x00and\x1bescape", "nul and escape"),
        ("", "<empty>"),
        ("\r\n\t", "<empty>"),
    ],
)
def test_sanitize_exact_output(text: str, expected: str) -> None:
    assert sanitize_remote_error(text) == expected


def test_canaries_never_survive_even_at_the_truncation_boundary() -> None:
    canaries = ["sk-proj-CANARY0123456789abcdef", "Bearer CANARYbearer0123", "palyra_CANARYpalyra0123"]
    for offset in range(200, 260):
        for canary in canaries:
            out = sanitize_remote_error("x" * offset + " " + canary + " tail")
            assert "CANARY" not in out


def test_truncates_multibyte_text_by_characters() -> None:  # reference test 34
    out = sanitize_remote_error("é" * 300)
    assert out == "é" * 240 + "…"
    assert len(out) == 241
    out.encode("utf-8")  # whole characters only


def test_truncation_limit_is_configurable_and_short_text_is_untouched() -> None:
    assert sanitize_remote_error("abcdef", limit=3) == "abc…"
    assert sanitize_remote_error("a" * 240) == "a" * 240
    assert sanitize_remote_error("🙂" * 10, limit=4) == "🙂" * 4 + "…"


def test_redact_known() -> None:
    assert redact_known("key abcd and abcdef", ["abcdef", "abcd"]) == "key <redacted> and <redacted>"
    assert redact_known("a.b*c literal", ["a.b*c"]) == "<redacted> literal"
    assert redact_known("short abc stays", ["abc", ""]) == "short abc stays"
    assert redact_known("nothing", []) == "nothing"


def test_sanitize_redacts_known_secrets_before_truncating() -> None:
    secret = "custom-provider-key-0123456789"
    out = sanitize_remote_error("x" * 230 + " " + secret, secrets=[secret])
    assert "custom-provider" not in out and "custom" not in out


# --- to_client_error -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("err", "cls", "status", "type_", "code"),
    [
        (timeout_error("p", "read"), errors.UpstreamTimeout, 504, "upstream_error", "upstream_timeout"),
        (
            classify_http(400, "maximum context length exceeded", {}, "p"),
            errors.InvalidRequest,
            400,
            "invalid_request_error",
            "context_length_exceeded",
        ),
        (
            classify_http(400, "flagged by moderation", {}, "p"),
            errors.InvalidRequest,
            400,
            "invalid_request_error",
            "content_policy_violation",
        ),
        (
            classify_http(400, "unknown parameter foo", {}, "p"),
            errors.InvalidRequest,
            400,
            "invalid_request_error",
            "upstream_invalid_request",
        ),
        (classify_http(429, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "rate_limited"),
        (classify_http(402, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "quota_exceeded"),
        (classify_http(401, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "auth_invalid"),
        (classify_http(403, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "permission_denied"),
        (classify_http(404, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "not_found"),
        (classify_http(503, "", {}, "p"), errors.UpstreamFailed, 502, "upstream_error", "transient"),
        (malformed_error("p", "junk"), errors.UpstreamFailed, 502, "upstream_error", "malformed"),
    ],
)
def test_client_error_mapping(
    err: UpstreamAttemptError, cls: type[errors.PalyraError], status: int, type_: str, code: str
) -> None:
    out = to_client_error(err)
    assert type(out) is cls
    assert (out.status, out.type, out.code) == (status, type_, code)
    assert out.message == err.message


def test_client_error_carries_retry_after() -> None:
    out = to_client_error(classify_http(429, "slow", {"retry-after": "9"}, "p"))
    assert out.retry_after_s == 9.0
    assert to_client_error(classify_http(503, "", {}, "p")).retry_after_s is None
