"""/api/v1/memory over HTTP (in-process ASGI) with a real TokenService: admin, scoped tokens, agents."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest

from palyra.callers.tokens import TokenService
from palyra.memory.store import MemoryStore
from palyra.shared_state import InProcessCounterStore
from palyra.storage.tokens import TokenRepository

from memory_fakes import BACKENDS, FakeEmbedder, build_memory_api, memory_db

ADMIN = "palyra_admin_" + "k" * 40


@dataclass
class Env:
    client: httpx.AsyncClient
    tokens: TokenService
    embedder: FakeEmbedder

    async def token(self, scopes: list[str], agent_id: str | None = None, **kw: Any) -> dict[str, str]:
        _, plaintext = await self.tokens.create(name="t", scopes=scopes, agent_id=agent_id, **kw)
        return {"Authorization": f"Bearer {plaintext}"}


@pytest.fixture(params=BACKENDS)
async def env(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Env]:
    async with memory_db(request, tmp_path) as db:
        embedder = FakeEmbedder()
        store = MemoryStore(db, embedder, target_model=embedder.target)
        tokens = TokenService(TokenRepository(db), InProcessCounterStore(), cache_ttl_s=0)
        transport = httpx.ASGITransport(app=build_memory_api(store, tokens, ADMIN))
        async with httpx.AsyncClient(transport=transport, base_url="http://palyra/api/v1") as client:
            yield Env(client, tokens, embedder)


ADMIN_AUTH = {"Authorization": f"Bearer {ADMIN}"}


def _code(r: httpx.Response) -> str:
    return str(r.json()["error"]["code"])


async def test_admin_add_list_search_delete(env: Env) -> None:
    c = env.client
    r = await c.post(
        "/memory/items",
        json={
            "text": "the office wifi password is on the fridge",
            "agent_id": "ops",
            "tags": ["office"],
            "metadata": {"by": "alice"},
            "ttl_days": 30,
        },
        headers=ADMIN_AUTH,
    )
    assert r.status_code == 201, r.text
    item = r.json()
    assert item["agent_id"] == "ops" and item["tags"] == ["office"] and item["embedded"] is True
    assert item["metadata"] == {"by": "alice"} and item["expires_at"] is not None
    await c.post("/memory/items", json={"text": "lunch is at noon", "agent_id": "ops"}, headers=ADMIN_AUTH)

    listed = (await c.get("/memory/items", params={"agent_id": "ops", "limit": 1}, headers=ADMIN_AUTH)).json()
    assert len(listed["data"]) == 1 and listed["has_more"] is True
    hits = await c.post(
        "/memory/search",
        json={"query": "where is the wifi password", "agent_id": "ops", "k": 5},
        headers=ADMIN_AUTH,
    )
    assert hits.status_code == 200
    data = hits.json()["data"]
    assert data[0]["item_id"] == item["item_id"] and data[0]["score"] >= data[-1]["score"]

    assert (await c.get(f"/memory/items/{item['item_id']}", headers=ADMIN_AUTH)).status_code == 200
    assert (await c.delete(f"/memory/items/{item['item_id']}", headers=ADMIN_AUTH)).json()["deleted"] is True
    gone = await c.delete(f"/memory/items/{item['item_id']}", headers=ADMIN_AUTH)
    assert gone.status_code == 404 and _code(gone) == "memory_item_not_found"

    missing = await c.post("/memory/items", json={"text": "no agent"}, headers=ADMIN_AUTH)
    assert missing.status_code == 400 and _code(missing) == "agent_id_required"


async def test_bound_token_uses_only_its_own_agent(env: Env) -> None:
    c = env.client
    mine = await env.token(["memory"], agent_id="agent-x")
    theirs = (
        await c.post("/memory/items", json={"text": "secret of y", "agent_id": "agent-y"}, headers=ADMIN_AUTH)
    ).json()

    r = await c.post("/memory/items", json={"text": "note of x"}, headers=mine)
    assert r.status_code == 201 and r.json()["agent_id"] == "agent-x"
    assert env.embedder.calls[-1] == (["note of x"], "agent-x")
    own = await c.post("/memory/items", json={"text": "another", "agent_id": "agent-x"}, headers=mine)
    assert own.status_code == 201
    assert len((await c.get("/memory/items", headers=mine)).json()["data"]) == 2
    found = await c.post("/memory/search", json={"query": "note", "k": 3}, headers=mine)
    assert found.status_code == 200 and found.json()["agent_id"] == "agent-x"

    for response in (
        await c.post("/memory/items", json={"text": "sneaky", "agent_id": "agent-y"}, headers=mine),
        await c.get("/memory/items", params={"agent_id": "agent-y"}, headers=mine),
        await c.post("/memory/search", json={"query": "secret", "agent_id": "agent-y", "k": 3}, headers=mine),
        await c.delete(f"/memory/items/{theirs['item_id']}", params={"agent_id": "agent-y"}, headers=mine),
    ):
        assert response.status_code == 403, response.text
        assert response.json()["error"]["type"] == "permission_error" and _code(response) == "agent_forbidden"
    # By id without naming the agent: another agent's item looks missing, and stays.
    hidden = await c.delete(f"/memory/items/{theirs['item_id']}", headers=mine)
    assert hidden.status_code == 404
    assert (await c.get(f"/memory/items/{theirs['item_id']}", headers=mine)).status_code == 404
    assert (await c.get(f"/memory/items/{theirs['item_id']}", headers=ADMIN_AUTH)).status_code == 200


async def test_token_without_memory_scope_is_refused(env: Env) -> None:
    chat_only = await env.token(["chat", "embeddings"], agent_id="agent-x")
    r = await env.client.post("/memory/items", json={"text": "hi"}, headers=chat_only)
    assert r.status_code == 403 and _code(r) == "missing_scope"
    r = await env.client.get("/memory/items", headers=chat_only)
    assert r.status_code == 403 and _code(r) == "missing_scope"
    wildcard = await env.token(["*"], agent_id="agent-x")
    assert (await env.client.get("/memory/items", headers=wildcard)).status_code == 200


async def test_unbound_token_must_name_the_agent(env: Env) -> None:
    unbound = await env.token(["memory"])
    r = await env.client.post("/memory/items", json={"text": "hi"}, headers=unbound)
    assert r.status_code == 400 and _code(r) == "agent_id_required"
    r = await env.client.post("/memory/items", json={"text": "hi", "agent_id": "any-agent"}, headers=unbound)
    assert r.status_code == 201
    item_id = r.json()["item_id"]
    assert (await env.client.delete(f"/memory/items/{item_id}", headers=unbound)).status_code == 400
    r = await env.client.delete(f"/memory/items/{item_id}", params={"agent_id": "any-agent"}, headers=unbound)
    assert r.status_code == 200


async def test_authentication(env: Env) -> None:
    c = env.client
    assert (await c.get("/memory/items", params={"agent_id": "a"})).status_code == 401
    wrong = {"Authorization": "Bearer " + ADMIN[:-1] + "x"}
    assert (await c.get("/memory/items", params={"agent_id": "a"}, headers=wrong)).status_code == 401
    revoked_token, plaintext = await env.tokens.create(name="t", scopes=["memory"], agent_id="a")
    await env.tokens.revoke(revoked_token.token_id)
    r = await c.get("/memory/items", headers={"Authorization": f"Bearer {plaintext}"})
    assert r.status_code == 401
    limited = await env.token(["memory"], agent_id="a", rate_limit_per_minute=1)
    assert (await c.get("/memory/items", headers=limited)).status_code == 200
    assert (await c.get("/memory/items", headers=limited)).status_code == 429


async def test_bad_bodies(env: Env) -> None:
    c = env.client
    r = await c.post("/memory/items", json={"text": "x", "agent_id": "bad agent id"}, headers=ADMIN_AUTH)
    assert r.status_code == 400 and _code(r) == "invalid_agent_id"
    r = await c.post("/memory/items", json={"text": "x" * 40_000, "agent_id": "a"}, headers=ADMIN_AUTH)
    assert r.status_code == 413
    r = await c.post("/memory/search", json={"query": "x", "agent_id": "a", "k": 0}, headers=ADMIN_AUTH)
    assert r.status_code == 400
    r = await c.post("/memory/items", json={"text": "x", "agent_id": "a", "ttl_days": -1}, headers=ADMIN_AUTH)
    assert r.status_code == 400
