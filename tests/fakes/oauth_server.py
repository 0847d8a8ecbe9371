"""A fake OAuth 2.0 authorization server (code + PKCE, refresh with rotation, revocation).

It runs like the fake upstreams (a real aiohttp server on 127.0.0.1 in its own thread and event loop,
see ``fakes.upstream``) and shares their recording and scripting: ``requests`` holds every request
with its form fields and headers, and a scripted reply answers before the default behaviour.

Routes: ``GET /authorize`` answers 302 to ``redirect_uri?code=…&state=…`` (or ``?error=access_denied…``
once ``deny_next`` is set); ``POST /oauth/token`` handles the ``authorization_code`` grant (PKCE S256
checked, codes single-use) and the ``refresh_token`` grant (the refresh token is rotated: the old one
stops working); ``POST /oauth/revoke`` revokes a refresh token (and its access tokens) or an access
token. Access tokens look like ``fake-access-<n>-<random>``; ``valid_access_tokens`` lets another fake
check them.
"""

from __future__ import annotations

import base64
import hashlib
import secrets
import threading
import time
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlencode, urlsplit

from palyra.auth.oauth import OAuthEndpoints

from .upstream import FakeUpstream, Recorded, Reply

__all__ = ["FakeAuthServer"]

AUTHORIZE_PATH = "/authorize"
TOKEN_PATH = "/oauth/token"
REVOKE_PATH = "/oauth/revoke"


@dataclass
class _CodeGrant:
    challenge: str
    client_id: str
    redirect_uri: str
    scope: str
    issued_at: float


@dataclass
class _Grant:
    """One authorization: its current refresh token and the access tokens issued under it."""

    client_id: str
    scope: str
    refresh_token: str
    access_tokens: dict[str, float] = field(default_factory=dict)  # token -> expires at (monotonic)
    revoked: bool = False


class FakeAuthServer(FakeUpstream):
    """OAuth authorization server on ``url``; ``endpoints`` are the three URLs Palyra needs."""

    def __init__(
        self,
        *,
        client_id: str | None = "palyra-test-client",
        client_secret: str | None = None,
        token_ttl_s: float = 3600.0,
        code_ttl_s: float = 600.0,
    ) -> None:
        super().__init__()
        self.client_id = client_id  # None accepts any non-blank client_id
        self.client_secret = client_secret  # None: public client, no secret checked
        self.token_ttl_s = token_ttl_s  # how long access tokens really stay valid
        self.code_ttl_s = code_ttl_s
        # What token responses report: a number, a string, or None to leave it out; under this key.
        self.expires_in: Any = 3600
        self.expires_in_field = "expires_in"
        self.rotate_refresh_tokens = True
        self.deny_next = False
        self._state_lock = threading.Lock()
        self._codes: dict[str, _CodeGrant] = {}
        self._grants_by_refresh: dict[str, _Grant] = {}
        self._grant_by_access: dict[str, _Grant] = {}

    # ---- lifecycle / addresses

    def __enter__(self) -> FakeAuthServer:
        self.start()
        return self

    @property
    def endpoints(self) -> OAuthEndpoints:
        return OAuthEndpoints(self.url + AUTHORIZE_PATH, self.url + TOKEN_PATH, self.url + REVOKE_PATH)

    # ---- scripting (thread-safe)

    def fail_next(
        self, status: int, body: Any = None, *, path: str = TOKEN_PATH, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next request to ``path`` with ``status`` and ``body`` (JSON, or str/bytes sent raw).

        Without a body, an error status gets an OAuth error body and any other status an empty one.
        """
        self.script(path, self._reply(status, body, headers))

    def respond_next(
        self, body: Any, *, status: int = 200, path: str = TOKEN_PATH, headers: dict[str, str] | None = None
    ) -> None:
        """Answer the next request to ``path`` with this body instead of the real behaviour."""
        self.script(path, self._reply(status, body, headers))

    def delay_next(self, seconds: float, *, path: str = TOKEN_PATH) -> None:
        """Delay the next request to ``path``, then behave normally (unless the client gave up)."""
        self.script(path, Reply(delay_s=seconds))

    # ---- inspection (thread-safe)

    @property
    def valid_access_tokens(self) -> frozenset[str]:
        now = time.monotonic()
        with self._state_lock:
            return frozenset(
                token
                for token, grant in self._grant_by_access.items()
                if not grant.revoked and grant.access_tokens.get(token, 0.0) > now
            )

    def is_valid_access_token(self, token: str) -> bool:
        return token in self.valid_access_tokens

    @property
    def valid_refresh_tokens(self) -> frozenset[str]:
        with self._state_lock:
            return frozenset(t for t, g in self._grants_by_refresh.items() if not g.revoked)

    @property
    def token_requests(self) -> list[Recorded]:
        return self.requests_for(TOKEN_PATH)

    @property
    def revoke_requests(self) -> list[Recorded]:
        return self.requests_for(REVOKE_PATH)

    def reset_state(self) -> None:
        super().reset_state()
        with self._state_lock:
            self._codes.clear()
            self._grants_by_refresh.clear()
            self._grant_by_access.clear()
        self.expires_in = 3600
        self.expires_in_field = "expires_in"
        self.rotate_refresh_tokens = True
        self.deny_next = False

    # ---- wire format

    @classmethod
    def error_body(cls, status: int, message: str | None = None) -> Any:
        code = {400: "invalid_request", 401: "invalid_client", 403: "access_denied", 429: "slow_down"}
        return {
            "error": code.get(status, "server_error" if status >= 500 else "invalid_request"),
            "error_description": message or f"HTTP {status}",
        }

    @classmethod
    def _oauth_error(cls, status: int, error: str, description: str) -> Reply:
        return Reply(
            status=status,
            json={"error": error, "error_description": description},
            headers={"Cache-Control": "no-store"},
        )

    def _reply(self, status: int, body: Any, headers: dict[str, str] | None) -> Reply:
        # Always give a body: a body-less scripted reply with a success status would run the default.
        hdrs = dict(headers or {})
        if body is None:
            if status >= 400:
                return Reply(status=status, json=self.error_body(status), headers=hdrs)
            return Reply(status=status, raw=b"", headers=hdrs)
        if isinstance(body, bytes):
            return Reply(status=status, raw=body, headers=hdrs)
        if isinstance(body, str):
            return Reply(status=status, raw=body.encode(), headers=hdrs)
        return Reply(status=status, json=body, headers=hdrs)

    # ---- behaviour

    def default_reply(self, rec: Recorded) -> Reply:
        route = (rec.method, rec.path)
        if route == ("GET", AUTHORIZE_PATH):
            return self._authorize(rec.query)
        if route == ("POST", TOKEN_PATH):
            return self._token(rec)
        if route == ("POST", REVOKE_PATH):
            return self._revoke(rec)
        return self._oauth_error(404, "not_found", "no such endpoint")

    def _authorize(self, q: dict[str, str]) -> Reply:
        redirect_uri = q.get("redirect_uri", "")
        target = urlsplit(redirect_uri)
        # Errors before the redirect target is trusted are shown, never redirected (RFC 6749 §4.1.2.1).
        if target.scheme not in ("http", "https") or not target.netloc:
            return self._oauth_error(400, "invalid_request", "redirect_uri must be an absolute http(s) URL")
        if not q.get("client_id") or (self.client_id is not None and q["client_id"] != self.client_id):
            return self._oauth_error(400, "invalid_client", "unknown client_id")
        problem = None
        if q.get("response_type") != "code":
            problem = ("unsupported_response_type", "response_type must be code")
        elif not 43 <= len(q.get("code_challenge", "")) <= 128:
            problem = ("invalid_request", "code_challenge is required")
        elif q.get("code_challenge_method") != "S256":
            problem = ("invalid_request", "code_challenge_method must be S256")
        elif not q.get("state"):
            problem = ("invalid_request", "state is required")
        if problem is not None:
            return self._oauth_error(400, *problem)
        with self._state_lock:
            deny, self.deny_next = self.deny_next, False
        if deny:
            params = {
                "error": "access_denied",
                "error_description": "The user denied the request",
                "state": q["state"],
            }
        else:
            code = f"fake-code-{self._next_id('code')}-{secrets.token_urlsafe(12)}"
            with self._state_lock:
                self._codes[code] = _CodeGrant(
                    challenge=q["code_challenge"],
                    client_id=q["client_id"],
                    redirect_uri=redirect_uri,
                    scope=q.get("scope", ""),
                    issued_at=time.monotonic(),
                )
            params = {"code": code, "state": q["state"]}
        location = redirect_uri + ("&" if "?" in redirect_uri else "?") + urlencode(params)
        return Reply(status=302, raw=b"", headers={"Location": location})

    def _client_problem(self, form: dict[str, Any]) -> Reply | None:
        client_id = form.get("client_id")
        if self.client_id is not None and client_id is not None and client_id != self.client_id:
            return self._oauth_error(401, "invalid_client", "unknown client")
        if self.client_secret is not None and form.get("client_secret") != self.client_secret:
            return self._oauth_error(401, "invalid_client", "client authentication failed")
        return None

    def _form(self, rec: Recorded) -> dict[str, str] | None:
        if rec.form is None:
            return None
        return {k: v for k, v in rec.form.items() if isinstance(v, str)}

    def _token(self, rec: Recorded) -> Reply:
        form = self._form(rec)
        if form is None:
            return self._oauth_error(400, "invalid_request", "expected a form-encoded body")
        problem = self._client_problem(form)
        if problem is not None:
            return problem
        grant_type = form.get("grant_type")
        if grant_type == "authorization_code":
            return self._code_grant(form)
        if grant_type == "refresh_token":
            return self._refresh_grant(form)
        return self._oauth_error(400, "unsupported_grant_type", "grant_type not supported")

    def _code_grant(self, form: dict[str, str]) -> Reply:
        with self._state_lock:
            # Single use: a code is gone once presented, whether or not the rest checks out.
            code = self._codes.pop(form.get("code", ""), None)
        if code is None or time.monotonic() - code.issued_at > self.code_ttl_s:
            return self._oauth_error(400, "invalid_grant", "authorization code is invalid or was used")
        if form.get("client_id") != code.client_id:
            return self._oauth_error(400, "invalid_grant", "code was issued to another client")
        if form.get("redirect_uri") != code.redirect_uri:
            return self._oauth_error(400, "invalid_grant", "redirect_uri does not match")
        verifier = form.get("code_verifier", "")
        if not verifier or _s256(verifier) != code.challenge:
            return self._oauth_error(400, "invalid_grant", "PKCE verification failed")
        with self._state_lock:
            grant = _Grant(client_id=code.client_id, scope=code.scope, refresh_token=self._new_refresh())
            self._grants_by_refresh[grant.refresh_token] = grant
            access = self._issue_access(grant)
        return self._token_reply(access, grant.refresh_token, grant.scope)

    def _refresh_grant(self, form: dict[str, str]) -> Reply:
        presented = form.get("refresh_token", "")
        with self._state_lock:
            grant = self._grants_by_refresh.get(presented)
            if grant is None or grant.revoked:
                return self._oauth_error(400, "invalid_grant", "refresh token is invalid, rotated or revoked")
            if self.client_id is not None and form.get("client_id", grant.client_id) != grant.client_id:
                return self._oauth_error(400, "invalid_grant", "refresh token was issued to another client")
            if self.rotate_refresh_tokens:
                del self._grants_by_refresh[presented]
                grant.refresh_token = self._new_refresh()
                self._grants_by_refresh[grant.refresh_token] = grant
            access = self._issue_access(grant)
        return self._token_reply(access, grant.refresh_token, form.get("scope") or grant.scope)

    def _revoke(self, rec: Recorded) -> Reply:
        form = self._form(rec)
        if form is None or not form.get("token"):
            return self._oauth_error(400, "invalid_request", "token is required")
        problem = self._client_problem(form)
        if problem is not None:
            return problem
        token = form["token"]
        with self._state_lock:
            grant = self._grants_by_refresh.get(token)
            if grant is not None:
                # Revoking the refresh token ends the whole grant (RFC 7009 §2.1).
                grant.revoked = True
            elif token in self._grant_by_access:
                self._grant_by_access[token].access_tokens.pop(token, None)
        return Reply(status=200, raw=b"")  # unknown tokens too (RFC 7009 §2.2)

    def _token_reply(self, access: str, refresh: str, scope: str) -> Reply:
        body: dict[str, Any] = {"access_token": access, "refresh_token": refresh, "token_type": "Bearer"}
        if self.expires_in is not None:
            body[self.expires_in_field] = self.expires_in
        if scope:
            body["scope"] = scope
        return Reply(json=body, headers={"Cache-Control": "no-store"})

    def _issue_access(self, grant: _Grant) -> str:
        """Called with ``_state_lock`` held."""
        token = f"fake-access-{self._next_id('access')}-{secrets.token_urlsafe(16)}"
        grant.access_tokens[token] = time.monotonic() + self.token_ttl_s
        self._grant_by_access[token] = grant
        return token

    def _new_refresh(self) -> str:
        return f"fake-refresh-{self._next_id('refresh')}-{secrets.token_urlsafe(16)}"


def _s256(verifier: str) -> str:
    return base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).rstrip(b"=").decode()
