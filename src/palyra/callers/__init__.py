"""Who is calling: API tokens for /v1, the admin token for /api/v1, and per-token rate limits."""

from palyra.callers.admin import load_admin_token
from palyra.callers.tokens import SCOPES, Caller, TokenService, parse_duration

__all__ = ["SCOPES", "Caller", "TokenService", "load_admin_token", "parse_duration"]
