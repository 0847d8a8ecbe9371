"""The console's login, session cookie and CSRF over plain HTTP, against a real daemon."""

from __future__ import annotations

import re
from collections.abc import Iterator

import httpx2 as httpx
import pytest

from palyra.console.session import COOKIE_NAME, CSRF_HEADER, ConsoleSessions

from conftest import Daemon, start_daemon


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("console-http"))
    yield d
    d.stop()


def login(gw: Daemon, token: str | None = None, **headers: str) -> httpx.Response:
    return httpx.post(
        gw.base_url + "/console/login",
        data={"admin_token": token if token is not None else gw.admin_token},
        headers=headers,
        follow_redirects=False,
    )


class Session:
    """A logged-in console session: the cookie, and the CSRF token read from the console page."""

    def __init__(self, gw: Daemon) -> None:
        r = login(gw)
        assert r.status_code == 303, r.text
        self.cookie = r.cookies[COOKIE_NAME]
        self.client = httpx.Client(base_url=gw.base_url, cookies={COOKIE_NAME: self.cookie}, timeout=10)
        page = self.client.get("/console/")
        assert page.status_code == 200
        self.csrf = re.search(r'name="palyra-csrf" content="([^"]+)"', page.text).group(1)  # type: ignore[union-attr]


@pytest.fixture
def session(gw: Daemon) -> Iterator[Session]:
    s = Session(gw)
    yield s
    s.client.close()


def test_console_redirects_to_login_and_serves_assets(gw: Daemon) -> None:
    r = httpx.get(gw.base_url + "/console", follow_redirects=True)
    assert r.status_code == 200
    assert str(r.url).endswith("/console/login")
    assert 'name="admin_token"' in r.text
    assert (
        "content-security-policy" in r.headers and "script-src 'self'" in r.headers["content-security-policy"]
    )
    assert r.headers["x-frame-options"] == "DENY"
    for path in ("js/main.js", "vendor/uplot/uPlot.esm.js", "vendor/uplot/LICENSE", "console.css"):
        asset = httpx.get(f"{gw.base_url}/console/static/{path}")
        assert asset.status_code == 200, path
    assert "javascript" in httpx.get(gw.base_url + "/console/static/js/main.js").headers["content-type"]


def test_login_sets_a_hardened_cookie(gw: Daemon) -> None:
    r = login(gw)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/"
    cookie = r.headers["set-cookie"]
    assert cookie.startswith(COOKIE_NAME + "=")
    assert "HttpOnly" in cookie
    assert "samesite=strict" in cookie.lower()
    assert "Path=/" in cookie
    assert "Secure" not in cookie  # plain HTTP
    assert gw.admin_token not in cookie


def test_cookie_is_secure_behind_a_trusted_tls_proxy(gw: Daemon) -> None:
    # uvicorn honours X-Forwarded-Proto from FORWARDED_ALLOW_IPS (loopback by default).
    r = login(gw, **{"x-forwarded-proto": "https"})
    assert r.status_code == 303
    assert "Secure" in r.headers["set-cookie"]


def test_wrong_token_and_cross_site_login_are_refused(gw: Daemon) -> None:
    r = login(gw, "not-the-admin-token")
    assert r.status_code == 401
    assert "set-cookie" not in r.headers
    assert "That is not the admin token" in r.text
    r = login(gw, origin="https://evil.example")
    assert r.status_code == 403
    assert "set-cookie" not in r.headers
    r = login(gw, origin=gw.base_url)
    assert r.status_code == 303


def test_session_reads_without_csrf_but_changes_need_it(session: Session) -> None:
    c = session.client
    assert c.get("/api/v1/tokens").status_code == 200
    r = c.post("/api/v1/tokens", json={"name": "no-csrf"})
    assert r.status_code == 403
    assert r.json()["error"]["code"] == "csrf_token_invalid"
    r = c.post("/api/v1/tokens", json={"name": "bad-csrf"}, headers={CSRF_HEADER: "x" * 43})
    assert r.status_code == 403
    r = c.post("/api/v1/tokens", json={"name": "with-csrf"}, headers={CSRF_HEADER: session.csrf})
    assert r.status_code == 201, r.text
    token_id = r.json()["token_id"]
    assert c.delete(f"/api/v1/tokens/{token_id}").status_code == 403
    assert c.delete(f"/api/v1/tokens/{token_id}", headers={CSRF_HEADER: session.csrf}).status_code == 200
    # The memory routes take the session too (they have their own caller check).
    r = c.post("/api/v1/memory/search", json={"query": "x", "agent_id": "a"})
    assert r.status_code == 403
    r = c.get("/api/v1/memory/items", params={"agent_id": "a"})
    assert r.status_code == 200, r.text


def test_bearer_keeps_working_and_is_never_overridden_by_the_cookie(gw: Daemon, session: Session) -> None:
    with gw.admin() as admin:
        assert admin.post("/tokens", json={"name": "bearer-no-csrf"}).status_code == 201
    r = session.client.get("/api/v1/tokens", headers={"authorization": "Bearer wrong"})
    assert r.status_code == 401
    assert httpx.get(gw.base_url + "/api/v1/tokens").status_code == 401


def test_csrf_token_of_another_session_is_refused(gw: Daemon, session: Session) -> None:
    other = Session(gw)
    r = session.client.post("/api/v1/tokens", json={"name": "x"}, headers={CSRF_HEADER: other.csrf})
    assert r.status_code == 403
    other.client.close()


def test_logout_needs_csrf_and_ends_the_session(gw: Daemon, session: Session) -> None:
    c = session.client
    r = c.post("/console/logout", data={"csrf_token": "wrong"})
    assert r.status_code == 403
    assert c.get("/api/v1/tokens").status_code == 200
    r = c.post("/console/logout", data={"csrf_token": session.csrf}, follow_redirects=False)
    assert r.status_code == 303
    assert r.headers["location"] == "/console/login?logged_out=1"
    assert f'{COOKIE_NAME}=""' in r.headers["set-cookie"] or "Max-Age=0" in r.headers["set-cookie"]
    # The old cookie, replayed, no longer works.
    replay = httpx.Client(base_url=gw.base_url, cookies={COOKIE_NAME: session.cookie})
    assert replay.get("/api/v1/tokens").status_code == 401
    r = replay.get("/console/", follow_redirects=False)
    assert r.status_code == 303 and r.headers["location"] == "/console/login?expired=1"
    replay.close()


def test_expired_forged_and_rotated_sessions_are_refused(gw: Daemon) -> None:
    expired, _ = ConsoleSessions(gw.admin_token, ttl_s=60, clock=lambda: 1_000_000.0).issue()
    foreign, _ = ConsoleSessions("some-other-admin-token").issue()
    valid = login(gw).cookies[COOKIE_NAME]
    tampered = valid[:-3] + ("AAA" if not valid.endswith("AAA") else "BBB")
    for cookie in (expired, foreign, tampered, "garbage"):
        c = httpx.Client(base_url=gw.base_url, cookies={COOKIE_NAME: cookie})
        r = c.get("/api/v1/tokens")
        assert r.status_code == 401, cookie
        assert "admin token required" in r.json()["error"]["message"]
        r = c.get("/console/", follow_redirects=False)
        assert r.status_code == 303 and r.headers["location"].endswith("/login?expired=1")
        c.close()


def test_console_page_carries_no_secret(gw: Daemon, session: Session) -> None:
    page = session.client.get("/console/")
    assert page.headers["cache-control"] == "no-store"
    assert gw.admin_token not in page.text
    assert session.cookie not in page.text  # the cookie stays HttpOnly: scripts never see it
