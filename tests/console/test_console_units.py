"""Console sessions and the login throttle as pure logic, on a fake clock."""

from __future__ import annotations

import pytest
from starlette.requests import Request

from palyra.console.session import COOKIE_NAME, CSRF_HEADER, ConsoleSessions
from palyra.console.throttle import LoginThrottle
from palyra.errors import PermissionDenied


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def request(method: str = "GET", cookie: str | None = None, csrf: str | None = None) -> Request:
    headers = []
    if cookie is not None:
        headers.append((b"cookie", f"{COOKIE_NAME}={cookie}".encode()))
    if csrf is not None:
        headers.append((CSRF_HEADER.encode(), csrf.encode()))
    scope = {
        "type": "http",
        "method": method,
        "path": "/api/v1/tokens",
        "headers": headers,
        "query_string": b"",
    }
    return Request(scope)


def test_a_session_is_accepted_until_it_expires() -> None:
    clock = Clock()
    sessions = ConsoleSessions("admin-token", ttl_s=60, clock=clock)
    cookie, session = sessions.issue()
    assert sessions.verify(cookie) == session
    clock.now += 59
    assert sessions.verify(cookie) is not None
    clock.now += 1
    assert sessions.verify(cookie) is None


def test_forged_tampered_and_foreign_cookies_are_refused() -> None:
    sessions = ConsoleSessions("admin-token")
    cookie, _ = sessions.issue()
    prefix, sid, issued, expires, sig = cookie.split(".")
    assert sessions.verify(f"{prefix}.{sid}.{issued}.{int(expires) + 3600}.{sig}") is None  # longer life
    assert sessions.verify(f"{prefix}.other{sid}.{issued}.{expires}.{sig}") is None
    assert sessions.verify(cookie[:-2]) is None
    assert sessions.verify("") is None
    assert sessions.verify("v1.a.b.c.d") is None
    assert sessions.verify(cookie + "x" * 300) is None
    # Rotating the admin token changes the key: every existing session ends.
    assert ConsoleSessions("rotated-admin-token").verify(cookie) is None


def test_csrf_token_is_bound_to_the_session() -> None:
    sessions = ConsoleSessions("admin-token")
    _, one = sessions.issue()
    _, two = sessions.issue()
    assert one.csrf_token != two.csrf_token
    assert sessions.csrf_ok(one, one.csrf_token)
    assert not sessions.csrf_ok(one, two.csrf_token)
    assert not sessions.csrf_ok(one, None)
    assert not sessions.csrf_ok(one, "")


def test_admit_needs_csrf_only_for_changes() -> None:
    sessions = ConsoleSessions("admin-token")
    cookie, session = sessions.issue()
    assert sessions.admit(request("GET", cookie), "GET")
    assert not sessions.admit(request("GET"), "GET")
    assert sessions.admit(request("POST", cookie, session.csrf_token), "POST")
    for method in ("POST", "PUT", "PATCH", "DELETE"):
        with pytest.raises(PermissionDenied) as err:
            sessions.admit(request(method, cookie), method)
        assert err.value.code == "csrf_token_invalid"
        with pytest.raises(PermissionDenied):
            sessions.admit(request(method, cookie, "wrong"), method)


def test_logout_ends_the_session_here_and_is_forgotten_after_expiry() -> None:
    clock = Clock()
    sessions = ConsoleSessions("admin-token", ttl_s=60, clock=clock)
    cookie, session = sessions.issue()
    other, _ = sessions.issue()
    sessions.log_out(session)
    assert sessions.verify(cookie) is None
    assert sessions.verify(other) is not None
    clock.now += 61
    sessions.log_out(sessions.issue()[1])  # prunes expired entries
    assert session.session_id not in sessions._logged_out


def test_admin_token_comparison() -> None:
    sessions = ConsoleSessions("admin-token")
    assert sessions.admin_token_matches("admin-token")
    assert sessions.admin_token_matches(" admin-token\n")
    assert not sessions.admin_token_matches("admin-token2")
    assert not sessions.admin_token_matches("")


def test_login_throttle_blocks_after_repeated_failures_per_client() -> None:
    clock = Clock()
    throttle = LoginThrottle(max_failures=3, window_s=60, clock=clock)
    for _ in range(3):
        assert throttle.retry_after_s("a") == 0
        throttle.failed("a")
    assert throttle.retry_after_s("a") == pytest.approx(60)
    assert throttle.retry_after_s("b") == 0
    clock.now += 60
    assert throttle.retry_after_s("a") == 0
    throttle.failed("a")
    throttle.succeeded("a")
    assert throttle.retry_after_s("a") == 0
