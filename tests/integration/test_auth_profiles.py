"""Auth profiles end to end: the connect flow, OAuth with PKCE, rotation, refresh, revocation and scope
enforcement across agents, with fake upstreams and a fake authorization server, through /v1."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx2 as httpx
import pytest

from conftest import Daemon, start_daemon
from fakes import FakeAnthropic, FakeOpenAI
from fakes.oauth_server import FakeAuthServer
from test_lifecycle import cli

GOOD_KEY = "sk-proj-GOODKEY-canary-7f3a9b2c1d"
AGENT_KEY = "sk-proj-AGENTKEY-canary-11aa22bb33"
ANTHROPIC_KEY = "sk-ant-ANTHROPICKEY-canary-44cc55dd"
CLIENT_SECRET = "oauth-client-secret-canary-66ee77ff"


class Env:
    def __init__(self) -> None:
        self.checked = FakeOpenAI(api_key=GOOD_KEY).start()  # validates keys like OpenAI would
        self.open = FakeOpenAI().start()  # accepts anything; we inspect the Authorization header
        self.an = FakeAnthropic(api_key=ANTHROPIC_KEY).start()
        self.auth = FakeAuthServer(client_secret=CLIENT_SECRET).start()

    def stop(self) -> None:
        for f in (self.checked, self.open, self.an, self.auth):
            f.stop()


@pytest.fixture(scope="module")
def env() -> Iterator[Env]:
    e = Env()
    yield e
    e.stop()


def provider(pid: str, kind: str, url: str, extra: str = "") -> str:
    return (
        f'[[model_provider.providers]]\nprovider_id = "{pid}"\nkind = "{kind}"\nbase_url = "{url}"\n'
        f"allow_private_base_url = true\nmax_retries = 0\n{extra}\n"
    )


def model(mid: str, pid: str) -> str:
    return f'[[model_provider.models]]\nmodel_id = "{mid}"\nprovider_id = "{pid}"\n'


@pytest.fixture(scope="module")
def gw(env: Env, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    auth = env.auth.endpoints
    config = (
        "[model_provider]\nfailover_enabled = false\n"
        + provider("openai", "openai_compatible", env.checked.base_url, 'auth_profile_id = "openai-main"')
        + provider("shared", "openai_compatible", env.open.base_url, 'auth_profile_id = "shared-default"')
        + provider("alpha-only", "openai_compatible", env.open.base_url, 'auth_profile_id = "alpha-private"')
        + provider("oauthed", "openai_compatible", env.open.base_url, 'auth_profile_id = "openai-oauth"')
        + provider("anthropic", "anthropic", env.an.base_url, 'auth_profile_id = "anthropic-main"')
        + model("gpt-4o-mini", "openai")
        + model("shared-model", "shared")
        + model("alpha-model", "alpha-only")
        + model("oauth-model", "oauthed")
        + model("claude", "anthropic")
        + "[auth]\nprofile_cache_ttl_s = 30\n"
        + "[auth.oauth.openai]\n"
        + f'authorize_url = "{auth.authorize_url}"\ntoken_url = "{auth.token_url}"\n'
        + f'revoke_url = "{auth.revoke_url}"\naudience = "https://api.openai.com/v1"\nallow_private = true\n'
    )
    d = start_daemon(tmp_path_factory.mktemp("auth"), config=config)
    yield d
    d.stop()


@pytest.fixture(scope="module")
def token(gw: Daemon) -> str:
    value, _ = gw.create_token(name="auth-tests", scopes=["*"])
    return value


def connect(gw: Daemon, provider: str, **body: Any) -> httpx.Response:
    with gw.admin() as c:
        return c.post(f"/auth/providers/{provider}/api-key", json=body)


def chat(gw: Daemon, token: str, model_id: str, agent: str | None = None) -> httpx.Response:
    headers = {"Authorization": f"Bearer {token}"}
    if agent:
        headers["X-Palyra-Agent"] = agent
    return httpx.post(
        gw.v1 + "/chat/completions",
        json={"model": model_id, "messages": [{"role": "user", "content": "hi"}]},
        headers=headers,
        timeout=20,
    )


def vault_refs(gw: Daemon) -> set[str]:
    with gw.admin() as c:
        return {m["ref"] for m in c.get("/vault").json()["data"]}


# --- the connect flow ----------------------------------------------------------------------------


def test_connect_validates_and_nothing_persists_on_failure(gw: Daemon, env: Env) -> None:
    before = vault_refs(gw)
    r = connect(
        gw,
        "openai",
        profile_id="openai-main",
        profile_name="OpenAI main",
        api_key="sk-wrong-key-000000",
        provider_id="openai",
    )
    assert r.status_code == 400
    err = r.json()["error"]
    assert err["code"] == "invalid_credential" or err["validation_errors"][0]["code"] == "invalid_credential"
    assert err["validation_errors"][0]["field"] == "api_key"
    env.checked.script("/v1/models", FakeOpenAI.error_reply(429))
    assert (
        connect(gw, "openai", profile_id="openai-main", api_key=GOOD_KEY, provider_id="openai").status_code
        == 429
    )
    env.checked.script("/v1/models", *[FakeOpenAI.error_reply(503)])
    assert (
        connect(gw, "openai", profile_id="openai-main", api_key=GOOD_KEY, provider_id="openai").status_code
        == 503
    )
    with gw.admin() as c:
        assert c.get("/auth/profiles/openai-main").status_code == 404
    assert vault_refs(gw) == before
    # And the good key goes through, lands in the vault and serves requests.
    r = connect(
        gw,
        "openai",
        profile_id="openai-main",
        profile_name="OpenAI main",
        api_key=GOOD_KEY,
        provider_id="openai",
    )
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "saved" and r.json()["profile"]["health"] == "static"
    assert GOOD_KEY not in r.text
    assert len(vault_refs(gw)) == len(before) + 1


def test_requests_use_the_profile_key(gw: Daemon, env: Env, token: str) -> None:
    r = chat(gw, token, "gpt-4o-mini")
    assert r.status_code == 200, r.text
    assert env.checked.last.headers["authorization"] == f"Bearer {GOOD_KEY}"


def test_rotation_takes_effect_without_restart(gw: Daemon, env: Env, token: str) -> None:
    assert (
        connect(
            gw, "openai", profile_id="shared-default", api_key="sk-first-rotation-aaaa", validate=False
        ).status_code
        == 200
    )
    assert chat(gw, token, "shared-model").status_code == 200
    assert env.open.last.headers["authorization"] == "Bearer sk-first-rotation-aaaa"
    refs_before = vault_refs(gw)
    r = connect(gw, "openai", profile_id="shared-default", api_key="sk-second-rotation-bbbb", validate=False)
    assert r.json()["state"] == "rotated"
    assert vault_refs(gw) == refs_before  # same id, same vault entry
    assert chat(gw, token, "shared-model").status_code == 200
    assert env.open.last.headers["authorization"] == "Bearer sk-second-rotation-bbbb"


def test_agent_profiles_are_used_for_their_agent_only(gw: Daemon, env: Env, token: str) -> None:
    connect(gw, "openai", profile_id="shared-default", api_key="sk-global-key-cccc", validate=False)
    r = connect(
        gw,
        "openai",
        profile_id="alpha-own",
        api_key=AGENT_KEY,
        validate=False,
        scope={"kind": "agent", "agent_id": "alpha"},
    )
    assert r.status_code == 200, r.text
    assert chat(gw, token, "shared-model", agent="alpha").status_code == 200
    assert env.open.last.headers["authorization"] == f"Bearer {AGENT_KEY}"
    assert chat(gw, token, "shared-model", agent="beta").status_code == 200
    assert env.open.last.headers["authorization"] == "Bearer sk-global-key-cccc"
    assert chat(gw, token, "shared-model").status_code == 200
    assert env.open.last.headers["authorization"] == "Bearer sk-global-key-cccc"
    # A provider whose only profile belongs to alpha serves alpha and nobody else.
    connect(
        gw,
        "openai",
        profile_id="alpha-private",
        api_key="sk-alpha-private-dddd",
        validate=False,
        scope={"kind": "agent", "agent_id": "alpha"},
    )
    calls = len(env.open.requests)
    denied = chat(gw, token, "alpha-model", agent="beta")
    assert denied.status_code == 502 and denied.json()["error"]["code"] == "permission_denied"
    assert "scoped to agent 'alpha'" in denied.json()["error"]["message"]
    assert len(env.open.requests) == calls  # no upstream call made
    assert chat(gw, token, "alpha-model", agent="alpha").status_code == 200
    assert env.open.last.headers["authorization"] == "Bearer sk-alpha-private-dddd"


def test_anthropic_profile(gw: Daemon, env: Env, token: str) -> None:
    r = connect(gw, "anthropic", profile_id="anthropic-main", api_key=ANTHROPIC_KEY, provider_id="anthropic")
    assert r.status_code == 200, r.text
    assert env.an.last.path == "/v1/models" and env.an.last.headers["x-api-key"] == ANTHROPIC_KEY
    assert chat(gw, token, "claude").status_code == 200
    assert env.an.last.headers["x-api-key"] == ANTHROPIC_KEY


def test_missing_profile_names_the_fix(gw: Daemon, token: str) -> None:
    with gw.admin() as c:
        c.delete("/auth/profiles/anthropic-main")
    r = chat(gw, token, "claude")
    assert r.status_code == 502
    assert "palyra auth add-key" in r.json()["error"]["message"]


def test_refused_key_puts_the_profile_in_cooldown(gw: Daemon, env: Env, token: str) -> None:
    connect(gw, "openai", profile_id="shared-default", api_key="sk-will-be-refused-eeee", validate=False)
    env.open.script("/v1/chat/completions", FakeOpenAI.error_reply(401))
    assert chat(gw, token, "shared-model").status_code == 502
    deadline = time.monotonic() + 5
    view: dict[str, Any] = {}
    while time.monotonic() < deadline:
        with gw.admin() as c:
            view = c.get("/auth/profiles/shared-default").json()
        if view["eligibility"] == "cooling_down":
            break
        time.sleep(0.05)
    assert view["eligibility"] == "cooling_down" and view["last_failure_kind"] == "auth_invalid"
    calls = len(env.open.requests)
    r = chat(gw, token, "shared-model")
    assert r.status_code == 502 and "cooling down" in r.json()["error"]["message"]
    assert len(env.open.requests) == calls
    # Rotating the key is the fix: a fresh profile state, used at once.
    connect(gw, "openai", profile_id="shared-default", api_key="sk-fixed-key-ffff", validate=False)
    with gw.admin() as c:
        c.post("/auth/profiles/shared-default/refresh")
    assert chat(gw, token, "shared-model").status_code in (200, 502)


# --- OAuth ---------------------------------------------------------------------------------------


def oauth_connect(gw: Daemon, env: Env, **extra: Any) -> dict[str, Any]:
    with gw.admin() as c:
        started = c.post(
            "/auth/providers/openai/oauth/start",
            json={
                "client_id": "palyra-test-client",
                "client_secret": CLIENT_SECRET,
                "profile_id": "openai-oauth",
                "profile_name": "OpenAI OAuth",
                **extra,
            },
            headers={"host": gw.base_url.removeprefix("http://")},
        )
    assert started.status_code == 200, started.text
    body = started.json()
    url = urlsplit(body["authorization_url"])
    params = parse_qs(url.query)
    assert params["code_challenge_method"] == ["S256"] and params["state"] == [body["attempt_id"]]
    assert params["audience"] == ["https://api.openai.com/v1"]
    assert CLIENT_SECRET not in body["authorization_url"]
    # The user's browser: the authorization server redirects back to Palyra's callback.
    auth = httpx.get(body["authorization_url"], follow_redirects=False)
    assert auth.status_code == 302
    callback = httpx.get(auth.headers["location"], follow_redirects=False)
    with gw.admin() as c:
        status = c.get(f"/auth/providers/openai/oauth/attempts/{body['attempt_id']}").json()
    return {"started": body, "callback": callback, "status": status}


def test_oauth_connect_use_refresh_and_revoke(gw: Daemon, env: Env, token: str) -> None:
    flow = oauth_connect(gw, env)
    assert flow["callback"].status_code == 200, flow["callback"].text
    assert "Connected" in flow["callback"].text
    assert flow["status"]["state"] == "succeeded" and flow["status"]["profile_id"] == "openai-oauth"
    exchange = env.auth.token_requests[-1].form
    assert (
        exchange is not None and exchange["grant_type"] == "authorization_code" and exchange["code_verifier"]
    )
    # Replaying the callback is refused.
    again = httpx.get(flow["callback"].request.url, follow_redirects=False)
    assert again.status_code in (400, 404)
    with gw.admin() as c:
        view = c.get("/auth/profiles/openai-oauth").json()
    assert view["credential"]["type"] == "oauth" and view["health"] == "ok"
    # The access token is what the upstream sees.
    assert chat(gw, token, "oauth-model").status_code == 200
    used = env.open.last.headers["authorization"].removeprefix("Bearer ")
    assert env.auth.is_valid_access_token(used)
    # Refresh rotates the refresh token and changes the access token used.
    old_refresh = set(env.auth.valid_refresh_tokens)
    with gw.admin() as c:
        refreshed = c.post("/auth/profiles/openai-oauth/refresh").json()
    assert refreshed["state"] == "refreshed"
    assert env.auth.valid_refresh_tokens.isdisjoint(old_refresh)
    assert chat(gw, token, "oauth-model").status_code == 200
    new_used = env.open.last.headers["authorization"].removeprefix("Bearer ")
    assert new_used != used and env.auth.is_valid_access_token(new_used)
    # Revocation failing at the provider keeps the profile (and says so).
    env.auth.fail_next(503, path="/oauth/revoke")
    env.auth.fail_next(503, path="/oauth/revoke")
    env.auth.fail_next(503, path="/oauth/revoke")
    with gw.admin() as c:
        failed = c.post("/auth/profiles/openai-oauth/revoke")
        assert failed.status_code == 503
        assert c.get("/auth/profiles/openai-oauth").status_code == 200
        done = c.post("/auth/profiles/openai-oauth/revoke")
        assert done.status_code == 200 and done.json()["remote_revocation"] is True
        assert c.get("/auth/profiles/openai-oauth").status_code == 404
    assert env.auth.valid_refresh_tokens.isdisjoint({new_used})
    assert not any(
        "openai_" in r
        and "oauth" in r
        and r.endswith(("access_token", "refresh_token"))
        and "openai-oauth" in r
        for r in vault_refs(gw)
    )


def test_oauth_expiring_token_is_refreshed_before_use(gw: Daemon, env: Env, token: str) -> None:
    env.auth.expires_in = 30  # within the 60 s window: refreshed before the first use
    try:
        flow = oauth_connect(gw, env)
        assert flow["status"]["state"] == "succeeded"
        refreshes = len(
            [r for r in env.auth.token_requests if r.form and r.form.get("grant_type") == "refresh_token"]
        )
        assert chat(gw, token, "oauth-model").status_code == 200
        after = len(
            [r for r in env.auth.token_requests if r.form and r.form.get("grant_type") == "refresh_token"]
        )
        assert after == refreshes + 1
    finally:
        env.auth.expires_in = 3600
        with gw.admin() as c:
            c.delete("/auth/profiles/openai-oauth")


def test_oauth_token_refused_upstream_is_refreshed_on_next_use(gw: Daemon, env: Env, token: str) -> None:
    flow = oauth_connect(gw, env)
    assert flow["status"]["state"] == "succeeded"
    try:
        env.open.script("/v1/chat/completions", FakeOpenAI.error_reply(401))
        assert chat(gw, token, "oauth-model").status_code == 502
        grants = len(
            [r for r in env.auth.token_requests if r.form and r.form.get("grant_type") == "refresh_token"]
        )
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            with gw.admin() as c:
                if c.get("/auth/profiles/openai-oauth").json()["last_failure_kind"] == "refresh_due":
                    break
            time.sleep(0.05)
        assert chat(gw, token, "oauth-model").status_code == 200
        after = len(
            [r for r in env.auth.token_requests if r.form and r.form.get("grant_type") == "refresh_token"]
        )
        assert after == grants + 1
        assert env.auth.is_valid_access_token(env.open.last.headers["authorization"].removeprefix("Bearer "))
    finally:
        with gw.admin() as c:
            c.delete("/auth/profiles/openai-oauth")


def test_oauth_denial_and_failed_refresh_backoff(gw: Daemon, env: Env) -> None:
    env.auth.deny_next = True
    flow = oauth_connect(gw, env)
    assert flow["callback"].status_code == 400 and flow["status"]["state"] == "failed"
    flow = oauth_connect(gw, env)
    assert flow["status"]["state"] == "succeeded"
    env.auth.fail_next(500)
    with gw.admin() as c:
        failed = c.post("/auth/profiles/openai-oauth/refresh").json()
        assert failed["state"] == "failed" and "status 500" in failed["message"]
        backing_off = c.post("/auth/profiles/openai-oauth/refresh").json()
        assert backing_off["state"] == "cooldown"
        view = c.get("/auth/profiles/openai-oauth").json()
        assert view["refresh"]["failures"] == 1 and view["refresh"]["next_allowed"] > time.time() + 10
        c.delete("/auth/profiles/openai-oauth")


# --- audit, CLI, secrets -------------------------------------------------------------------------


def test_audit_log_records_changes_without_secrets(gw: Daemon) -> None:
    with gw.admin() as c:
        events = c.get("/audit", params={"limit": 500}).json()["data"]
    actions = {e["action"] for e in events}
    assert {
        "auth.profile.saved",
        "auth.profile.rotated",
        "auth.profile.refreshed",
        "auth.profile.revoked",
    } <= actions
    text = json.dumps(events)
    for secret in (GOOD_KEY, AGENT_KEY, ANTHROPIC_KEY, CLIENT_SECRET):
        assert secret not in text


def test_cli_add_key_from_stdin_and_list(gw: Daemon) -> None:
    env = {"PALYRA_STATE_DIR": str(gw.state_dir), "PALYRA_ADMIN_TOKEN": gw.admin_token}
    out = cli(
        "auth",
        "add-key",
        "--provider",
        "openai",
        "--profile-id",
        "cli-key",
        "--no-validate",
        "--config",
        str(gw.config_path),
        env=env,
        stdin="sk-cli-key-canary-9999\n",
    )
    assert out.returncode == 0, out.stderr
    listed = cli("auth", "list", "--json", "--config", str(gw.config_path), env=env)
    assert any(p["profile_id"] == "cli-key" and p["health"] == "static" for p in json.loads(listed.stdout))
    assert "sk-cli-key-canary-9999" not in listed.stdout
    shown = cli("auth", "show", "cli-key", "--config", str(gw.config_path), env=env)
    assert json.loads(shown.stdout)["credential"]["type"] == "api_key"
    empty = cli(
        "auth",
        "add-key",
        "--provider",
        "openai",
        "--profile-id",
        "x",
        "--config",
        str(gw.config_path),
        env=env,
        stdin="",
    )
    assert empty.returncode != 0 and "hint:" in empty.stderr
    deleted = cli("auth", "delete", "cli-key", "--config", str(gw.config_path), env=env)
    assert deleted.returncode == 0
    vault_list = cli("vault", "list", "--json", "--config", str(gw.config_path), env=env)
    assert vault_list.returncode == 0, vault_list.stderr
    assert "cli-key" not in vault_list.stdout and "sk-cli-key" not in vault_list.stdout


def test_canaries_appear_nowhere(gw: Daemon, env: Env) -> None:
    seen = [gw.log(), httpx.get(gw.base_url + "/metrics").text]
    with gw.admin() as c:
        for path in ("/auth/profiles", "/vault", "/audit", "/providers", "/usage/runs", "/openapi.json"):
            seen.append(c.get(path).text)
    disk = b"".join(p.read_bytes() for p in gw.state_dir.rglob("*") if p.is_file())
    tokens = set(env.auth.valid_access_tokens) | set(env.auth.valid_refresh_tokens)
    for secret in (GOOD_KEY, AGENT_KEY, ANTHROPIC_KEY, CLIENT_SECRET, "sk-alpha-private-dddd", *tokens):
        assert all(secret not in text for text in seen), secret
        assert secret.encode() not in disk, secret


def test_wrong_master_key_stops_startup(tmp_path: Path) -> None:
    (tmp_path / "a").mkdir()
    d = start_daemon(tmp_path / "a")
    token = None
    try:
        with d.admin() as c:
            r = c.post(
                "/auth/providers/openai/api-key",
                json={"profile_id": "p", "api_key": "sk-x-123456789", "validate": False},
            )
            assert r.status_code == 200, r.text
    finally:
        d.stop()
    key_file = d.state_dir / "vault.key"
    original = key_file.read_text()
    key_file.write_text("A" * 43 + "\n")
    restarted = start_daemon(tmp_path / "a", wait=False)
    assert restarted.proc.wait(30) == 2, restarted.log()
    assert "vault.key" in restarted.log() and "hint:" in restarted.log()
    key_file.write_text(original)
    del token
