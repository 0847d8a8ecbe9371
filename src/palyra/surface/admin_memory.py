"""/api/v1/memory/*: the memory store, for the admin and for API tokens with the ``memory`` scope.

Who may use which agent's memory:

- the admin token: any agent; ``agent_id`` is required to add, list and search, optional to fetch or
  delete one item by id;
- an API token bound to an agent: only that agent; ``agent_id`` may be omitted (it defaults to the
  bound agent) and any other value is refused with 403 ``agent_forbidden``;
- an API token not bound to an agent: like on /v1, where such a token may act as any agent through
  ``X-Palyra-Agent``, it may use any agent's memory, but must always name the agent (``agent_id``).

Tokens without the ``memory`` scope (or ``*``) get 403 ``missing_scope``.
"""

from __future__ import annotations

import hmac
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from palyra.callers.tokens import Caller, TokenService, validate_agent_id
from palyra.console.session import ConsoleSessions
from palyra.errors import AuthenticationFailed, InvalidRequest, NotFound
from palyra.memory.store import MAX_TTL_DAYS, MemoryStore
from palyra.surface.auth_guard import FailedAuthLimiter, client_address

MAX_LIST = 1000


@dataclass(frozen=True, slots=True)
class MemoryCaller:
    """Who is calling: the admin (``token`` is None) or an API token with the memory scope."""

    token: Caller | None

    @property
    def is_admin(self) -> bool:
        return self.token is None

    def agent(self, requested: str | None) -> str:
        """The agent whose memory this request uses; raises if the caller may not use it."""
        if requested is not None:
            validate_agent_id(requested)
        agent = requested if self.token is None else self.token.agent_for(requested)
        if agent is None:
            who = "the admin" if self.token is None else "a token not bound to an agent"
            raise InvalidRequest(
                f"agent_id is required for {who}", code="agent_id_required", param="agent_id"
            )
        return agent

    def agent_filter(self, requested: str | None) -> str | None:
        """For requests by item id: the admin may leave the agent open, a token may not."""
        if self.token is None and requested is None:
            return None
        return self.agent(requested)


MemoryAuth = Callable[[Request], Awaitable[MemoryCaller]]


def memory_caller(
    admin_token: str,
    tokens: TokenService,
    sessions: ConsoleSessions | None = None,
    guard: FailedAuthLimiter | None = None,
) -> MemoryAuth:
    """A FastAPI dependency: the admin bearer (compared in constant time), a console session (the
    admin, logged in), or a ``memory`` API token."""
    expected = admin_token.encode()

    async def dependency(request: Request) -> MemoryCaller:
        now, address = time.time(), client_address(request)
        if guard is not None:
            guard.check(address, now)
        header = request.headers.get("authorization")
        scheme, _, value = (header or "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected):
            return MemoryCaller(None)
        if header is None and sessions is not None and sessions.admit(request, request.method):
            return MemoryCaller(None)
        try:
            caller = await tokens.authenticate(header, now)
        except AuthenticationFailed as exc:
            if guard is None or not header:
                raise
            raise await guard.failed(address, now, exc) from None
        caller.require_scope("memory")
        await tokens.check_rate_limit(caller, now)
        return MemoryCaller(caller)

    return dependency


class MemoryItemIn(BaseModel):
    text: Annotated[str, Field(min_length=1)]
    agent_id: str | None = None
    tags: list[str] | None = None
    metadata: dict[str, Any] | None = None
    ttl_days: Annotated[float, Field(gt=0, le=MAX_TTL_DAYS)] | None = None


class MemorySearchIn(BaseModel):
    query: Annotated[str, Field(min_length=1)]
    agent_id: str | None = None
    k: Annotated[int, Field(ge=1, description="Results wanted; more than 100 returns 100.")] = 10


def build_memory_router(*, store: MemoryStore, caller: MemoryAuth) -> APIRouter:
    """Mount under /api/v1 without the admin-only dependency: ``caller`` does the authentication."""
    router = APIRouter(prefix="/memory", tags=["memory"])
    # A default rather than an Annotated alias: FastAPI resolves string annotations in module scope.
    who_is_calling = Depends(caller)

    @router.post("/items", status_code=201)
    async def add_item(body: MemoryItemIn, who: MemoryCaller = who_is_calling) -> dict[str, Any]:
        agent = who.agent(body.agent_id)
        item = await store.add(
            agent, body.text, tags=body.tags, metadata=body.metadata, ttl_days=body.ttl_days
        )
        return item.public()

    @router.get("/items")
    async def list_items(
        who: MemoryCaller = who_is_calling,
        agent_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=MAX_LIST)] = 50,
        before: Annotated[float | None, Query(description="created_at of the last item seen")] = None,
    ) -> dict[str, Any]:
        items = await store.list(who.agent(agent_id), limit=limit + 1, before=before)
        return {"object": "list", "data": [i.public() for i in items[:limit]], "has_more": len(items) > limit}

    @router.get("/items/{item_id}")
    async def get_item(
        item_id: str, who: MemoryCaller = who_is_calling, agent_id: str | None = None
    ) -> dict[str, Any]:
        item = await store.get(item_id, agent_id=who.agent_filter(agent_id))
        if item is None:
            raise NotFound(f"no memory item {item_id}", code="memory_item_not_found")
        return item.public()

    @router.delete("/items/{item_id}")
    async def delete_item(
        item_id: str, who: MemoryCaller = who_is_calling, agent_id: str | None = None
    ) -> dict[str, Any]:
        # Another agent's item reads as missing: a token learns nothing about memory it cannot use.
        if not await store.delete(item_id, agent_id=who.agent_filter(agent_id)):
            raise NotFound(f"no memory item {item_id}", code="memory_item_not_found")
        return {"object": "memory.item.deleted", "item_id": item_id, "deleted": True}

    @router.post("/search")
    async def search(body: MemorySearchIn, who: MemoryCaller = who_is_calling) -> dict[str, Any]:
        agent = who.agent(body.agent_id)
        hits = await store.search(agent, body.query, body.k)
        return {
            "object": "list",
            "agent_id": agent,
            "data": [{**item.public(), "score": score} for item, score in hits],
        }

    return router
