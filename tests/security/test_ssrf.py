"""Server-side request forgery: Palyra only connects where its operator said, and never where a response
or a client points it.

- base URLs and OAuth endpoints naming a private, local or special-use address (in any spelling) are
  refused when the configuration loads; names that resolve to one are refused when connecting
  (tests/unit/test_netguard.py, tests/auth/test_oauth.py);
- redirects from an upstream are never followed;
- URLs inside client requests (image_url) are passed on, never fetched by the daemon.
"""

from __future__ import annotations

from collections.abc import Iterator

import httpx2 as httpx
import pytest
from pydantic import ValidationError

from palyra.config.models import PalyraConfig

from conftest import Daemon, start_daemon
from fakes import FakeOpenAI, Reply

PRIVATE_SPELLINGS = [
    "https://127.0.0.1/v1",
    "https://127.1/v1",
    "https://2130706433/v1",
    "https://0177.0.0.1/v1",
    "https://0x7f.0.0.1/v1",
    "https://[::1]/v1",
    "https://[::ffff:127.0.0.1]/v1",
    "https://[64:ff9b::7f00:1]/v1",
    "https://169.254.169.254/latest/meta-data",
    "https://10.0.0.5/v1",
    "https://192.168.1.1/v1",
    "https://100.64.0.1/v1",
    "https://0.0.0.0/v1",
    "https://[fd00::1]/v1",
    "https://localhost/v1",
    "https://localhost./v1",
    "https://ollama.localhost/v1",
    "https://api.openai.com@127.0.0.1/v1",
    "http://api.example.com/v1",
    "file:///etc/passwd",
    "gopher://127.0.0.1:6379/_INFO",
]


@pytest.mark.parametrize("url", PRIVATE_SPELLINGS)
def test_provider_base_url_is_refused_at_load(url: str) -> None:
    provider = {"provider_id": "p", "kind": "openai_compatible", "base_url": url}
    with pytest.raises(ValidationError) as info:
        PalyraConfig.model_validate({"model_provider": {"providers": [provider]}})
    assert "base_url" in str(info.value)


@pytest.mark.parametrize("url", PRIVATE_SPELLINGS)
@pytest.mark.parametrize("field", ["authorize_url", "token_url", "revoke_url"])
def test_oauth_endpoints_are_refused_at_load(url: str, field: str) -> None:
    with pytest.raises(ValidationError) as info:
        PalyraConfig.model_validate({"auth": {"oauth": {"openai": {field: url}}}})
    assert field in str(info.value)


def test_private_base_url_needs_the_opt_in() -> None:
    provider = {
        "provider_id": "p",
        "kind": "openai_compatible",
        "base_url": "http://127.0.0.1:11434/v1",
        "allow_private_base_url": True,
    }
    PalyraConfig.model_validate({"model_provider": {"providers": [provider]}})


class Upstreams:
    def __init__(self) -> None:
        self.redirecting = FakeOpenAI().start()
        self.target = FakeOpenAI().start()  # where the redirect points: must hear nothing

    def stop(self) -> None:
        self.redirecting.stop()
        self.target.stop()


@pytest.fixture(scope="module")
def ups() -> Iterator[Upstreams]:
    u = Upstreams()
    yield u
    u.stop()


@pytest.fixture(scope="module")
def gw(ups: Upstreams, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    config = (
        "[model_provider]\nfailover_enabled = false\n"
        "[[model_provider.providers]]\n"
        f'provider_id = "up"\nkind = "openai_compatible"\nbase_url = "{ups.redirecting.base_url}"\n'
        "allow_private_base_url = true\nmax_retries = 0\n"
        "circuit_breaker = { failure_threshold = 100, cooldown_ms = 1000 }\n"
        '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "up"\n'
    )
    d = start_daemon(tmp_path_factory.mktemp("ssrf"), config=config)
    yield d
    d.stop()


def test_upstream_redirects_are_not_followed(gw: Daemon, ups: Upstreams) -> None:
    token, _ = gw.create_token(name="ssrf")
    for status in (301, 302, 307, 308):
        ups.redirecting.script(
            "/v1/chat/completions",
            Reply(status=status, raw=b"", headers={"location": ups.target.base_url + "/chat/completions"}),
        )
        r = httpx.post(
            gw.v1 + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
            headers={"Authorization": f"Bearer {token}"},
            timeout=20,
        )
        assert r.status_code == 502, r.text
        assert r.json()["error"]["type"] == "upstream_error"
    assert ups.target.requests_for("/v1/chat/completions") == []


def test_urls_in_client_requests_are_never_fetched(daemon: Daemon, token: str) -> None:
    """The deterministic model sees the image; the daemon never dereferences its URL."""
    listener = FakeOpenAI().start()
    try:
        url = listener.url + "/internal/secret.png"
        r = httpx.post(
            daemon.v1 + "/chat/completions",
            json={
                "model": "deterministic",
                "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": url}}]}],
            },
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert r.status_code == 200, r.text
        assert listener.requests == []
    finally:
        listener.stop()
