"""Domain errors. Each carries what the HTTP edge needs; the edge alone turns them into JSON.

The OpenAI error shape is ``{"error": {"message", "type", "param", "code"}}``; ``type`` and ``code``
follow the table in INTERFACE §4.1.
"""

from __future__ import annotations


class PalyraError(Exception):
    """Base of every error a caller may see."""

    status: int = 500
    type: str = "server_error"
    code: str | None = "internal_error"

    def __init__(
        self,
        message: str,
        *,
        code: str | None = None,
        param: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        self.param = param
        self.retry_after_s = retry_after_s


class InvalidRequest(PalyraError):
    status = 400
    type = "invalid_request_error"
    code = "invalid_request"


class AuthenticationFailed(PalyraError):
    status = 401
    type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(PalyraError):
    status = 403
    type = "permission_error"
    code = "missing_scope"


class NotFound(PalyraError):
    status = 404
    type = "invalid_request_error"
    code = "not_found"


class ModelNotFound(NotFound):
    code = "model_not_found"


class RequestTooLarge(PalyraError):
    status = 413
    type = "invalid_request_error"
    code = "request_too_large"


class RateLimited(PalyraError):
    status = 429
    type = "rate_limit_error"
    code = "rate_limit_exceeded"


class BudgetExceeded(PalyraError):
    status = 429
    type = "insufficient_quota"
    code = "budget_exceeded"


class UpstreamFailed(PalyraError):
    """The upstream failed after retries and failover; ``code`` is the classified cause."""

    status = 502
    type = "upstream_error"
    code = "transient"


class NoHealthyProvider(PalyraError):
    status = 503
    type = "service_unavailable"
    code = "no_healthy_provider"


class UpstreamTimeout(PalyraError):
    status = 504
    type = "upstream_error"
    code = "upstream_timeout"


class ConfigError(Exception):
    """Configuration that cannot be used. The message names the key and the fix."""
