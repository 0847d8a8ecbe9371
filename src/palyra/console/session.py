"""Console sessions: a signed, expiring cookie, and a CSRF token bound to it.

Nothing is stored per session, so any replica that knows the admin token accepts a session another
replica issued. The signing key is derived from the admin token: rotating the token logs everyone out.

- Cookie ``palyra_console_session`` = ``v1.<session id>.<issued>.<expires>.<HMAC-SHA256>``; ``HttpOnly``,
  ``SameSite=Strict``, ``Path=/``, and ``Secure`` when the request reached us over https (uvicorn
  rewrites the scheme from ``X-Forwarded-Proto`` only for the proxies in ``FORWARDED_ALLOW_IPS``,
  loopback by default) or when ``server.public_base_url`` is https.
- CSRF token = HMAC(key, session id): the console page carries it, the browser sends it as
  ``X-Palyra-CSRF-Token`` on every request that changes something, and a cross-site page can read
  neither it nor the cookie.
- Logout clears the cookie and remembers the session id until it expires, in this process only: a
  copy of the cookie replayed at another replica stays valid until its expiry (8 hours at most).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass

from starlette.requests import HTTPConnection

from palyra.errors import PermissionDenied

COOKIE_NAME = "palyra_console_session"
CSRF_HEADER = "x-palyra-csrf-token"
DEFAULT_TTL_S = 8 * 3600
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_KEY_LABEL = b"palyra-console-session-v1"


@dataclass(frozen=True, slots=True)
class ConsoleSession:
    session_id: str
    issued_at: int
    expires_at: int
    csrf_token: str


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


class ConsoleSessions:
    def __init__(
        self,
        admin_token: str,
        *,
        ttl_s: int = DEFAULT_TTL_S,
        always_secure: bool = False,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._admin_token = admin_token.encode()
        self._key = hmac.new(self._admin_token, _KEY_LABEL, hashlib.sha256).digest()
        self._ttl_s = ttl_s
        self._always_secure = always_secure
        self._clock = clock
        self._logged_out: dict[str, int] = {}  # session id -> its expiry

    @property
    def ttl_s(self) -> int:
        return self._ttl_s

    def admin_token_matches(self, supplied: str) -> bool:
        return hmac.compare_digest(supplied.strip().encode(), self._admin_token)

    def _sign(self, text: str) -> str:
        return _b64(hmac.new(self._key, text.encode(), hashlib.sha256).digest())

    def _session(self, session_id: str, issued_at: int, expires_at: int) -> ConsoleSession:
        return ConsoleSession(session_id, issued_at, expires_at, self._sign("csrf." + session_id))

    def issue(self) -> tuple[str, ConsoleSession]:
        """A new session and the cookie value that carries it."""
        now = int(self._clock())
        session = self._session(secrets.token_urlsafe(18), now, now + self._ttl_s)
        payload = f"v1.{session.session_id}.{session.issued_at}.{session.expires_at}"
        return f"{payload}.{self._sign(payload)}", session

    def verify(self, cookie: str | None) -> ConsoleSession | None:
        """The session a cookie carries, or None if it is malformed, forged, expired or logged out."""
        if not cookie or len(cookie) > 256:
            return None
        parts = cookie.split(".")
        if len(parts) != 5 or parts[0] != "v1":
            return None
        payload = ".".join(parts[:4])
        if not hmac.compare_digest(parts[4].encode(), self._sign(payload).encode()):
            return None
        try:
            issued_at, expires_at = int(parts[2]), int(parts[3])
        except ValueError:
            return None
        if expires_at <= self._clock() or parts[1] in self._logged_out:
            return None
        return self._session(parts[1], issued_at, expires_at)

    def from_request(self, conn: HTTPConnection) -> ConsoleSession | None:
        return self.verify(conn.cookies.get(COOKIE_NAME))

    def csrf_ok(self, session: ConsoleSession, supplied: str | None) -> bool:
        return bool(supplied) and hmac.compare_digest((supplied or "").encode(), session.csrf_token.encode())

    def admit(self, conn: HTTPConnection, method: str) -> bool:
        """For the admin API: True if a console session cookie authenticates this request.

        A request that changes something must also carry the session's CSRF token, or it is refused
        outright (403) rather than treated as unauthenticated.
        """
        session = self.from_request(conn)
        if session is None:
            return False
        if method.upper() not in SAFE_METHODS and not self.csrf_ok(session, conn.headers.get(CSRF_HEADER)):
            raise PermissionDenied(
                "a console session must send its CSRF token in the X-Palyra-CSRF-Token header with "
                "every change; reload the console page",
                code="csrf_token_invalid",
            )
        return True

    def log_out(self, session: ConsoleSession) -> None:
        now = self._clock()
        for sid, expires in list(self._logged_out.items()):
            if expires <= now:
                del self._logged_out[sid]
        self._logged_out[session.session_id] = session.expires_at

    def secure(self, conn: HTTPConnection) -> bool:
        return self._always_secure or conn.url.scheme == "https"
