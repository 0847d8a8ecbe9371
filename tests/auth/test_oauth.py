"""OAuth protocol client, PKCE, pending attempts and refresh policy, against a real fake auth server."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import re
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import aiohttp
import httpx2 as httpx
import pytest

from palyra import netguard
from palyra.auth.oauth import (
    ATTEMPT_TTL_S,
    EXPIRING_WINDOW_S,
    EXPIRY_REFRESH_WINDOW_S,
    OPENAI_AUDIENCE,
    OPENAI_DEFAULT_ENDPOINTS,
    OPENAI_DEFAULT_SCOPES,
    Attempt,
    AttemptError,
    OAuthClient,
    OAuthEndpoints,
    OAuthError,
    PendingAttempts,
    TokenSet,
    authorization_denied,
    authorization_url,
    endpoints_from,
    new_pkce,
    new_state,
    normalize_scopes,
    refresh_backoff_ms,
)
from palyra.netguard import UnsafeUrl

from fakes.oauth_server import FakeAuthServer

CLIENT_ID = "palyra-test-client"
REDIRECT_URI = "http://127.0.0.1:9/console/v1/auth/providers/openai/callback"
B64URL = re.compile(r"[A-Za-z0-9_-]+")


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def auth_server() -> Iterator[FakeAuthServer]:
    with FakeAuthServer(client_id=CLIENT_ID) as fake:
        yield fake


@pytest.fixture
def fake(auth_server: FakeAuthServer) -> Iterator[FakeAuthServer]:
    auth_server.reset_state()
    yield auth_server
    auth_server.reset_state()


@pytest.fixture
async def client() -> AsyncIterator[OAuthClient]:
    # The fake listens on 127.0.0.1, which the private-network guard refuses unless allowed.
    oauth = OAuthClient(allow_private=True, timeout_s=5.0)
    yield oauth
    await oauth.close()


class Clock:
    def __init__(self, now: float = 1_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def new_attempt(store: PendingAttempts, endpoints: OAuthEndpoints, **overrides: Any) -> Attempt:
    args: dict[str, Any] = {
        "provider": "openai",
        "profile_id": None,
        "profile_name": "OpenAI",
        "scope": "global",
        "client_id": CLIENT_ID,
        "client_secret": None,
        "scopes": OPENAI_DEFAULT_SCOPES,
        "redirect_uri": REDIRECT_URI,
        "endpoints": endpoints,
    }
    args.update(overrides)
    return store.create(**args)


async def authorize(url: str) -> dict[str, str]:
    """Play the browser: open the authorization URL and read the redirect without following it."""
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=5) as http:
        resp = await http.get(url)
    assert resp.status_code == 302, resp.text
    location = resp.headers["location"]
    assert location.startswith(REDIRECT_URI + "?")
    return {k: v[0] for k, v in parse_qs(urlsplit(location).query).items()}


async def connect(fake: FakeAuthServer, client: OAuthClient) -> TokenSet:
    """A complete authorization: attempt, browser redirect, callback, code exchange."""
    store = PendingAttempts()
    attempt = new_attempt(store, fake.endpoints)
    params = await authorize(attempt.authorization_url(audience=OPENAI_AUDIENCE))
    taken = store.take(params["state"])
    assert taken.verifier is not None
    return await client.exchange_code(
        fake.endpoints,
        client_id=taken.client_id,
        client_secret=taken.client_secret,
        redirect_uri=taken.redirect_uri,
        code=params["code"],
        verifier=taken.verifier,
    )


# --------------------------------------------------------------------------- PKCE, state, URLs


def test_pkce_challenge_is_the_s256_of_the_verifier() -> None:
    pkce = new_pkce()
    assert pkce.method == "S256"
    assert len(pkce.verifier) == 43 and B64URL.fullmatch(pkce.verifier)  # 32 bytes, no padding
    assert pkce.challenge == b64url(hashlib.sha256(pkce.verifier.encode()).digest())
    assert "=" not in pkce.challenge
    assert new_pkce().verifier != pkce.verifier
    assert pkce.verifier not in repr(pkce)


def test_state_is_32_random_bytes_base64url() -> None:
    states = {new_state() for _ in range(50)}
    assert len(states) == 50
    assert all(len(s) == 43 and B64URL.fullmatch(s) for s in states)


def test_authorization_url_carries_every_parameter_encoded() -> None:
    url = authorization_url(
        OPENAI_DEFAULT_ENDPOINTS,
        client_id="client id&x=1",
        redirect_uri="https://gw.example.com/cb?a=1",
        scopes=["openid", " profile ", "openid", "offline_access"],
        state="st",
        challenge="ch" * 22,
        audience=OPENAI_AUDIENCE,
    )
    parts = urlsplit(url)
    assert f"{parts.scheme}://{parts.netloc}{parts.path}" == "https://auth.openai.com/authorize"
    assert "+" not in parts.query  # spaces as %20
    assert parse_qs(parts.query, strict_parsing=True) == {
        "response_type": ["code"],
        "client_id": ["client id&x=1"],
        "redirect_uri": ["https://gw.example.com/cb?a=1"],
        "scope": ["openid profile offline_access"],
        "code_challenge": ["ch" * 22],
        "code_challenge_method": ["S256"],
        "state": ["st"],
        "audience": [OPENAI_AUDIENCE],
    }
    without = authorization_url(
        OPENAI_DEFAULT_ENDPOINTS,
        client_id="c",
        redirect_uri=REDIRECT_URI,
        scopes=(),
        state="s",
        challenge="x",
    )
    assert "audience" not in parse_qs(urlsplit(without).query)


def test_scopes_are_trimmed_deduplicated_and_checked() -> None:
    assert normalize_scopes([" openid", "", "email", "openid "]) == ("openid", "email")
    with pytest.raises(ValueError):
        normalize_scopes(["openid email"])
    with pytest.raises(TypeError):
        normalize_scopes("openid")


def test_openai_constants() -> None:
    assert (
        OAuthEndpoints(
            "https://auth.openai.com/authorize",
            "https://auth0.openai.com/oauth/token",
            "https://auth0.openai.com/oauth/revoke",
        )
        == OPENAI_DEFAULT_ENDPOINTS
    )
    assert OPENAI_DEFAULT_SCOPES == ("openid", "profile", "email", "offline_access")
    assert OPENAI_AUDIENCE == "https://api.openai.com/v1"
    assert (EXPIRY_REFRESH_WINDOW_S, EXPIRING_WINDOW_S, ATTEMPT_TTL_S) == (60, 900, 600)


def test_endpoints_from_validates_each_url() -> None:
    eps = endpoints_from(
        "https://Auth.Example.com/authorize/", "https://auth.example.com/token", None, allow_private=False
    )
    assert eps == OAuthEndpoints("https://auth.example.com/authorize", "https://auth.example.com/token", None)
    with pytest.raises(UnsafeUrl, match=r"oauth\.token_url"):
        endpoints_from("https://auth.example.com/a", "https://10.0.0.1/token", allow_private=False)
    with pytest.raises(UnsafeUrl, match=r"oauth\.revoke_url"):
        endpoints_from(
            "https://auth.example.com/a",
            "https://auth.example.com/t",
            "http://example.com/r",
            allow_private=True,
        )
    with pytest.raises(UnsafeUrl, match=r"oauth\.authorize_url"):
        endpoints_from("https://u:p@auth.example.com/a", "https://auth.example.com/t", allow_private=False)
    assert endpoints_from(
        "http://127.0.0.1:1/a", "http://127.0.0.1:1/t", "http://127.0.0.1:1/r", allow_private=True
    ).revoke_url == ("http://127.0.0.1:1/r")


# --------------------------------------------------------------------------- the code flow


async def test_full_flow_against_the_fake(fake: FakeAuthServer, client: OAuthClient) -> None:
    store = PendingAttempts()
    attempt = new_attempt(store, fake.endpoints, client_secret="cs-attempt-secret")
    params = await authorize(attempt.authorization_url(audience=OPENAI_AUDIENCE))
    assert params["state"] == attempt.state
    authorize_query = fake.requests_for("/authorize")[0].query
    assert authorize_query["code_challenge"] == attempt.challenge
    assert authorize_query["scope"] == "openid profile email offline_access"
    assert authorize_query["audience"] == OPENAI_AUDIENCE

    taken = store.take(params["state"])
    assert taken is attempt and taken.verifier is not None
    tokens = await client.exchange_code(
        fake.endpoints,
        client_id=taken.client_id,
        client_secret=None,
        redirect_uri=taken.redirect_uri,
        code=params["code"],
        verifier=taken.verifier,
    )
    assert tokens.access_token.startswith("fake-access-")
    assert tokens.refresh_token is not None and tokens.refresh_token.startswith("fake-refresh-")
    assert tokens.expires_in_s == 3600.0
    assert tokens.scope == "openid profile email offline_access"
    assert tokens.access_token in fake.valid_access_tokens

    (rec,) = fake.token_requests
    assert rec.method == "POST"
    assert rec.headers["content-type"] == "application/x-www-form-urlencoded"
    assert rec.headers["accept"] == "application/json"
    assert rec.form == {
        "grant_type": "authorization_code",
        "client_id": CLIENT_ID,
        "redirect_uri": REDIRECT_URI,
        "code": params["code"],
        "code_verifier": taken.verifier,
    }

    status = store.succeed(attempt.state, profile_id="openai-main")
    assert (status.status, status.profile_id) == ("succeeded", "openai-main")
    assert status.completed_at is not None
    assert attempt.client_secret is None and attempt.verifier is None  # dropped once finished
    assert store.get(attempt.state) == status


async def test_wrong_verifier_is_refused_with_400(fake: FakeAuthServer, client: OAuthClient) -> None:
    attempt = new_attempt(PendingAttempts(), fake.endpoints)
    params = await authorize(attempt.authorization_url())
    with pytest.raises(OAuthError) as err:
        await client.exchange_code(
            fake.endpoints,
            client_id=CLIENT_ID,
            client_secret=None,
            redirect_uri=REDIRECT_URI,
            code=params["code"],
            verifier=new_pkce().verifier,
        )
    assert (err.value.kind, err.value.status, err.value.error_code) == ("status", 400, "invalid_grant")
    assert not err.value.retryable
    assert err.value.message == "oauth token endpoint returned status 400"


async def test_a_code_cannot_be_replayed(fake: FakeAuthServer, client: OAuthClient) -> None:
    store = PendingAttempts()
    attempt = new_attempt(store, fake.endpoints)
    params = await authorize(attempt.authorization_url())
    verifier = store.take(params["state"]).verifier
    assert verifier is not None
    args: dict[str, Any] = {
        "client_id": CLIENT_ID,
        "client_secret": None,
        "redirect_uri": REDIRECT_URI,
        "code": params["code"],
        "verifier": verifier,
    }
    await client.exchange_code(fake.endpoints, **args)
    with pytest.raises(OAuthError) as err:
        await client.exchange_code(fake.endpoints, **args)
    assert (err.value.status, err.value.error_code) == (400, "invalid_grant")
    with pytest.raises(AttemptError) as replay:
        store.take(params["state"])  # the callback itself cannot be replayed either
    assert replay.value.reason == "used"


async def test_exchange_requires_both_tokens(fake: FakeAuthServer, client: OAuthClient) -> None:
    fake.respond_next({"access_token": "fake-access-x", "token_type": "Bearer", "expires_in": 60})
    with pytest.raises(OAuthError) as err:
        await client.exchange_code(
            fake.endpoints,
            client_id=CLIENT_ID,
            client_secret=None,
            redirect_uri=REDIRECT_URI,
            code="c",
            verifier="v",
        )
    assert err.value.kind == "invalid_response"
    assert err.value.message == "oauth token response was invalid"


async def test_client_secret_is_sent_and_checked(client: OAuthClient) -> None:
    with FakeAuthServer(client_id=CLIENT_ID, client_secret="cs-right") as fake:
        store = PendingAttempts()
        for secret, ok in (("cs-wrong", False), ("cs-right", True)):
            attempt = new_attempt(store, fake.endpoints, client_secret=secret)
            params = await authorize(attempt.authorization_url())
            taken = store.take(params["state"])
            assert taken.verifier is not None
            call = client.exchange_code(
                fake.endpoints,
                client_id=CLIENT_ID,
                client_secret=taken.client_secret,
                redirect_uri=REDIRECT_URI,
                code=params["code"],
                verifier=taken.verifier,
            )
            if ok:
                assert (await call).refresh_token
            else:
                with pytest.raises(OAuthError) as err:
                    await call
                assert (err.value.status, err.value.error_code) == (401, "invalid_client")
        assert [r.form["client_secret"] for r in fake.token_requests if r.form] == ["cs-wrong", "cs-right"]


async def test_denied_authorization(fake: FakeAuthServer) -> None:
    fake.deny_next = True
    attempt = new_attempt(PendingAttempts(), fake.endpoints)
    params = await authorize(attempt.authorization_url())
    assert "code" not in params
    assert params["state"] == attempt.state
    err = authorization_denied(params["error"], params.get("error_description"))
    assert (err.kind, err.error_code, err.status, err.retryable) == ("denied", "access_denied", None, False)
    assert err.message == "oauth authorization was denied"
    assert err.detail == "The user denied the request"

    hostile = authorization_denied("<script>", "Bearer abcdefghijklmnop sk-abcdefghijklmnopqrstuvwxyz\r\nx")
    assert hostile.error_code is None
    assert hostile.detail is not None
    assert "abcdefghijklmnop" not in hostile.detail and "\n" not in hostile.detail
    assert authorization_denied("access_denied").detail == "The authorization was denied."


# --------------------------------------------------------------------------- refresh


async def test_refresh_rotates_the_refresh_token(fake: FakeAuthServer, client: OAuthClient) -> None:
    first = await connect(fake, client)
    assert first.refresh_token is not None
    second = await client.refresh(
        fake.endpoints,
        client_id=CLIENT_ID,
        client_secret=None,
        refresh_token=first.refresh_token,
        scopes=["openid", "offline_access"],
    )
    assert second.refresh_token is not None and second.refresh_token != first.refresh_token
    assert second.access_token != first.access_token
    assert second.access_token in fake.valid_access_tokens
    assert fake.token_requests[-1].form == {
        "grant_type": "refresh_token",
        "refresh_token": first.refresh_token,
        "client_id": CLIENT_ID,
        "scope": "openid offline_access",
    }

    with pytest.raises(OAuthError) as err:  # the rotated-out token is dead
        await client.refresh(
            fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token=first.refresh_token
        )
    assert (err.value.status, err.value.error_code) == (400, "invalid_grant")
    third = await client.refresh(
        fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token=second.refresh_token
    )
    assert third.access_token in fake.valid_access_tokens


async def test_refresh_without_rotation_returns_no_refresh_token(
    fake: FakeAuthServer, client: OAuthClient
) -> None:
    fake.respond_next({"access_token": "fake-access-new", "token_type": "Bearer"})
    tokens = await client.refresh(fake.endpoints, client_id=None, client_secret=None, refresh_token="r")
    assert tokens == TokenSet("fake-access-new", None, None, None)
    assert fake.token_requests[-1].form == {"grant_type": "refresh_token", "refresh_token": "r"}


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        ({"expires_in": 3600}, 3600.0),
        ({"expires_in": 12.5}, 12.5),
        ({"expires_in": " 120 "}, 120.0),
        ({"expired_in": "120"}, 120.0),
        ({"expired_in": 90}, 90.0),
        ({"expires_in": 30, "expired_in": 999}, 30.0),
        ({}, None),
        ({"expires_in": None}, None),
    ],
)
async def test_expiry_accepts_numbers_numeric_strings_and_the_alias(
    fake: FakeAuthServer, client: OAuthClient, body: dict[str, Any], expected: float | None
) -> None:
    fake.respond_next({"access_token": "fake-access-1", **body})
    tokens = await client.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert tokens.expires_in_s == expected


async def test_fake_reports_the_alias_as_a_string(fake: FakeAuthServer, client: OAuthClient) -> None:
    fake.expires_in_field, fake.expires_in = "expired_in", "120"
    tokens = await connect(fake, client)
    assert tokens.expires_in_s == 120.0


@pytest.mark.parametrize(
    "body",
    [
        {"refresh_token": "fake-refresh-x"},
        {"access_token": "   "},
        {"access_token": None},
        {"access_token": 12345},
        {"access_token": "a", "refresh_token": 7},
        {"access_token": "a", "expires_in": "oops"},
        {"access_token": "a", "expires_in": -5},
        {"access_token": "a", "expires_in": True},
        {"access_token": "a", "expires_in": "nan"},
        ["access_token", "a"],
        "not json at all",
        "",
    ],
)
async def test_unusable_token_responses_are_invalid(
    fake: FakeAuthServer, client: OAuthClient, body: Any
) -> None:
    fake.respond_next(body)
    with pytest.raises(OAuthError) as err:
        await client.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert err.value.kind == "invalid_response"
    assert err.value.status is None and not err.value.retryable
    assert err.value.__cause__ is None and err.value.__context__ is None


@pytest.mark.parametrize(("status", "retryable"), [(500, True), (503, True), (429, True), (401, False)])
async def test_error_statuses(
    fake: FakeAuthServer, client: OAuthClient, status: int, retryable: bool
) -> None:
    fake.fail_next(status)
    with pytest.raises(OAuthError) as err:
        await client.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert (err.value.kind, err.value.status, err.value.retryable) == ("status", status, retryable)
    assert str(err.value) == f"oauth token endpoint returned status {status}"


async def test_redirects_are_never_followed(fake: FakeAuthServer, client: OAuthClient) -> None:
    fake.fail_next(307, headers={"Location": fake.url + "/elsewhere"})
    with pytest.raises(OAuthError) as err:
        await client.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert (err.value.kind, err.value.status, err.value.retryable) == ("status", 307, False)
    assert err.value.message == "oauth token endpoint returned status 307"
    assert fake.requests_for("/elsewhere") == []


async def test_timeout_is_a_transport_failure(fake: FakeAuthServer) -> None:
    fake.delay_next(3.0)
    oauth = OAuthClient(allow_private=True, timeout_s=0.2)
    try:
        started = time.monotonic()
        with pytest.raises(OAuthError) as err:
            await oauth.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
        assert time.monotonic() - started < 2.0
    finally:
        await oauth.close()
    assert (err.value.kind, err.value.status, err.value.retryable) == ("transport", None, True)
    assert err.value.message == "oauth token endpoint transport failure"


async def test_connection_refused_is_a_transport_failure(client: OAuthClient) -> None:
    with FakeAuthServer() as gone:
        endpoints = gone.endpoints
    with pytest.raises(OAuthError) as err:
        await client.refresh(endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert err.value.kind == "transport" and err.value.retryable


# --------------------------------------------------------------------------- revoke


async def test_revoke_retries_5xx_then_succeeds(fake: FakeAuthServer, client: OAuthClient) -> None:
    tokens = await connect(fake, client)
    assert tokens.refresh_token is not None
    fake.fail_next(503, path="/oauth/revoke")
    fake.fail_next(502, path="/oauth/revoke")
    await client.revoke(
        fake.endpoints, client_id=CLIENT_ID, client_secret=None, token=tokens.refresh_token, delay_s=0.01
    )
    requests = fake.revoke_requests
    assert len(requests) == 3
    assert requests[-1].form == {"token": tokens.refresh_token, "client_id": CLIENT_ID}
    assert requests[-1].headers["accept"] == "application/json"
    assert tokens.access_token not in fake.valid_access_tokens
    with pytest.raises(OAuthError) as err:  # a revoked refresh token cannot be used any more
        await client.refresh(
            fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token=tokens.refresh_token
        )
    assert err.value.error_code == "invalid_grant"


async def test_revoke_gives_up_after_the_last_attempt(fake: FakeAuthServer, client: OAuthClient) -> None:
    for _ in range(3):
        fake.fail_next(503, path="/oauth/revoke")
    with pytest.raises(OAuthError) as err:
        await client.revoke(fake.endpoints, client_id=CLIENT_ID, client_secret=None, token="t", delay_s=0.01)
    assert (err.value.kind, err.value.status, err.value.endpoint) == ("status", 503, "revocation")
    assert err.value.message == "oauth revocation endpoint returned status 503"
    assert len(fake.revoke_requests) == 3


async def test_revoke_does_not_retry_a_4xx(fake: FakeAuthServer, client: OAuthClient) -> None:
    fake.fail_next(400, path="/oauth/revoke")
    with pytest.raises(OAuthError) as err:
        await client.revoke(fake.endpoints, client_id=CLIENT_ID, client_secret=None, token="t", delay_s=0.01)
    assert err.value.status == 400
    assert len(fake.revoke_requests) == 1


async def test_revoke_needs_a_revocation_url(client: OAuthClient) -> None:
    with pytest.raises(ValueError, match="revocation"):
        await client.revoke(
            OAuthEndpoints("https://a.example.com/a", "https://a.example.com/t"),
            client_id=CLIENT_ID,
            client_secret=None,
            token="t",
        )


# --------------------------------------------------------------------------- private-network guard


def _no_session() -> aiohttp.ClientSession:
    raise AssertionError("a session was opened for a refused destination")


@pytest.mark.parametrize(
    "token_url", ["https://10.0.0.1/token", "https://169.254.169.254/latest", "https://localhost/token"]
)
async def test_private_token_urls_are_refused_before_connecting(token_url: str) -> None:
    oauth = OAuthClient(session_factory=_no_session)
    endpoints = OAuthEndpoints("https://auth.example.com/authorize", token_url, token_url)
    with pytest.raises(OAuthError) as err:
        await oauth.refresh(endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    assert (err.value.kind, err.value.retryable) == ("refused", False)
    assert err.value.detail is not None and "oauth.token_url" in err.value.detail
    with pytest.raises(OAuthError) as revoke_err:
        await oauth.revoke(endpoints, client_id=CLIENT_ID, client_secret=None, token="t", delay_s=0)
    assert revoke_err.value.kind == "refused"
    await oauth.close()


async def test_loopback_fake_is_refused_unless_allowed(fake: FakeAuthServer) -> None:
    guarded = OAuthClient()
    try:
        with pytest.raises(OAuthError) as err:
            await guarded.refresh(fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
        assert err.value.kind == "refused"
    finally:
        await guarded.close()
    assert fake.requests == []
    fake.respond_next({"access_token": "fake-access-ok"})
    allowed = OAuthClient(allow_private=True)
    try:
        tokens = await allowed.refresh(
            fake.endpoints, client_id=CLIENT_ID, client_secret=None, refresh_token="r"
        )
    finally:
        await allowed.close()
    assert tokens.access_token == "fake-access-ok"


async def test_the_session_resolver_refuses_what_the_pre_check_missed(
    fake: FakeAuthServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A DNS answer that turns private after the pre-check (rebinding) is refused when connecting."""

    async def passes(url: str, **_: Any) -> None:
        return None

    monkeypatch.setattr(netguard, "validate_base_url", lambda url, **_: url)
    monkeypatch.setattr(netguard, "check_destination", passes)
    oauth = OAuthClient()
    rebound = OAuthEndpoints("https://a.example.com/a", f"http://localhost:{fake.port}/oauth/token")
    try:
        with pytest.raises(OAuthError) as err:
            await oauth.refresh(rebound, client_id=CLIENT_ID, client_secret=None, refresh_token="r")
    finally:
        await oauth.close()
    assert err.value.kind == "transport"
    assert fake.requests == []


# --------------------------------------------------------------------------- secrets stay out of text


async def test_errors_and_token_sets_never_show_token_values(
    fake: FakeAuthServer, client: OAuthClient
) -> None:
    tokens = await connect(fake, client)
    assert tokens.refresh_token is not None
    for text in (repr(tokens), str(tokens), f"{tokens}"):
        assert tokens.access_token not in text and tokens.refresh_token not in text
        assert "<redacted>" in text

    echoed = f"refresh_token {tokens.refresh_token} is invalid; access {tokens.access_token}"
    failures: list[OAuthError] = []
    fake.fail_next(400, {"error": "invalid_grant", "error_description": echoed})
    fake.fail_next(500, echoed)
    fake.respond_next({"access_token": 1, "refresh_token": tokens.refresh_token, "error": echoed})
    fake.respond_next(echoed)
    for _ in range(4):
        with pytest.raises(OAuthError) as err:
            await client.refresh(
                fake.endpoints,
                client_id=CLIENT_ID,
                client_secret="cs-secret",
                refresh_token=tokens.refresh_token,
            )
        failures.append(err.value)
    assert [f.kind for f in failures] == ["status", "status", "invalid_response", "invalid_response"]
    for failure in failures:
        texts = (str(failure), repr(failure), failure.message, failure.detail or "", failure.error_code or "")
        for text in texts:
            for secret in (tokens.refresh_token, tokens.access_token, "cs-secret"):
                assert secret not in text


def test_attempt_repr_hides_secrets() -> None:
    attempt = new_attempt(PendingAttempts(), OPENAI_DEFAULT_ENDPOINTS, client_secret="cs-hidden")
    assert attempt.verifier is not None
    assert "cs-hidden" not in repr(attempt) and attempt.verifier not in repr(attempt)


# --------------------------------------------------------------------------- refresh backoff


@pytest.mark.parametrize(
    ("provider", "count", "expected"),
    [
        ("openai", 1, 15_000),
        ("openai", 2, 30_000),
        ("openai", 3, 60_000),
        ("openai", 5, 240_000),
        ("openai", 6, 300_000),
        ("openai", 20, 300_000),
        ("openai", 10_000, 300_000),
        ("OpenAI", 1, 15_000),
        ("anthropic", 1, 20_000),
        ("anthropic", 2, 40_000),
        ("anthropic", 6, 600_000),
        ("anthropic", 20, 600_000),
        ("minimax", 1, 30_000),
        ("custom", 3, 120_000),
        ("custom", 20, 1_800_000),
        ("openai", 0, 0),
    ],
)
def test_refresh_backoff(provider: str, count: int, expected: int) -> None:
    assert refresh_backoff_ms(provider, count) == expected


# --------------------------------------------------------------------------- pending attempts


def test_attempt_holds_a_fresh_pkce_pair_and_state() -> None:
    store = PendingAttempts()
    a = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS, client_secret="cs", scopes=[" openid ", "openid"])
    b = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS)
    assert a.state != b.state and a.verifier != b.verifier
    assert a.verifier is not None
    assert a.challenge == b64url(hashlib.sha256(a.verifier.encode()).digest())
    assert a.scopes == ("openid",)
    assert a.client_secret == "cs"
    assert len(store) == 2
    query = parse_qs(urlsplit(a.authorization_url()).query)
    assert query["state"] == [a.state] and query["code_challenge"] == [a.challenge]


def test_unknown_state_is_refused() -> None:
    store = PendingAttempts()
    new_attempt(store, OPENAI_DEFAULT_ENDPOINTS)
    with pytest.raises(AttemptError) as err:
        store.take(new_state())
    assert err.value.reason == "unknown"
    assert store.get("nope") is None
    with pytest.raises(AttemptError):
        store.fail("nope", message="x")


def test_an_attempt_is_taken_once() -> None:
    store = PendingAttempts()
    attempt = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS)
    assert store.take(attempt.state) is attempt
    with pytest.raises(AttemptError) as err:
        store.take(attempt.state)
    assert err.value.reason == "used"
    status = store.fail(attempt.state, message="oauth token endpoint returned status 400")
    assert status.status == "failed" and status.profile_id is None
    with pytest.raises(AttemptError):
        store.succeed(attempt.state, profile_id="p")
    with pytest.raises(AttemptError) as again:
        store.take(attempt.state)
    assert again.value.reason == "used"


def test_attempts_expire_after_the_ttl_and_are_forgotten_later() -> None:
    clock = Clock()
    store = PendingAttempts(clock=clock)
    attempt = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS, client_secret="cs")
    assert attempt.expires_at == clock.now + ATTEMPT_TTL_S

    clock.now += ATTEMPT_TTL_S - 1
    pending = store.get(attempt.state)
    assert pending is not None and pending.status == "pending"

    clock.now += 1
    with pytest.raises(AttemptError) as err:
        store.take(attempt.state)
    assert err.value.reason == "expired"
    expired = store.get(attempt.state)
    assert expired is not None and expired.status == "failed" and expired.completed_at == clock.now
    assert attempt.client_secret is None and attempt.verifier is None

    clock.now += ATTEMPT_TTL_S - 1
    store.cleanup()
    assert store.get(attempt.state) is not None  # still pollable for a while
    clock.now += 1
    store.cleanup()
    assert store.get(attempt.state) is None and len(store) == 0
    with pytest.raises(AttemptError) as gone:
        store.take(attempt.state)
    assert gone.value.reason == "unknown"


def test_a_taken_attempt_is_not_expired_under_its_exchange() -> None:
    clock = Clock()
    store = PendingAttempts(clock=clock)
    attempt = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS, client_secret="cs")
    clock.now += ATTEMPT_TTL_S - 0.5
    store.take(attempt.state)
    clock.now += 5  # the code exchange took a few seconds
    status = store.succeed(attempt.state, profile_id="openai-1", message="connected")
    assert status.status == "succeeded" and status.message == "connected"
    assert status.completed_at == clock.now
    clock.now += ATTEMPT_TTL_S
    store.cleanup()
    assert store.get(attempt.state) is None


def test_create_sweeps_old_attempts() -> None:
    clock = Clock()
    store = PendingAttempts(clock=clock)
    old = new_attempt(store, OPENAI_DEFAULT_ENDPOINTS)
    clock.now += 2 * ATTEMPT_TTL_S
    new_attempt(store, OPENAI_DEFAULT_ENDPOINTS)
    assert store.get(old.state) is None and len(store) == 1


# --------------------------------------------------------------------------- the fake itself


async def test_fake_access_tokens_expire_after_their_ttl(client: OAuthClient) -> None:
    with FakeAuthServer(client_id=CLIENT_ID, token_ttl_s=0.2) as fake:
        tokens = await connect(fake, client)
        assert fake.is_valid_access_token(tokens.access_token)
        assert re.fullmatch(r"fake-access-\d+-[A-Za-z0-9_-]+", tokens.access_token)
        await asyncio.sleep(0.3)
        assert not fake.is_valid_access_token(tokens.access_token)


async def test_fake_authorize_validates_its_parameters(fake: FakeAuthServer) -> None:
    good = authorization_url(
        fake.endpoints,
        client_id=CLIENT_ID,
        redirect_uri=REDIRECT_URI,
        scopes=["openid"],
        state="s",
        challenge=new_pkce().challenge,
    )
    async with httpx.AsyncClient(follow_redirects=False, trust_env=False, timeout=5) as http:
        for bad in (
            good.replace("code_challenge_method=S256", "code_challenge_method=plain"),
            good.replace(f"client_id={CLIENT_ID}", "client_id=someone-else"),
            good.replace("response_type=code", "response_type=token"),
            good.replace("state=s", "state="),
        ):
            resp = await http.get(bad)
            assert resp.status_code == 400, bad
            assert "location" not in resp.headers
