"""Guessing API tokens or the admin token is rate-limited per client address (surface/auth_guard.py).

The daemon sees the client address uvicorn reports; from loopback it trusts X-Forwarded-For (as from a
local reverse proxy), which lets one test play several clients.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest

from palyra.errors import AuthenticationFailed, RateLimited
from palyra.shared_state import InProcessCounterStore
from palyra.surface.auth_guard import FailedAuthLimiter

from conftest import Daemon, start_daemon
from openai_schema import validate

LIMIT = 4
CHAT = {"model": "deterministic", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def guarded(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(
        tmp_path_factory.mktemp("guessing"), config=f"[server]\nauth_failure_limit_per_minute = {LIMIT}\n"
    )
    yield d
    d.stop()


@pytest.fixture(scope="module")
def good_token(guarded: Daemon) -> str:
    token, _ = guarded.create_token(name="good", scopes=["*"])
    return token


def chat(d: Daemon, address: str, authorization: str | None) -> httpx.Response:
    headers = {"X-Forwarded-For": address}
    if authorization is not None:
        headers["Authorization"] = authorization
    return httpx.post(d.v1 + "/chat/completions", json=CHAT, headers=headers, timeout=10)


def assert_guessing_refused(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    body = r.json()
    validate("ErrorResponse", body)
    assert body["error"]["type"] == "rate_limit_error"
    assert body["error"]["code"] == "rate_limit_exceeded"
    assert "failed authentications" in body["error"]["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 60


def test_guessing_api_tokens_is_answered_with_429(guarded: Daemon, good_token: str) -> None:
    address = "203.0.113.10"
    for i in range(LIMIT):
        r = chat(guarded, address, f"Bearer palyra_guess{i:040d}")
        assert r.status_code == 401, r.text
    assert_guessing_refused(chat(guarded, address, "Bearer palyra_guess-one-too-many"))
    # While blocked, even the right token is refused from there: a 200 among the 429s would tell a
    # guesser which guess was right.
    assert_guessing_refused(chat(guarded, address, f"Bearer {good_token}"))
    # Another client is not affected, and its wrong guesses are still plain 401s.
    assert chat(guarded, "203.0.113.11", f"Bearer {good_token}").status_code == 200
    assert chat(guarded, "203.0.113.11", "Bearer palyra_wrong").status_code == 401


def test_requests_without_a_credential_are_not_counted(guarded: Daemon, good_token: str) -> None:
    address = "203.0.113.20"
    for _ in range(LIMIT * 3):
        assert chat(guarded, address, None).status_code == 401
    assert chat(guarded, address, f"Bearer {good_token}").status_code == 200


def test_guessing_the_admin_token_is_answered_with_429(guarded: Daemon) -> None:
    address = "203.0.113.30"

    def admin(token: str) -> httpx.Response:
        return httpx.get(
            guarded.base_url + "/api/v1/tokens",
            headers={"Authorization": f"Bearer {token}", "X-Forwarded-For": address},
            timeout=10,
        )

    for i in range(LIMIT):
        assert admin(f"not-the-admin-token-{i}").status_code == 401
    assert_guessing_refused(admin("not-the-admin-token-again"))
    assert_guessing_refused(admin(guarded.admin_token))
    with guarded.admin() as c:  # from another address the admin is not locked out
        assert c.get("/tokens", headers={"X-Forwarded-For": "203.0.113.31"}).status_code == 200


def test_memory_endpoints_count_failures_too(guarded: Daemon) -> None:
    address = "203.0.113.40"
    for i in range(LIMIT):
        r = httpx.get(
            guarded.base_url + "/api/v1/memory/items",
            params={"agent_id": "a"},
            headers={"Authorization": f"Bearer palyra_guess{i}", "X-Forwarded-For": address},
            timeout=10,
        )
        assert r.status_code == 401, r.text
    assert_guessing_refused(chat(guarded, address, "Bearer palyra_guess-from-memory-address"))


def test_the_limit_is_on_by_default(daemon: Daemon) -> None:
    """The session daemon runs the defaults: 60 refused credentials a minute per address."""
    address = "198.51.100.77"
    statuses = [chat(daemon, address, f"Bearer palyra_default{i}").status_code for i in range(61)]
    assert statuses[:60] == [401] * 60
    assert statuses[60] == 429


# --- the limiter on its own -------------------------------------------------------------------------


async def test_replicas_sharing_a_counter_store_share_the_count() -> None:
    shared = InProcessCounterStore()  # stands in for Redis: one store, two replicas
    a, b = FailedAuthLimiter(shared, limit_per_minute=3), FailedAuthLimiter(shared, limit_per_minute=3)
    refused = AuthenticationFailed("invalid API token")
    now = 1_000_000.0
    assert await a.failed("x", now, refused) is refused
    assert await b.failed("x", now, refused) is refused
    assert await a.failed("x", now, refused) is refused
    blocked = await b.failed("x", now, refused)
    assert isinstance(blocked, RateLimited)
    with pytest.raises(RateLimited):
        b.check("x", now + 1)
    a.check("x", now + 1)  # a has not seen the count go over yet: one more attempt is counted there
    assert isinstance(await a.failed("x", now + 1, refused), RateLimited)
    with pytest.raises(RateLimited):
        a.check("x", now + 2)


async def test_block_ends_with_the_window() -> None:
    limiter = FailedAuthLimiter(InProcessCounterStore(), limit_per_minute=1)
    refused = AuthenticationFailed("invalid API token")
    start = 60.0 * 1000  # the start of a window
    await limiter.failed("x", start, refused)
    assert isinstance(await limiter.failed("x", start + 10, refused), RateLimited)
    with pytest.raises(RateLimited) as info:
        limiter.check("x", start + 30)
    assert info.value.retry_after_s == pytest.approx(30.0)
    limiter.check("x", start + 60)  # a new window: allowed again
    assert await limiter.failed("x", start + 61, refused) is refused


async def test_zero_turns_the_limit_off() -> None:
    limiter = FailedAuthLimiter(InProcessCounterStore(), limit_per_minute=0)
    refused = AuthenticationFailed("invalid API token")
    for _ in range(100):
        assert await limiter.failed("x", 0.0, refused) is refused
    limiter.check("x", 0.0)
