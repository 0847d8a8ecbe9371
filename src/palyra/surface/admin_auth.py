"""Admin API for credentials: auth profiles, the connect-an-API-key flow, OAuth connect, vault
metadata and the audit log. Mounted under /api/v1 by ``admin_api``."""

from __future__ import annotations

import html
import json
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field

from palyra.auth.audit import AuditLog
from palyra.auth.key_check import KeyCheckFailed
from palyra.auth.oauth import AttemptError, OAuthEndpoints, OAuthError, PendingAttempts
from palyra.auth.profiles import ProfileError
from palyra.auth.service import AuthService
from palyra.config.models import PalyraConfig
from palyra.errors import InvalidRequest, NotFound, PermissionDenied
from palyra.netguard import UnsafeUrl
from palyra.vault.store import Vault

CALLBACK_PATH = "/api/v1/auth/providers/{provider}/oauth/callback"


class Scope(BaseModel):
    kind: Literal["global", "agent"] = "global"
    agent_id: str | None = None


class ApiKeyConnect(BaseModel):
    api_key: Annotated[str, Field(min_length=1, max_length=4096)]
    profile_id: str | None = None
    profile_name: str | None = None
    scope: Scope = Scope()
    custom_name: str | None = None
    provider_id: str | None = Field(default=None, description="Configured provider to validate against")
    validate_key: bool = Field(default=True, alias="validate")


class OAuthStart(BaseModel):
    client_id: Annotated[str, Field(min_length=1, max_length=256)]
    client_secret: str | None = None
    profile_id: str | None = None
    profile_name: str = "OpenAI"
    scope: Scope = Scope()
    scopes: list[str] = Field(default_factory=lambda: ["openid", "profile", "email", "offline_access"])
    redirect_uri: str | None = None


def _agent_of(scope: Scope) -> str | None:
    if scope.kind == "agent":
        if not scope.agent_id:
            raise ProfileError(
                "scope.agent_id", "required", "scope.agent_id is required for scope kind agent"
            )
        return scope.agent_id
    return None


def _validation(err: ProfileError, status: int = 400) -> JSONResponse:
    body = {
        "error": {
            "message": err.message,
            "type": "invalid_request_error",
            "param": err.field,
            "code": "validation_error" if err.code != "not_found" else "not_found",
            "validation_errors": [{"field": err.field, "code": err.code, "message": err.message}],
        }
    }
    return JSONResponse(body, status_code=404 if err.code == "not_found" else status)


def _key_check(err: KeyCheckFailed) -> JSONResponse:
    status, type_, code = {
        "invalid_credential": (400, "invalid_request_error", "invalid_credential"),
        "rate_limited": (429, "rate_limit_error", "rate_limited"),
        "unavailable": (503, "service_unavailable", "provider_unavailable"),
    }.get(err.kind, (502, "upstream_error", "validation_failed"))
    body: dict[str, Any] = {"message": err.message, "type": type_, "param": "api_key", "code": code}
    if status == 400:
        body["message"] = "the credential is invalid or does not have the required access"
        body["validation_errors"] = [
            {"field": "api_key", "code": "invalid_credential", "message": err.message}
        ]
    headers = {"retry-after": "5"} if status in (429, 503) else None
    return JSONResponse({"error": body}, status_code=status, headers=headers)


def build_auth_router(
    *,
    service: AuthService,
    vault: Vault,
    audit: AuditLog,
    attempts: PendingAttempts,
    config: PalyraConfig,
    admin: list[Any],
) -> APIRouter:
    router = APIRouter()
    guarded = APIRouter(dependencies=admin)

    @guarded.get("/auth/profiles")
    async def list_profiles(
        provider: str | None = None,
        agent_id: str | None = None,
        after: str | None = None,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
    ) -> dict[str, Any]:
        profiles = await service.repo.list(provider=provider, agent_id=agent_id, after=after, limit=limit + 1)
        data = [await service.view(p) for p in profiles[:limit]]
        return {
            "object": "list",
            "data": data,
            "has_more": len(profiles) > limit,
            "next_after": data[-1]["profile_id"] if len(profiles) > limit and data else None,
        }

    @guarded.get("/auth/profiles/{profile_id}")
    async def get_profile(profile_id: str) -> dict[str, Any]:
        profile = await service.repo.get(profile_id)
        if profile is None:
            raise NotFound(f"no auth profile '{profile_id}'", code="profile_not_found")
        return await service.view(profile)

    @guarded.post("/auth/providers/{provider}/api-key", response_model=None)
    async def connect_api_key(provider: str, body: ApiKeyConnect) -> dict[str, Any] | JSONResponse:
        if provider not in ("openai", "anthropic", "custom"):
            raise NotFound(
                f"no auth provider '{provider}'; use openai, anthropic or custom", code="provider_not_found"
            )
        try:
            profile, rotated = await service.add_api_key(
                provider=provider,
                api_key=body.api_key,
                profile_name=body.profile_name,
                profile_id=body.profile_id,
                agent_id=_agent_of(body.scope),
                custom_name=body.custom_name,
                validate=body.validate_key,
                provider_id=body.provider_id,
            )
        except ProfileError as err:
            return _validation(err)
        except KeyCheckFailed as err:
            return _key_check(err)
        view = await service.view(profile)
        return {
            "provider": provider,
            "action": "api_key",
            "state": "rotated" if rotated else "saved",
            "message": f"{provider} API key profile {'rotated' if rotated else 'saved'}.",
            "profile_id": profile.profile_id,
            "profile": view,
        }

    @guarded.post("/auth/profiles/{profile_id}/refresh", response_model=None)
    async def refresh(profile_id: str) -> dict[str, Any] | JSONResponse:
        try:
            outcome = await service.refresh(profile_id, force=True)
        except ProfileError as err:
            return _validation(err)
        return {"profile_id": profile_id, **outcome}

    @guarded.post("/auth/profiles/{profile_id}/revoke", response_model=None)
    async def revoke(profile_id: str) -> dict[str, Any] | JSONResponse:
        try:
            return await service.revoke(profile_id)
        except ProfileError as err:
            return _validation(err)
        except OAuthError as err:
            return JSONResponse(
                {
                    "error": {
                        "message": f"{err}; the profile was kept, retry the revocation later",
                        "type": "service_unavailable",
                        "param": None,
                        "code": "revocation_failed",
                    }
                },
                status_code=503,
                headers={"retry-after": "5"},
            )

    @guarded.delete("/auth/profiles/{profile_id}")
    async def delete(profile_id: str) -> dict[str, Any]:
        if not await service.delete(profile_id):
            raise NotFound(f"no auth profile '{profile_id}'", code="profile_not_found")
        return {"profile_id": profile_id, "deleted": True}

    @guarded.post("/auth/providers/{provider}/oauth/start", response_model=None)
    async def oauth_start(provider: str, body: OAuthStart, request: Request) -> dict[str, Any] | JSONResponse:
        endpoints_cfg = config.auth.oauth.get(provider)
        if endpoints_cfg is None:
            raise NotFound(
                f"no OAuth endpoints configured for '{provider}' ([auth.oauth.{provider}])",
                code="oauth_unsupported",
            )
        try:
            agent = _agent_of(body.scope)
        except ProfileError as err:
            return _validation(err)
        redirect_uri = body.redirect_uri or _redirect_uri(request, config, provider)
        attempt = attempts.create(
            provider=provider,
            profile_id=body.profile_id,
            profile_name=body.profile_name,
            scope=f"agent:{agent}" if agent else "global",
            client_id=body.client_id,
            client_secret=body.client_secret,
            scopes=body.scopes,
            redirect_uri=redirect_uri,
            endpoints=OAuthEndpoints(
                endpoints_cfg.authorize_url, endpoints_cfg.token_url, endpoints_cfg.revoke_url
            ),
        )
        return {
            "attempt_id": attempt.state,
            "authorization_url": attempt.authorization_url(audience=endpoints_cfg.audience),
            "redirect_uri": redirect_uri,
            "expires_at": attempt.expires_at,
        }

    @guarded.get("/auth/providers/{provider}/oauth/attempts/{attempt_id}")
    async def oauth_status(provider: str, attempt_id: str) -> dict[str, Any]:
        status = attempts.get(attempt_id)
        if status is None or status.provider != provider:
            raise NotFound("no such OAuth attempt (unknown or expired)", code="attempt_not_found")
        return {
            "attempt_id": attempt_id,
            "provider": provider,
            "state": status.status,
            "message": status.message,
            "profile_id": status.profile_id,
            "expires_at": status.expires_at if status.status == "pending" else None,
            "completed_at": status.completed_at,
        }

    @router.get("/auth/providers/{provider}/oauth/callback", response_class=HTMLResponse)
    async def oauth_callback(
        provider: str,
        state: str = "",
        code: str | None = None,
        error: str | None = None,
        error_description: str | None = None,
    ) -> HTMLResponse:
        # No admin session here: the unguessable, single-use state is the binding.
        try:
            attempt = attempts.take(state)
        except AttemptError as exc:
            return _callback_page(False, str(exc), state, None, 404 if exc.reason == "unknown" else 400)
        if attempt.provider != provider:
            attempts.fail(state, message="provider mismatch")
            return _callback_page(False, "this callback belongs to another provider", state, None, 400)
        if error:
            message = f"{error[:64]}: authorization was denied"
            attempts.fail(state, message=message)
            return _callback_page(False, message, state, None, 400)
        if not code:
            attempts.fail(state, message="the callback carried no code")
            return _callback_page(False, "the callback carried no code", state, None, 400)
        try:
            tokens = await service.oauth.exchange_code(
                attempt.endpoints,
                client_id=attempt.client_id,
                client_secret=attempt.client_secret,
                redirect_uri=attempt.redirect_uri,
                code=code,
                verifier=attempt.verifier or "",
            )
            profile = await service.save_oauth(
                provider=provider,
                profile_id=attempt.profile_id,
                profile_name=attempt.profile_name,
                agent_id=attempt.scope.removeprefix("agent:") if attempt.scope.startswith("agent:") else None,
                endpoints=attempt.endpoints,
                client_id=attempt.client_id,
                client_secret=attempt.client_secret,
                scopes=attempt.scopes,
                access_token=tokens.access_token,
                refresh_token=tokens.refresh_token or "",
                expires_in_s=tokens.expires_in_s,
            )
        except (OAuthError, UnsafeUrl, ProfileError) as exc:
            message = str(exc) if not isinstance(exc, ProfileError) else exc.message
            attempts.fail(state, message=message)
            return _callback_page(False, message, state, None, 502)
        attempts.succeed(state, profile_id=profile.profile_id, message=f"{provider} connected")
        return _callback_page(
            True, f"{provider} connected as profile {profile.profile_id}", state, profile.profile_id, 200
        )

    @guarded.get("/vault")
    async def vault_list(scope: str | None = None) -> dict[str, Any]:
        metas = await vault.list(scope)
        return {"object": "list", "data": [m.public() for m in metas]}

    @guarded.get("/audit")
    async def audit_list(
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        before_id: Annotated[int | None, Query(ge=0, le=2**63 - 1)] = None,
        action: str | None = None,
    ) -> dict[str, Any]:
        rows = await audit.list(limit=limit, before_id=before_id, action_prefix=action)
        return {"object": "list", "data": rows}

    router.include_router(guarded)
    return router


def _redirect_uri(request: Request, config: PalyraConfig, provider: str) -> str:
    path = CALLBACK_PATH.format(provider=provider)
    if config.server.public_base_url:
        return config.server.public_base_url.rstrip("/") + path
    if any(h in request.headers for h in ("x-forwarded-host", "x-forwarded-proto", "x-forwarded-port")):
        raise PermissionDenied(
            "behind a proxy the OAuth callback address must come from server.public_base_url; set it",
            code="public_base_url_required",
        )
    host = request.headers.get("host", "")
    hostname = host.rsplit(":", 1)[0].strip("[]")
    if hostname not in ("localhost", "127.0.0.1", "::1"):
        raise InvalidRequest(
            "set server.public_base_url to the https address users reach Palyra at, so the OAuth callback "
            "is not built from an untrusted Host header",
            code="public_base_url_required",
        )
    return f"http://{host}{path}"


def _callback_page(ok: bool, message: str, state: str, profile_id: str | None, status: int) -> HTMLResponse:
    title = "Connected" if ok else "Connection failed"
    payload = json.dumps(
        {
            "type": "palyra-oauth-complete",
            "ok": ok,
            "attempt_id": state,
            "message": message,
            "profile_id": profile_id,
        }
    )
    # Keep the JSON inert inside <script>: no tag, no line terminators JavaScript would choke on.
    for ch, esc in (
        ("&", "\\u0026"),
        ("<", "\\u003c"),
        (">", "\\u003e"),
        ("\u2028", "\\u2028"),
        ("\u2029", "\\u2029"),
    ):
        payload = payload.replace(ch, esc)
    body = (
        f"<!doctype html><html><head><meta charset='utf-8'><link rel='icon' href='data:,'>"
        f"<title>{html.escape(title)}</title></head>"
        f"<body><h1>{html.escape(title)}</h1><p>{html.escape(message)}</p>"
        f"<script>if (window.opener) window.opener.postMessage({payload}, window.location.origin);</script>"
        "</body></html>"
    )
    return HTMLResponse(body, status_code=status, headers={"cache-control": "no-store"})
