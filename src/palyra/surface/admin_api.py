"""The admin API at /api/v1 (FastAPI, so it publishes /api/v1/openapi.json). Callers: the admin token."""

from __future__ import annotations

import hmac
import logging
import time
from typing import TYPE_CHECKING, Annotated, Any, Literal

from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from palyra.callers.tokens import parse_duration
from palyra.console.session import ConsoleSessions
from palyra.errors import AuthenticationFailed, InvalidRequest, NotFound, PalyraError
from palyra.providers.registry import ProviderRuntime
from palyra.providers.status import probe, provider_status
from palyra.storage.runs import GROUP_COLUMNS
from palyra.surface.admin_auth import build_auth_router
from palyra.surface.admin_cron import build_cron_router
from palyra.surface.admin_governance import build_governance_router
from palyra.surface.admin_memory import build_memory_router, memory_caller
from palyra.surface.admin_skills import build_skills_router
from palyra.surface.auth_guard import client_address
from palyra.vault.errors import InvalidRef

if TYPE_CHECKING:
    from palyra.app import Components


log = logging.getLogger("palyra.admin")


class TokenCreate(BaseModel):
    name: Annotated[str, Field(min_length=1, max_length=200)]
    scopes: list[str] | None = None
    agent_id: str | None = None
    expires_in: str | None = Field(default=None, description="e.g. 30d, 12h; omit for no expiry")
    rate_limit_per_minute: Annotated[int, Field(ge=0)] | None = None
    routing_mode: Literal["off", "suggest", "dry_run", "enforced"] | None = None


def _error(exc: PalyraError) -> JSONResponse:
    headers = {"retry-after": str(int(exc.retry_after_s))} if exc.retry_after_s else None
    return JSONResponse(
        {"error": {"message": exc.message, "type": exc.type, "param": exc.param, "code": exc.code}},
        status_code=exc.status,
        headers=headers,
    )


def build_admin_api(c: Components, sessions: ConsoleSessions) -> FastAPI:
    admin_token, tokens, token_repo, runs, registry = (
        c.admin_token,
        c.tokens,
        c.token_repo,
        c.runs,
        c.registry,
    )
    api = FastAPI(
        title="Palyra admin API",
        version="1",
        openapi_url="/openapi.json",
        docs_url="/docs",
        redoc_url=None,
    )
    expected = admin_token.encode()
    api.state.console_sessions = sessions

    guard = c.auth_failures

    async def require_admin(request: Request) -> None:
        # Admin-token guessing is limited like API-token guessing (surface/auth_guard.py).
        address, now = client_address(request), time.time()
        guard.check(address, now)
        header = request.headers.get("authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(value.strip().encode(), expected):
            return
        # A bearer header, right or wrong, is never overridden by a cookie.
        if not header and sessions.admit(request, request.method):
            return
        refused = AuthenticationFailed(
            "admin token required: send 'Authorization: Bearer <admin token>' "
            "(PALYRA_ADMIN_TOKEN or <state_dir>/admin_token), or log in to the console"
        )
        if header:
            raise await guard.failed(address, now, refused)
        raise refused

    @api.exception_handler(PalyraError)
    async def _palyra_error(_request: Request, exc: PalyraError) -> JSONResponse:
        return _error(exc)

    @api.exception_handler(InvalidRef)
    async def _bad_ref(_request: Request, exc: InvalidRef) -> JSONResponse:
        return _error(InvalidRequest(str(exc), code="invalid_vault_ref", param="scope"))

    @api.exception_handler(Exception)
    async def _unexpected(_request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error in the admin API")
        return _error(PalyraError("internal error; the daemon log has the details"))

    @api.exception_handler(RequestValidationError)
    async def _validation_error(_request: Request, exc: RequestValidationError) -> JSONResponse:
        first = exc.errors()[0] if exc.errors() else {"loc": (), "msg": "invalid request"}
        param = ".".join(str(p) for p in first["loc"] if p not in ("body", "query"))
        return _error(
            InvalidRequest(f"{param or 'request'}: {first['msg']}", code="invalid_value", param=param or None)
        )

    admin = [Depends(require_admin)]

    @api.get("/tokens", dependencies=admin)
    async def list_tokens(include_revoked: bool = True) -> dict[str, Any]:
        records = await token_repo.list(include_revoked=include_revoked)
        return {"object": "list", "data": [r.public() for r in records]}

    @api.post("/tokens", dependencies=admin, status_code=201)
    async def create_token(body: TokenCreate) -> dict[str, Any]:
        expires = None
        if body.expires_in:
            try:
                expires = parse_duration(body.expires_in)
            except ValueError as exc:
                raise InvalidRequest(str(exc), code="invalid_value", param="expires_in") from None
        record, plaintext = await tokens.create(
            name=body.name,
            scopes=body.scopes,
            agent_id=body.agent_id,
            expires_in_s=expires,
            rate_limit_per_minute=body.rate_limit_per_minute,
            routing_mode=body.routing_mode,
        )
        return {**record.public(), "token": plaintext}

    @api.get("/tokens/{token_id}", dependencies=admin)
    async def get_token(token_id: str) -> dict[str, Any]:
        record = await token_repo.get(token_id)
        if record is None:
            raise NotFound(f"no token {token_id}", code="token_not_found")
        return record.public()

    @api.post("/tokens/{token_id}/revoke", dependencies=admin)
    async def revoke_token(token_id: str) -> dict[str, Any]:
        return await _revoke(token_id)

    @api.delete("/tokens/{token_id}", dependencies=admin)
    async def delete_token(token_id: str) -> dict[str, Any]:
        return await _revoke(token_id)

    async def _revoke(token_id: str) -> dict[str, Any]:
        record = await token_repo.get(token_id)
        if record is None:
            raise NotFound(f"no token {token_id}", code="token_not_found")
        changed = await tokens.revoke(token_id)
        return {"token_id": token_id, "revoked": True, "changed": changed}

    @api.get("/models", dependencies=admin)
    async def list_models() -> dict[str, Any]:
        data = []
        for mid, entry in registry.models.items():
            caps = entry.target.capabilities
            data.append(
                {
                    "model_id": mid,
                    "provider_id": entry.config.provider_id,
                    "role": entry.config.role,
                    "upstream_model": entry.target.upstream_model,
                    "capabilities": {
                        "tools": caps.tools,
                        "vision": caps.vision,
                        "json_mode": caps.json_mode,
                        "streaming": caps.streaming,
                        "max_context_tokens": caps.max_context_tokens,
                    },
                    "cost_tier": entry.cost_tier,
                    "latency_tier": entry.latency_tier,
                    "default": registry.defaults.get(entry.config.role) == mid,
                }
            )
        return {"object": "list", "data": data}

    @api.get("/providers", dependencies=admin)
    async def list_providers() -> dict[str, Any]:
        data = [await provider_status(rt, registry) for rt in registry.runtimes.values()]
        return {"object": "list", "data": data}

    @api.get("/providers/{provider_id}", dependencies=admin)
    async def get_provider(provider_id: str) -> dict[str, Any]:
        return await provider_status(_runtime(provider_id), registry)

    @api.post("/providers/{provider_id}/test", dependencies=admin)
    async def test_provider(provider_id: str) -> dict[str, Any]:
        return await probe(_runtime(provider_id), registry, discover=False)

    @api.post("/providers/{provider_id}/discover", dependencies=admin)
    async def discover_provider(provider_id: str) -> dict[str, Any]:
        return await probe(_runtime(provider_id), registry, discover=True)

    def _runtime(provider_id: str) -> ProviderRuntime:
        runtime = registry.runtimes.get(provider_id)
        if runtime is None:
            raise NotFound(
                f"no enabled provider '{provider_id}'; see GET /api/v1/providers", code="provider_not_found"
            )
        return runtime

    @api.get("/usage/runs", dependencies=admin)
    async def usage_runs(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50,
        since: str | None = None,
        before: float | None = None,
        request_id: str | None = None,
        model: str | None = None,
        agent: str | None = None,
        session: str | None = None,
        token: str | None = None,
    ) -> dict[str, Any]:
        if request_id:
            row = await runs.get(request_id)
            return {"object": "list", "data": [row] if row else [], "has_more": False}
        filters = {
            k: v for k, v in {"model": model, "agent": agent, "session": session, "token": token}.items() if v
        }
        rows = await runs.recent(since=_since(since), limit=limit + 1, before=before, filters=filters)
        return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}

    @api.get("/usage/summary", dependencies=admin)
    async def usage_summary(since: str | None = "30d", by: str | None = None) -> dict[str, Any]:
        if by is not None and by not in GROUP_COLUMNS:
            raise InvalidRequest(
                f"by must be one of {', '.join(GROUP_COLUMNS)}", code="invalid_value", param="by"
            )
        rows = await runs.totals(since=_since(since), by=by)
        return {"object": "list", "since": _since(since), "by": by, "data": rows}

    api.include_router(build_cron_router(c.scheduler, admin))
    api.include_router(build_skills_router(service=c.skills, admin=admin))
    api.include_router(
        build_memory_router(store=c.memory, caller=memory_caller(admin_token, tokens, sessions, guard))
    )
    api.include_router(
        build_governance_router(
            db=c.db,
            ledger=c.governance.ledger,
            alerts=c.alerts,
            prices=c.governance.prices,
            runs=runs,
            admin=admin,
        )
    )
    api.include_router(
        build_auth_router(
            service=c.auth, vault=c.vault, audit=c.audit, attempts=c.attempts, config=c.config, admin=admin
        )
    )
    return api


def _since(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise InvalidRequest(
            str(text) + " is not a duration like 7d or 24h", code="invalid_value", param="since"
        ) from None
