"""Two daemons sharing PostgreSQL and Redis behave as one gateway: a per-token rate limit and budget
spend hold across both, and with Redis unreachable budgets fail closed with a 503.

Skipped until the composition root builds its state from ``SharedState`` (``Components.shared``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx2 as httpx
import pytest
import redis

from palyra.app import Components

from conftest import PG_URL, Daemon, start_daemon

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0").rsplit("/", 1)[0] + "/9"

pytestmark = pytest.mark.skipif(
    "shared" not in {f.name for f in dataclasses.fields(Components)},
    reason="the composition root does not wire palyra.shared.SharedState yet",
)


def config(schema: str, redis_url: str, hard_tokens: int) -> str:
    return f"""
[server]
database_url = "{PG_URL}"
database_schema = "{schema}"
redis_url = "{redis_url}"

[model_provider]
default_chat_model_id = "deterministic"

[[model_provider.providers]]
provider_id = "deterministic"
kind = "deterministic"

[[model_provider.models]]
model_id = "deterministic"
provider_id = "deterministic"
role = "chat"

[[budgets]]
policy_id = "g"
scope = "global"
metric = "tokens"
window = "day"
hard_limit = {hard_tokens}
"""


def chat(d: Daemon, token: str) -> httpx.Response:
    return httpx.post(
        d.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={"model": "deterministic", "max_tokens": 20, "messages": [{"role": "user", "content": "hi"}]},
        timeout=10,
    )


def budget(d: Daemon) -> dict[str, float]:
    with d.admin() as c:
        r = c.get("/budgets")
    assert r.status_code == 200, r.text
    return dict(r.json()["data"][0])


@pytest.fixture
def redis_keys() -> Iterator[None]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")

    def clean() -> None:
        for key in client.scan_iter(match="palyra:{gw}:*"):
            client.delete(key)

    clean()
    yield
    clean()
    client.close()


def two_replicas(tmp: Path, cfg: str) -> tuple[Daemon, Daemon]:
    a = start_daemon(tmp / "a", config=cfg)
    state_b = tmp / "b" / "state"
    state_b.mkdir(parents=True)
    for f in a.state_dir.iterdir():  # one master key for the fleet, as in production
        if f.is_file():
            shutil.copy(f, state_b / f.name)
    return a, start_daemon(tmp / "b", config=cfg)


def test_rate_limit_and_budget_spend_hold_across_replicas(
    tmp_path: Path, pg_schema: str, redis_keys: None
) -> None:
    (tmp_path / "a").mkdir()
    a, b = two_replicas(tmp_path, config(pg_schema, REDIS_URL, 100_000))
    try:
        assert httpx.get(a.base_url + "/readyz").json()["shared_state"] is True
        budget(a), budget(b)  # both replicas have loaded the policy before any spend
        token, _ = a.create_token(name="t", scopes=["*"], rate_limit_per_minute=3)
        codes = [chat(d, token).status_code for d in (a, b, a, b, a, b)]
        assert codes == [200, 200, 200, 429, 429, 429]
        seen_a, seen_b = budget(a), budget(b)
        assert seen_a["spent"] == seen_b["spent"] > 0
        # Far from the limit, a replica takes room ahead of need (an allowance, counted as reserved
        # for the fleet) and gives it back once idle for a second.
        deadline = time.monotonic() + 5
        while (seen_a["reserved"] or seen_b["reserved"]) and time.monotonic() < deadline:
            time.sleep(0.2)
            seen_a, seen_b = budget(a), budget(b)
        assert seen_a["reserved"] == seen_b["reserved"] == 0
        assert seen_a["spent"] == seen_b["spent"] > 0
    finally:
        a.stop()
        b.stop()


def test_unreachable_redis_fails_budgets_closed(tmp_path: Path, pg_schema: str) -> None:
    d = start_daemon(tmp_path, config=config(pg_schema, "redis://127.0.0.1:1/0", 100_000))
    try:
        ready = httpx.get(d.base_url + "/readyz").json()
        assert ready["status"] == "ready" and ready["shared_state"] is False
        token, _ = d.create_token(name="t", scopes=["*"])
        r = chat(d, token)
        assert r.status_code == 503 and "retry-after" in r.headers
        assert r.json()["error"]["type"] == "service_unavailable"
        assert r.json()["error"]["code"] == "budget_store_unavailable"
    finally:
        d.stop()
