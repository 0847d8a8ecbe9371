"""What went wrong in one upstream attempt, and text about it that is safe to log and show.

Adapters turn every failure into an ``UpstreamAttemptError``: a class that drives retry, failover and
the circuit breaker, plus a message with secrets redacted. The registry decides what to do with it;
``to_client_error`` turns the attempt that is finally reported into the caller-facing domain error.
"""

from __future__ import annotations

import json
import math
import re
import time
from collections.abc import Iterable, Mapping
from email.utils import parsedate_to_datetime
from enum import StrEnum
from typing import Any

from palyra.errors import InvalidRequest, PalyraError, UpstreamFailed, UpstreamTimeout

REDACTED = "<redacted>"
_MIN_KNOWN_SECRET_LEN = 4
_MAX_JSON_BODY_CHARS = 65_536

# Control characters (CR, LF, TAB among them) would forge log lines or break headers.
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_SPACES = re.compile(r"\s+")

_AUTH_SCHEME = re.compile(
    r"\b(bearer)\s+[^\s\"',;)\]}]+|\b(basic)\s+(?=[A-Za-z0-9+/]*[0-9+/=])[A-Za-z0-9+/]{8,}=*(?![^\s\"',;)\]}])",
    re.IGNORECASE,
)
# A key name ending in api_key/token/secret/password, then '=' or ':', then a quoted or bare value.
_KEY_VALUE = re.compile(
    r"(?P<key>[\w-]*(?:(?:api|secret|access|private)[_-]?key|token|secret|password|passwd))"
    r"(?P<sep>[\"']?\s*[=:]\s*)"
    r"(?:\"(?:[^\"\\]|\\.)*\"|'(?:[^'\\]|\\.)*'|[^\s&,;\"')\]}]+)",
    re.IGNORECASE,
)
_TOKEN_SHAPES = re.compile(
    r"(?<![A-Za-z0-9])sk-[A-Za-z0-9_-]{8,}"  # OpenAI, Anthropic (sk-ant-), project keys (sk-proj-)
    r"|palyra_[A-Za-z0-9_-]+"  # Palyra's own API and admin tokens
    r"|\bAIza[A-Za-z0-9_-]{20,}"  # Google API keys
    r"|\beyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]*",  # JWTs (OAuth access tokens)
    re.IGNORECASE,
)

_CONTEXT_WORDS = (
    "context_length",
    "context length",
    "maximum context",
    "context window",
    "context limit",
    "too many tokens",
    "prompt is too long",
    "input is too long",
)
_POLICY_WORDS = (
    "content_policy",
    "content policy",
    "content_filter",
    "content filter",
    "content management policy",
    "usage policies",
    "usage policy",
    "safety",
    "moderation",
    "flagged",
)
_QUOTA_WORDS = ("insufficient_quota", "quota", "billing", "credit")
_TRANSIENT_STATUSES = frozenset({408, 409, 421, 423, 425})


class FailureClass(StrEnum):
    AUTH_INVALID = "auth_invalid"
    PERMISSION_DENIED = "permission_denied"
    RATE_LIMITED = "rate_limited"
    QUOTA_EXCEEDED = "quota_exceeded"
    CONTEXT_WINDOW_EXCEEDED = "context_window_exceeded"
    CONTENT_POLICY = "content_policy"
    TRANSIENT = "transient"
    TIMEOUT = "timeout"
    MALFORMED = "malformed"
    INVALID_REQUEST = "invalid_request"
    """The caller's request is at fault (e.g. a bad parameter); it would fail at any provider."""
    NOT_FOUND = "not_found"
    """The upstream does not know the model or endpoint; another provider may."""


# The same request fails anywhere for these, so failing over only spends money and time.
_NOT_FAILOVER = frozenset(
    {FailureClass.INVALID_REQUEST, FailureClass.CONTEXT_WINDOW_EXCEEDED, FailureClass.CONTENT_POLICY}
)
_RETRYABLE = frozenset({FailureClass.RATE_LIMITED, FailureClass.TRANSIENT, FailureClass.TIMEOUT})


class UpstreamAttemptError(Exception):
    """One failed attempt at one provider. ``message`` is already sanitised."""

    def __init__(
        self,
        *,
        failure_class: FailureClass,
        status: int | None,
        message: str,
        retryable: bool,
        retry_after_s: float | None,
        failover_eligible: bool,
        provider_id: str,
    ) -> None:
        super().__init__(message)
        self.failure_class = failure_class
        self.status = status
        self.message = message
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        self.failover_eligible = failover_eligible
        self.provider_id = provider_id

    def __repr__(self) -> str:
        return (
            f"UpstreamAttemptError(provider_id={self.provider_id!r}, "
            f"failure_class={self.failure_class.value!r}, status={self.status!r}, "
            f"retryable={self.retryable!r}, "
            f"failover_eligible={self.failover_eligible!r}, retry_after_s={self.retry_after_s!r}, "
            f"message={self.message!r})"
        )


def sanitize_remote_error(text: str, limit: int = 240, *, secrets: Iterable[str] = ()) -> str:
    """One line of at most ``limit`` characters (plus "…") with credentials redacted.

    Redaction runs before truncation so a secret cut in half by the limit is never half-shown.
    ``secrets`` are exact values known to be sensitive (the provider's own key, say).
    """
    text = redact_known(text, secrets)
    text = _SPACES.sub(" ", _CONTROL.sub(" ", text)).strip()
    if not text:
        return "<empty>"
    text = _AUTH_SCHEME.sub(lambda m: f"{m.group(1) or m.group(2)} {REDACTED}", text)
    text = _TOKEN_SHAPES.sub(REDACTED, text)
    text = _KEY_VALUE.sub(_redact_value, text)
    if len(text) > limit:
        # str indexes code points, so this never splits a character's encoding.
        text = text[:limit].rstrip() + "…"
    return text


def redact_known(text: str, secrets: Iterable[str]) -> str:
    """Replace every occurrence of each known secret (of at least 4 characters) with ``<redacted>``."""
    values = sorted({s for s in secrets if len(s) >= _MIN_KNOWN_SECRET_LEN}, key=len, reverse=True)
    if not values:
        return text
    # One alternation, longest first, so a secret that contains another is replaced whole.
    return re.sub("|".join(re.escape(v) for v in values), REDACTED, text)


def parse_retry_after(headers: Mapping[str, str], *, now: float | None = None) -> float | None:
    """Seconds to wait from ``retry-after-ms``, or ``Retry-After`` as seconds or an HTTP-date."""
    lowered = {k.lower(): v for k, v in headers.items() if k.lower() in ("retry-after", "retry-after-ms")}
    ms = _non_negative_float(lowered.get("retry-after-ms"))
    if ms is not None:
        return ms / 1000.0
    value = lowered.get("retry-after")
    if value is None:
        return None
    seconds = _non_negative_float(value)
    if seconds is not None:
        return seconds
    try:
        when = parsedate_to_datetime(value.strip())
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        return None  # HTTP-dates are GMT; one without a zone is not an HTTP-date
    current = time.time() if now is None else now
    return max(0.0, when.timestamp() - current)


def classify_http(
    status: int,
    body_text: str,
    headers: Mapping[str, str],
    provider_id: str,
    *,
    secrets: Iterable[str] = (),
    in_stream: bool = False,
) -> UpstreamAttemptError:
    """Classify a non-2xx upstream response, or an error sent inside a stream as the status it stands
    for (``in_stream``). ``secrets`` are redacted from the message."""
    failure_class = _classify_status(status, body_text.lower())
    detail = _error_message(body_text)
    shown = sanitize_remote_error(detail if detail is not None else body_text, secrets=secrets)
    where = "sent an error in the stream" if in_stream else f"returned HTTP {status}"
    return _error(
        failure_class,
        provider_id,
        f"{provider_id} {where}: {shown}",
        status=status,
        retry_after_s=parse_retry_after(headers),
    )


def timeout_error(provider_id: str, phase: str) -> UpstreamAttemptError:
    return _error(FailureClass.TIMEOUT, provider_id, f"{provider_id} timed out during {phase}")


def connection_error(
    provider_id: str, exc: BaseException, *, secrets: Iterable[str] = ()
) -> UpstreamAttemptError:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return _error(
        FailureClass.TRANSIENT,
        provider_id,
        f"{provider_id} could not be reached: {sanitize_remote_error(text, secrets=secrets)}",
    )


def malformed_error(provider_id: str, detail: str) -> UpstreamAttemptError:
    return _error(
        FailureClass.MALFORMED,
        provider_id,
        f"{provider_id} returned a malformed response: {sanitize_remote_error(detail)}",
    )


def not_an_event_stream(provider_id: str, content_type: str) -> UpstreamAttemptError:
    """A stream request answered 200 with no server-sent event at all (an HTML page, a JSON body)."""
    return malformed_error(
        provider_id, f"a stream request was answered with {content_type or 'no content type'}"
    )


def to_client_error(err: UpstreamAttemptError) -> PalyraError:
    """The caller-facing error for the attempt the registry finally reports (INTERFACE §4.1)."""
    match err.failure_class:
        case FailureClass.TIMEOUT:
            return UpstreamTimeout(err.message, retry_after_s=err.retry_after_s)
        case FailureClass.CONTEXT_WINDOW_EXCEEDED:
            return InvalidRequest(err.message, code="context_length_exceeded")
        case FailureClass.CONTENT_POLICY:
            return InvalidRequest(err.message, code="content_policy_violation")
        case FailureClass.INVALID_REQUEST:
            return InvalidRequest(err.message, code="upstream_invalid_request")
        case _:
            return UpstreamFailed(err.message, code=err.failure_class.value, retry_after_s=err.retry_after_s)


def _classify_status(status: int, body: str) -> FailureClass:
    def mentions(words: tuple[str, ...]) -> bool:
        return any(w in body for w in words)

    if status == 401:
        return FailureClass.AUTH_INVALID
    if status == 402:
        return FailureClass.QUOTA_EXCEEDED
    if status == 429:
        # "Rate limit" bodies often mention quota too (per-minute quotas); only this code means money.
        return FailureClass.QUOTA_EXCEEDED if "insufficient_quota" in body else FailureClass.RATE_LIMITED
    if status == 403:
        if mentions(_POLICY_WORDS):
            return FailureClass.CONTENT_POLICY
        if mentions(_QUOTA_WORDS):
            return FailureClass.QUOTA_EXCEEDED
        return FailureClass.PERMISSION_DENIED
    if status in (400, 413, 422):
        if mentions(_CONTEXT_WORDS):
            return FailureClass.CONTEXT_WINDOW_EXCEEDED
        if mentions(_POLICY_WORDS):
            return FailureClass.CONTENT_POLICY
        if mentions(_QUOTA_WORDS):
            # Anthropic answers 400 "credit balance is too low"; the account, not the request, is at fault.
            return FailureClass.QUOTA_EXCEEDED
        return FailureClass.INVALID_REQUEST
    if status in (404, 405, 410):
        return FailureClass.NOT_FOUND
    if status == 451:
        return FailureClass.PERMISSION_DENIED
    if status in _TRANSIENT_STATUSES or status >= 500:
        return FailureClass.TRANSIENT
    # Any other 4xx (or a redirect, which is never followed) means this upstream does not speak the
    # protocol the adapter expects: not the caller's fault, and not worth repeating.
    return FailureClass.MALFORMED


def _error(
    failure_class: FailureClass,
    provider_id: str,
    message: str,
    *,
    status: int | None = None,
    retry_after_s: float | None = None,
) -> UpstreamAttemptError:
    return UpstreamAttemptError(
        failure_class=failure_class,
        status=status,
        message=message,
        retryable=failure_class in _RETRYABLE,
        retry_after_s=retry_after_s,
        failover_eligible=failure_class not in _NOT_FAILOVER,
        provider_id=provider_id,
    )


def _error_message(body_text: str) -> str | None:
    """The message field of an OpenAI-, Anthropic- or Ollama-style error body, if there is one."""
    if len(body_text) > _MAX_JSON_BODY_CHARS:
        return None
    try:
        data: Any = json.loads(body_text)
    except ValueError:
        return None
    if isinstance(data, list) and data:
        data = data[0]  # Gemini's OpenAI-compatible endpoint wraps the error in a list
    if not isinstance(data, dict):
        return None
    error = data.get("error")
    if isinstance(error, dict) and isinstance(error.get("message"), str):
        return str(error["message"])
    if isinstance(error, str):
        return error
    for key in ("message", "detail"):
        if isinstance(data.get(key), str):
            return str(data[key])
    return None


def _non_negative_float(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        number = float(value.strip())
    except ValueError:
        return None
    if not math.isfinite(number) or number < 0:
        return None
    return number


def _redact_value(m: re.Match[str]) -> str:
    value = m.group(0)[m.end("sep") - m.start() :]
    quote = value[0] if value[:1] in ("'", '"') else ""
    return f"{m.group('key')}{m.group('sep')}{quote}{REDACTED}{quote}"
