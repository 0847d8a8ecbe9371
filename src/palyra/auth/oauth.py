"""OAuth 2.0 for provider credentials: authorization code + PKCE, refresh, revocation.

Protocol only: no database and no vault. The auth-profile service stores what ``OAuthClient`` returns
and keeps a ``PendingAttempts`` store for the browser round trip.

Every call to a provider's auth server goes through the private-network guard (``palyra.netguard``
on the URL and every DNS answer, then the guarded resolver when connecting), never follows redirects,
and fails with an ``OAuthError`` whose message is a fixed string: auth server responses may echo
codes, verifiers or tokens, so their text is never carried into messages, logs or exception chains.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import math
import re
import secrets
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal
from urllib.parse import quote, urlencode

from palyra import netguard
from palyra.providers.failures import sanitize_remote_error
from palyra.providers.http_client import make_session

if TYPE_CHECKING:
    import aiohttp

__all__ = [
    "ATTEMPT_TTL_S",
    "EXPIRING_WINDOW_S",
    "EXPIRY_REFRESH_WINDOW_S",
    "OPENAI_AUDIENCE",
    "OPENAI_DEFAULT_ENDPOINTS",
    "OPENAI_DEFAULT_SCOPES",
    "Attempt",
    "AttemptError",
    "AttemptStatus",
    "OAuthClient",
    "OAuthEndpoints",
    "OAuthError",
    "PendingAttempts",
    "Pkce",
    "TokenSet",
    "authorization_denied",
    "authorization_url",
    "endpoints_from",
    "new_pkce",
    "new_state",
    "normalize_scopes",
    "pkce_challenge",
    "refresh_backoff_ms",
]

EXPIRY_REFRESH_WINDOW_S = 60
"""Refresh an access token before use when it expires within this many seconds."""
EXPIRING_WINDOW_S = 15 * 60
"""Health reports a credential as "expiring" within this many seconds of its expiry."""
ATTEMPT_TTL_S = 600
"""How long a browser has to finish an authorization, and how long a finished attempt stays pollable."""

OPENAI_DEFAULT_SCOPES = ("openid", "profile", "email", "offline_access")
OPENAI_AUDIENCE = "https://api.openai.com/v1"

_MAX_RESPONSE_BYTES = 1024 * 1024
_RANDOM_BYTES = 32
_OAUTH_ERROR_CODE = re.compile(r"[a-z][a-z0-9_.-]{0,63}")

_BACKOFF_MS: dict[str, tuple[int, int]] = {
    "openai": (15_000, 5 * 60 * 1_000),
    "anthropic": (20_000, 10 * 60 * 1_000),
}
_DEFAULT_BACKOFF_MS = (30_000, 30 * 60 * 1_000)
_MAX_BACKOFF_SHIFT = 20


# --------------------------------------------------------------------------- endpoints


@dataclass(frozen=True)
class OAuthEndpoints:
    authorize_url: str
    token_url: str
    revoke_url: str | None = None


OPENAI_DEFAULT_ENDPOINTS = OAuthEndpoints(
    "https://auth.openai.com/authorize",
    "https://auth0.openai.com/oauth/token",
    "https://auth0.openai.com/oauth/revoke",
)


def endpoints_from(
    authorize_url: str, token_url: str, revoke_url: str | None = None, *, allow_private: bool
) -> OAuthEndpoints:
    """Validated endpoints (https, or http to loopback; no credentials, query or fragment).

    Raises ``netguard.UnsafeUrl`` naming the field (``oauth.authorize_url`` and so on).
    """
    return OAuthEndpoints(
        authorize_url=netguard.validate_base_url(
            authorize_url, allow_private=allow_private, field="oauth.authorize_url"
        ),
        token_url=netguard.validate_base_url(token_url, allow_private=allow_private, field="oauth.token_url"),
        revoke_url=None
        if revoke_url is None
        else netguard.validate_base_url(revoke_url, allow_private=allow_private, field="oauth.revoke_url"),
    )


# --------------------------------------------------------------------------- PKCE, state, URL


@dataclass(frozen=True)
class Pkce:
    verifier: str
    challenge: str
    method: Literal["S256"] = "S256"

    def __repr__(self) -> str:
        return f"Pkce(verifier=<redacted>, challenge={self.challenge!r}, method={self.method!r})"


def new_pkce() -> Pkce:
    """A fresh S256 pair (RFC 7636): the verifier is 32 random bytes, base64url without padding."""
    verifier = _b64url(secrets.token_bytes(_RANDOM_BYTES))
    return Pkce(verifier=verifier, challenge=pkce_challenge(verifier))


def pkce_challenge(verifier: str) -> str:
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    """An unguessable ``state`` (32 random bytes, base64url): what binds a callback to its attempt."""
    return _b64url(secrets.token_bytes(_RANDOM_BYTES))


def normalize_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    """Trimmed, blank ones dropped, duplicates removed in order. A scope with inner whitespace is refused."""
    if isinstance(scopes, str):
        raise TypeError("scopes must be a sequence of scope names, not one string")
    seen: dict[str, None] = {}
    for scope in scopes:
        name = scope.strip()
        if not name:
            continue
        if any(ch.isspace() or ord(ch) < 0x21 or ch in '"\\' for ch in name):
            raise ValueError("an OAuth scope must not contain spaces, quotes or control characters")
        seen.setdefault(name, None)
    return tuple(seen)


def authorization_url(
    endpoints: OAuthEndpoints,
    *,
    client_id: str,
    redirect_uri: str,
    scopes: Sequence[str],
    state: str,
    challenge: str,
    audience: str | None = None,
) -> str:
    """The URL to send the user's browser to (authorization code flow with an S256 PKCE challenge)."""
    params = {
        "response_type": "code",
        "client_id": _required(client_id, "client_id"),
        "redirect_uri": _required(redirect_uri, "redirect_uri"),
        "scope": " ".join(normalize_scopes(scopes)),
        "code_challenge": _required(challenge, "challenge"),
        "code_challenge_method": "S256",
        "state": _required(state, "state"),
    }
    if audience:
        params["audience"] = audience
    separator = "&" if "?" in endpoints.authorize_url else "?"
    # quote, not quote_plus: %20 between scopes is read the same way by every server.
    return endpoints.authorize_url + separator + urlencode(params, quote_via=quote)


# --------------------------------------------------------------------------- results and errors


@dataclass(frozen=True)
class TokenSet:
    """What a token endpoint granted. ``refresh_token`` is None when a refresh did not rotate it."""

    access_token: str
    refresh_token: str | None
    expires_in_s: float | None
    scope: str | None

    def __repr__(self) -> str:
        refresh = "None" if self.refresh_token is None else "<redacted>"
        return (
            f"TokenSet(access_token=<redacted>, refresh_token={refresh}, "
            f"expires_in_s={self.expires_in_s!r}, scope={self.scope!r})"
        )


OAuthErrorKind = Literal["transport", "status", "invalid_response", "denied", "refused"]
OAuthEndpointName = Literal["token", "revocation", "authorization"]


class OAuthError(Exception):
    """An OAuth call that failed. ``message`` is fixed text and never contains anything the server sent.

    Kinds: ``transport`` (no usable answer, including timeouts), ``status`` (non-2xx, redirects too),
    ``invalid_response`` (2xx without usable tokens), ``denied`` (the user or server refused the
    authorization), ``refused`` (the private-network guard refused the endpoint; ``detail`` says why).

    ``error_code`` is the server's OAuth ``error`` value (``invalid_grant`` …) when it has the shape of
    one; ``detail`` is extra text already sanitized for logs (an exception class name, or the user-facing
    description of a denied authorization).
    """

    def __init__(
        self,
        kind: OAuthErrorKind,
        *,
        status: int | None = None,
        endpoint: OAuthEndpointName = "token",
        error_code: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.kind: OAuthErrorKind = kind
        self.status = status
        self.endpoint: OAuthEndpointName = endpoint
        self.error_code = error_code
        self.detail = detail
        self.retryable = kind == "transport" or (
            kind == "status" and status is not None and (status >= 500 or status == 429)
        )
        self.message = _error_message(kind, endpoint, status)
        super().__init__(self.message)

    def __repr__(self) -> str:
        return (
            f"OAuthError(kind={self.kind!r}, status={self.status!r}, endpoint={self.endpoint!r}, "
            f"error_code={self.error_code!r}, retryable={self.retryable!r})"
        )


def _error_message(kind: OAuthErrorKind, endpoint: OAuthEndpointName, status: int | None) -> str:
    if kind == "denied":
        return "oauth authorization was denied"
    where = f"oauth {endpoint} endpoint"
    if kind == "refused":
        return f"{where} refused by the private-network guard"
    if kind == "transport":
        return f"{where} transport failure"
    if kind == "status":
        return f"{where} returned status {status}"
    return f"oauth {endpoint} response was invalid"


def authorization_denied(error: str | None, description: str | None = None) -> OAuthError:
    """The error for a callback that came back with ``?error=…`` instead of a code.

    Anyone can open the callback URL, so both values are untrusted: the code is kept only when it has the
    shape of an OAuth error code, the description only sanitized and shortened, as ``detail``.
    """
    shown = sanitize_remote_error(description, limit=200) if description and description.strip() else None
    return OAuthError(
        "denied",
        endpoint="authorization",
        error_code=_oauth_error_code(error),
        detail=shown or "The authorization was denied.",
    )


# --------------------------------------------------------------------------- the client


SessionFactory = Callable[[], "aiohttp.ClientSession"]


class OAuthClient:
    """Talks to auth servers. One instance per gateway; ``close()`` it on shutdown.

    ``session_factory`` replaces the default pooled session (which refuses private addresses in its DNS
    resolver unless ``allow_private``); the session it returns is owned and closed by this client.
    An endpoint the private-network guard refuses fails with kind ``refused`` before any connection.
    Invalid arguments (a blank code, say) raise ``ValueError``.
    """

    def __init__(
        self,
        *,
        allow_private: bool = False,
        timeout_s: float = 10.0,
        session_factory: SessionFactory | None = None,
    ) -> None:
        if not timeout_s > 0:
            raise ValueError("timeout_s must be positive")
        self._allow_private = allow_private
        self._timeout_s = timeout_s
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None

    async def exchange_code(
        self,
        endpoints: OAuthEndpoints,
        *,
        client_id: str,
        client_secret: str | None,
        redirect_uri: str,
        code: str,
        verifier: str,
    ) -> TokenSet:
        """Trade an authorization code for tokens. Both an access and a refresh token are required."""
        form = {
            "grant_type": "authorization_code",
            "client_id": _required(client_id, "client_id"),
            "redirect_uri": _required(redirect_uri, "redirect_uri"),
            "code": _required(code, "code"),
            "code_verifier": _required(verifier, "verifier"),
        }
        if client_secret:
            form["client_secret"] = client_secret
        status, body = await self._post(endpoints.token_url, form, endpoint="token", field="oauth.token_url")
        _raise_for_status(status, body, "token")
        return _token_set(body, refresh_required=True)

    async def refresh(
        self,
        endpoints: OAuthEndpoints,
        *,
        client_id: str | None,
        client_secret: str | None,
        refresh_token: str,
        scopes: Sequence[str] = (),
    ) -> TokenSet:
        """Use a refresh token. A ``refresh_token`` in the result means the server rotated it."""
        form = {"grant_type": "refresh_token", "refresh_token": _required(refresh_token, "refresh_token")}
        if client_id:
            form["client_id"] = client_id
        if client_secret:
            form["client_secret"] = client_secret
        scope = " ".join(normalize_scopes(scopes))
        if scope:
            form["scope"] = scope
        status, body = await self._post(endpoints.token_url, form, endpoint="token", field="oauth.token_url")
        _raise_for_status(status, body, "token")
        return _token_set(body, refresh_required=False)

    async def revoke(
        self,
        endpoints: OAuthEndpoints,
        *,
        client_id: str | None,
        client_secret: str | None,
        token: str,
        attempts: int = 3,
        delay_s: float = 0.1,
    ) -> None:
        """Revoke ``token`` (RFC 7009), retrying transport failures and 5xx answers ``attempts`` times."""
        if endpoints.revoke_url is None:
            raise ValueError("these OAuth endpoints have no revocation URL")
        if attempts < 1:
            raise ValueError("attempts must be at least 1")
        form = {"token": _required(token, "token")}
        if client_id:
            form["client_id"] = client_id
        if client_secret:
            form["client_secret"] = client_secret
        for attempt in range(1, attempts + 1):
            try:
                status, body = await self._post(
                    endpoints.revoke_url, form, endpoint="revocation", field="oauth.revoke_url"
                )
                _raise_for_status(status, body, "revocation")
                return
            except OAuthError as exc:
                transient = exc.kind == "transport" or (exc.status is not None and exc.status >= 500)
                if not transient or attempt == attempts:
                    raise
            await asyncio.sleep(delay_s)

    async def close(self) -> None:
        session, self._session = self._session, None
        if session is not None:
            await session.close()

    async def _post(
        self, url: str, form: Mapping[str, str], *, endpoint: OAuthEndpointName, field: str
    ) -> tuple[int, bytes]:
        try:
            # Endpoints built without endpoints_from are checked here as well; DNS answers can change.
            netguard.validate_base_url(url, allow_private=self._allow_private, field=field)
            await netguard.check_destination(url, allow_private=self._allow_private, field=field)
        except netguard.UnsafeUrl as exc:
            raise OAuthError("refused", endpoint=endpoint, detail=str(exc)) from None
        import aiohttp  # loaded with the first OAuth exchange, not at start

        session = self._get_session()
        headers = {"Content-Type": "application/x-www-form-urlencoded", "Accept": "application/json"}
        try:
            async with session.post(
                url,
                data=urlencode(form).encode("ascii"),
                headers=headers,
                allow_redirects=False,
                timeout=aiohttp.ClientTimeout(total=self._timeout_s),
            ) as resp:
                return resp.status, await _read_capped(resp)
        except _BodyTooLarge:
            raise OAuthError("invalid_response", endpoint=endpoint, detail="response too large") from None
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            # aiohttp messages can quote the server; the class name is enough to tell timeouts apart.
            raise OAuthError("transport", endpoint=endpoint, detail=type(exc).__name__) from None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            if self._session_factory is not None:
                self._session = self._session_factory()
            else:
                self._session = make_session("oauth", pool_size=4, allow_private=self._allow_private)
        return self._session


class _BodyTooLarge(Exception):
    pass


async def _read_capped(resp: aiohttp.ClientResponse) -> bytes:
    if resp.content_length is not None and resp.content_length > _MAX_RESPONSE_BYTES:
        raise _BodyTooLarge
    chunks: list[bytes] = []
    total = 0
    async for chunk in resp.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > _MAX_RESPONSE_BYTES:
            raise _BodyTooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _raise_for_status(status: int, body: bytes, endpoint: OAuthEndpointName) -> None:
    # 3xx lands here too: redirects are never followed, so a token request cannot be bounced elsewhere.
    if 200 <= status < 300:
        return
    data = _json_object(body)
    code = _oauth_error_code(data.get("error")) if data is not None else None
    raise OAuthError("status", status=status, endpoint=endpoint, error_code=code)


def _token_set(body: bytes, *, refresh_required: bool) -> TokenSet:
    data = _json_object(body)
    if data is None:
        raise _invalid("not a JSON object")
    access = _token_value(data.get("access_token"))
    if access is None:
        raise _invalid("access_token missing")
    refresh = _token_value(data.get("refresh_token"))
    if refresh is None and refresh_required:
        raise _invalid("refresh_token missing")
    raw_expiry = data.get("expires_in", data.get("expired_in"))
    expires_in = _seconds(raw_expiry)
    if raw_expiry is not None and expires_in is None:
        raise _invalid("expires_in is not a number of seconds")
    scope = data.get("scope")
    return TokenSet(
        access_token=access,
        refresh_token=refresh,
        expires_in_s=expires_in,
        scope=scope if isinstance(scope, str) and scope.strip() else None,
    )


def _invalid(detail: str) -> OAuthError:
    return OAuthError("invalid_response", endpoint="token", detail=detail)


def _json_object(body: bytes) -> dict[str, Any] | None:
    try:
        data = json.loads(body)
    except (ValueError, RecursionError):
        # JSONDecodeError keeps the whole document (tokens included) on .doc: never chain it.
        return None
    return data if isinstance(data, dict) else None


def _token_value(value: object) -> str | None:
    """A token as a string; None when absent or blank. Any other type is an invalid response."""
    if value is None:
        return None
    if not isinstance(value, str):
        raise _invalid("token is not a string")
    value = value.strip()
    return value or None


def _seconds(value: object) -> float | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        try:
            value = float(value.strip())
        except ValueError:
            return None
    if not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) and number >= 0 else None


def _oauth_error_code(value: object) -> str | None:
    return value if isinstance(value, str) and _OAUTH_ERROR_CODE.fullmatch(value) else None


def _required(value: str, name: str) -> str:
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{name} is required")
    return value


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


# --------------------------------------------------------------------------- refresh policy


def refresh_backoff_ms(provider: str, failure_count: int) -> int:
    """How long to wait before the next refresh after ``failure_count`` consecutive failures."""
    if failure_count <= 0:
        return 0
    base, cap = _BACKOFF_MS.get(provider.strip().lower(), _DEFAULT_BACKOFF_MS)
    return min(base << min(failure_count - 1, _MAX_BACKOFF_SHIFT), cap)


# --------------------------------------------------------------------------- pending attempts


AttemptState = Literal["pending", "succeeded", "failed"]
AttemptErrorReason = Literal["unknown", "expired", "used"]

_ATTEMPT_ERROR_MESSAGES: dict[AttemptErrorReason, str] = {
    "unknown": "unknown or expired oauth state",
    "expired": "the oauth attempt expired; start the connection again",
    "used": "the oauth attempt was already used",
}


class AttemptError(LookupError):
    """A callback's ``state`` that cannot be used: ``reason`` is unknown, expired or used."""

    def __init__(self, reason: AttemptErrorReason) -> None:
        self.reason: AttemptErrorReason = reason
        super().__init__(_ATTEMPT_ERROR_MESSAGES[reason])


@dataclass
class Attempt:
    """One authorization in flight. Holds the PKCE verifier and client secret until it completes."""

    state: str
    provider: str
    profile_id: str | None
    profile_name: str
    scope: str
    client_id: str
    client_secret: str | None = field(repr=False)
    scopes: tuple[str, ...]
    redirect_uri: str
    endpoints: OAuthEndpoints
    verifier: str | None = field(repr=False)
    challenge: str
    created_at: float
    expires_at: float
    status: AttemptState = "pending"
    message: str | None = None
    completed_at: float | None = None
    used: bool = False
    expired: bool = False

    def authorization_url(self, *, audience: str | None = None) -> str:
        return authorization_url(
            self.endpoints,
            client_id=self.client_id,
            redirect_uri=self.redirect_uri,
            scopes=self.scopes,
            state=self.state,
            challenge=self.challenge,
            audience=audience,
        )

    def snapshot(self) -> AttemptStatus:
        return AttemptStatus(
            state=self.state,
            provider=self.provider,
            status=self.status,
            message=self.message,
            profile_id=self.profile_id,
            created_at=self.created_at,
            expires_at=self.expires_at,
            completed_at=self.completed_at,
        )

    def _finish(self, status: AttemptState, message: str, now: float) -> None:
        self.status = status
        self.message = message
        self.completed_at = now
        self.used = True
        self.client_secret = None
        self.verifier = None


@dataclass(frozen=True)
class AttemptStatus:
    """What a status poll may see of an attempt: no verifier, no secret."""

    state: str
    provider: str
    status: AttemptState
    message: str | None
    profile_id: str | None
    created_at: float
    expires_at: float
    completed_at: float | None


class PendingAttempts:
    """In-memory OAuth attempts keyed by ``state``. Not shared between processes; one event loop.

    An attempt can be taken once (the callback); a second callback with the same state is refused. A
    pending attempt not taken by ``expires_at`` fails as expired and drops its secrets; every attempt is
    forgotten ``ttl_s`` after it finished (or expired), so status polls still see the outcome meanwhile.
    ``clock`` returns wall-clock seconds (``time.time``), which is also what the timestamps hold.
    """

    def __init__(self, *, ttl_s: float = ATTEMPT_TTL_S, clock: Callable[[], float] = time.time) -> None:
        self._ttl_s = ttl_s
        self._clock = clock
        self._attempts: dict[str, Attempt] = {}

    def __len__(self) -> int:
        return len(self._attempts)

    def create(
        self,
        *,
        provider: str,
        profile_id: str | None,
        profile_name: str,
        scope: str,
        client_id: str,
        client_secret: str | None,
        scopes: Sequence[str],
        redirect_uri: str,
        endpoints: OAuthEndpoints,
    ) -> Attempt:
        self.cleanup()
        now = self._clock()
        pkce = new_pkce()
        attempt = Attempt(
            state=new_state(),
            provider=provider,
            profile_id=profile_id,
            profile_name=profile_name,
            scope=scope,
            client_id=_required(client_id, "client_id"),
            client_secret=client_secret or None,
            scopes=normalize_scopes(scopes),
            redirect_uri=_required(redirect_uri, "redirect_uri"),
            endpoints=endpoints,
            verifier=pkce.verifier,
            challenge=pkce.challenge,
            created_at=now,
            expires_at=now + self._ttl_s,
        )
        self._attempts[attempt.state] = attempt
        return attempt

    def take(self, state: str) -> Attempt:
        """The attempt for a callback, once. Raises ``AttemptError`` (unknown, expired or used)."""
        attempt = self._current(state)
        if attempt is None:
            raise AttemptError("unknown")
        if attempt.used:
            raise AttemptError("expired" if attempt.expired else "used")
        attempt.used = True
        return attempt

    def get(self, state: str) -> AttemptStatus | None:
        attempt = self._current(state)
        return None if attempt is None else attempt.snapshot()

    def succeed(self, state: str, *, profile_id: str, message: str = "connected") -> AttemptStatus:
        return self._complete(state, "succeeded", message, profile_id)

    def fail(self, state: str, *, message: str) -> AttemptStatus:
        return self._complete(state, "failed", message, None)

    def cleanup(self) -> None:
        now = self._clock()
        for state, attempt in list(self._attempts.items()):
            self._expire(attempt, now)
            finished_at = attempt.completed_at if attempt.completed_at is not None else attempt.expires_at
            if now >= finished_at + self._ttl_s:
                del self._attempts[state]

    def _complete(
        self, state: str, status: AttemptState, message: str, profile_id: str | None
    ) -> AttemptStatus:
        attempt = self._current(state)
        if attempt is None:
            raise AttemptError("unknown")
        if attempt.status != "pending":
            raise AttemptError("used")
        if profile_id is not None:
            attempt.profile_id = profile_id
        attempt._finish(status, message, self._clock())
        return attempt.snapshot()

    def _current(self, state: str) -> Attempt | None:
        if not isinstance(state, str):
            return None
        attempt = self._attempts.get(state)
        if attempt is not None:
            self._expire(attempt, self._clock())
        return attempt

    @staticmethod
    def _expire(attempt: Attempt, now: float) -> None:
        # A taken attempt is mid-exchange: let the exchange finish it rather than expire under it.
        if attempt.status == "pending" and not attempt.used and now >= attempt.expires_at:
            attempt.expired = True
            # Noticed late or not, it ended at expires_at: retention counts from there.
            attempt._finish("failed", _EXPIRED, attempt.expires_at)


_EXPIRED = "the oauth attempt expired before the authorization finished"
