"""Auth profiles as a service: connect a key, OAuth connect, rotate, refresh, revoke, delete, and the
per-request resolution of a provider's credential with agent scope enforced.

Secrets go to the vault; profiles hold references. Deleting or revoking a profile removes its secrets.
Resolution is cached for ``cache_ttl_s`` and invalidated at once by changes made in this process, so
rotations and refreshes take effect without a restart (other replicas within the TTL).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import re
import secrets
import time
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from typing import Any

from palyra.auth.audit import AuditLog
from palyra.auth.key_check import (
    ANTHROPIC_DEFAULT_BASE,
    OPENAI_DEFAULT_BASE,
    KeyCheckTarget,
    check_api_key,
)
from palyra.auth.oauth import (
    EXPIRING_WINDOW_S,
    EXPIRY_REFRESH_WINDOW_S,
    OAuthClient,
    OAuthEndpoints,
    OAuthError,
    refresh_backoff_ms,
)
from palyra.auth.profiles import (
    AuthProfile,
    ProfileError,
    ProfileRepository,
    normalize_agent_id,
    normalize_name,
    normalize_profile_id,
)
from palyra.config.models import PalyraConfig, ProviderConfig
from palyra.vault.refs import VaultRef
from palyra.vault.store import Vault

log = logging.getLogger("palyra.auth")

PROVIDER_OF_KIND = {"openai_compatible": "openai", "anthropic": "anthropic"}
# Cooldown after a failure of this kind, seconds (transient failures are the breaker's business).
COOLDOWN_S = {"auth_invalid": 300.0, "quota": 1800.0, "rate_limit": 60.0}
FAILURE_KIND = {
    "auth_invalid": "auth_invalid",
    "permission_denied": "auth_invalid",
    "quota_exceeded": "quota",
    "rate_limited": "rate_limit",
}


class CredentialUnavailable(Exception):
    """No usable credential for this provider and agent; the message says which setting to fix."""

    def __init__(self, message: str, *, kind: str = "missing") -> None:
        super().__init__(message)
        self.message = message
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Resolved:
    profile_id: str
    secret: str


def slug(text: str) -> str:
    s = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")
    return s or "profile"


def vault_ref(profile: AuthProfile, suffix: str) -> VaultRef:
    digest = hashlib.sha256(profile.profile_id.encode()).hexdigest()[:16]
    label = (profile.custom_name or profile.provider) if profile.provider == "custom" else profile.provider
    return VaultRef(scope=profile.scope, key=f"auth_{slug(label).replace('-', '_')}_{digest}_{suffix}")


class AuthService:
    def __init__(
        self,
        repo: ProfileRepository,
        vault: Vault,
        audit: AuditLog,
        oauth: OAuthClient,
        config: PalyraConfig,
        *,
        cache_ttl_s: float = 5.0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.repo = repo
        self.vault = vault
        self.audit = audit
        self.oauth = oauth
        self.config = config
        self._ttl = cache_ttl_s
        self._clock = clock
        self._profiles: dict[str, tuple[AuthProfile | None, float]] = {}
        self._overrides: dict[tuple[str, str | None, str], tuple[AuthProfile | None, float]] = {}
        self._secrets: dict[str, tuple[str | None, float]] = {}
        self._refresh_locks: dict[str, asyncio.Lock] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._accessed: set[str] = set()

    # --- cache ---------------------------------------------------------------------------------

    def invalidate(self) -> None:
        self._accessed.clear()
        self._profiles.clear()
        self._overrides.clear()
        self._secrets.clear()

    async def _profile(self, profile_id: str) -> AuthProfile | None:
        hit = self._profiles.get(profile_id)
        now = self._clock()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        profile = await self.repo.get(profile_id)
        self._profiles[profile_id] = (profile, now)
        return profile

    async def _override(self, base: AuthProfile, agent_id: str) -> AuthProfile | None:
        key = (base.provider, base.custom_name, agent_id)
        hit = self._overrides.get(key)
        now = self._clock()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        found = [
            p
            for p in await self.repo.agent_profiles(base.provider, agent_id)
            if p.custom_name == base.custom_name
        ]
        profile = found[0] if found else None
        self._overrides[key] = (profile, now)
        return profile

    async def _secret(self, ref: str | None) -> str | None:
        if not ref:
            return None
        hit = self._secrets.get(ref)
        now = self._clock()
        if hit is not None and now - hit[1] < self._ttl:
            return hit[0]
        value = await self.vault.get(ref)
        self._secrets[ref] = (value, now)
        return value

    # --- resolution on the request path --------------------------------------------------------

    async def resolve(self, provider: ProviderConfig, agent_id: str | None) -> Resolved:
        """The credential for a call to ``provider`` on behalf of ``agent_id``.

        The provider's ``auth_profile_id`` is the default; an agent's own profile for the same upstream
        (same provider kind and custom name) takes precedence; a profile scoped to one agent is never
        used for another agent's request.
        """
        pid = provider.auth_profile_id
        assert pid is not None
        base = await self._profile(pid)
        if base is None:
            raise CredentialUnavailable(
                f"provider '{provider.provider_id}' names auth_profile_id '{pid}', which does not exist; "
                "create it with `palyra auth add-key --provider "
                f"{PROVIDER_OF_KIND.get(provider.kind, 'custom')} --profile-id {pid}`"
            )
        chosen = base
        if agent_id is not None:
            chosen = await self._override(base, agent_id) or base
        if chosen.agent_id is not None and chosen.agent_id != agent_id:
            raise CredentialUnavailable(
                f"auth profile '{chosen.profile_id}' is scoped to agent '{chosen.agent_id}' and cannot be "
                f"used for {'agent ' + repr(agent_id) if agent_id else 'requests without an agent'}",
                kind="scope",
            )
        now = self._clock()
        if chosen.cooldown_until is not None and chosen.cooldown_until > now:
            raise CredentialUnavailable(
                f"auth profile '{chosen.profile_id}' is cooling down after {chosen.last_failure_kind} for "
                f"{chosen.cooldown_until - now:.0f} s more",
                kind="cooldown",
            )
        if chosen.credential_type == "api_key":
            secret = await self._secret(chosen.api_key_ref)
        else:
            if chosen.expires_at is not None and chosen.expires_at - now <= EXPIRY_REFRESH_WINDOW_S:
                outcome = await self.refresh(chosen.profile_id, force=True, reason="expiring before use")
                chosen = await self._profile(chosen.profile_id) or chosen
                if outcome["state"] != "refreshed" and (chosen.expires_at or 0) <= now:
                    raise CredentialUnavailable(
                        f"auth profile '{chosen.profile_id}' has an expired access token and the refresh "
                        f"failed ({outcome['message']}); reconnect it or retry later",
                        kind="expired",
                    )
            secret = await self._secret(chosen.access_token_ref)
        if not secret:
            raise CredentialUnavailable(
                f"auth profile '{chosen.profile_id}' has no secret in the vault; rotate it with "
                f"`palyra auth add-key --profile-id {chosen.profile_id}`"
            )
        if chosen.profile_id not in self._accessed:
            self._accessed.add(chosen.profile_id)
            self._spawn(
                self.audit.record(
                    "secret.accessed",
                    target=chosen.profile_id,
                    actor="system:gateway",
                    provider_id=provider.provider_id,
                    agent_id=agent_id,
                )
            )
        return Resolved(chosen.profile_id, secret)

    async def has_secret(self, profile_id: str) -> bool:
        profile = await self._profile(profile_id)
        if profile is None:
            return False
        ref = profile.api_key_ref if profile.credential_type == "api_key" else profile.refresh_token_ref
        return bool(await self._secret(ref))

    def feedback(self, profile_id: str, failure_class: str | None) -> None:
        """Record the outcome of a call made with this profile (off the request path)."""
        self._spawn(self._feedback(profile_id, failure_class))

    def _spawn(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _feedback(self, profile_id: str, failure_class: str | None) -> None:
        try:
            profile = await self._profile(profile_id)
            if profile is None:
                return
            now = self._clock()
            if failure_class is None:
                if profile.failure_count or profile.cooldown_until:
                    await self.repo.update_fields(
                        profile_id, failure_count=0, cooldown_until=None, last_success_at=now
                    )
                    self._profiles.pop(profile_id, None)
                return
            kind = FAILURE_KIND.get(failure_class, "transient")
            if kind == "auth_invalid" and profile.credential_type == "oauth":
                # A refused access token is most likely expired early: refresh before the next use
                # rather than locking the profile out.
                await self.repo.update_fields(
                    profile_id,
                    failure_count=profile.failure_count + 1,
                    last_failure_kind="refresh_due",
                    last_failure_at=now,
                    expires_at=now,
                )
                self._profiles.pop(profile_id, None)
                return
            cooldown = COOLDOWN_S.get(kind)
            await self.repo.update_fields(
                profile_id,
                failure_count=profile.failure_count + 1,
                last_failure_kind=kind,
                last_failure_at=now,
                cooldown_until=now + cooldown if cooldown else profile.cooldown_until,
            )
            self._profiles.pop(profile_id, None)
            self._overrides.clear()
        except Exception:
            log.exception("recording auth profile feedback failed")

    async def drain(self) -> None:
        if self._background:
            await asyncio.gather(*self._background, return_exceptions=True)

    # --- operations ----------------------------------------------------------------------------

    def key_check_target(self, provider: str, profile_id: str, provider_id: str | None) -> KeyCheckTarget:
        configured = self.config.model_provider.providers
        chosen: ProviderConfig | None = None
        if provider_id:
            chosen = next((p for p in configured if p.provider_id == provider_id), None)
            if chosen is None:
                raise ProfileError("provider_id", "unknown", f"no configured provider '{provider_id}'")
        if chosen is None:
            chosen = next((p for p in configured if p.auth_profile_id == profile_id), None)
        if chosen is None:
            chosen = next((p for p in configured if PROVIDER_OF_KIND.get(p.kind) == provider), None)
        default = ANTHROPIC_DEFAULT_BASE if provider == "anthropic" else OPENAI_DEFAULT_BASE
        if chosen is None or not chosen.base_url:
            return KeyCheckTarget(provider, default, chosen.allow_private_base_url if chosen else False)
        return KeyCheckTarget(provider, chosen.base_url, chosen.allow_private_base_url)

    async def add_api_key(
        self,
        *,
        provider: str,
        api_key: str,
        profile_name: str | None = None,
        profile_id: str | None = None,
        agent_id: str | None = None,
        custom_name: str | None = None,
        validate: bool = True,
        provider_id: str | None = None,
    ) -> tuple[AuthProfile, bool]:
        """Create or rotate (same id) an API-key profile. Returns (profile, rotated)."""
        if provider not in ("openai", "anthropic", "custom"):
            raise ProfileError("provider", "unsupported", "provider must be openai, anthropic or custom")
        key = api_key.strip()
        if not key:
            raise ProfileError("api_key", "required", "api_key cannot be empty")
        name = normalize_name(profile_name or provider.capitalize())
        pid = normalize_profile_id(profile_id) if profile_id else f"{slug(name)}-{secrets.token_hex(4)}"
        agent = normalize_agent_id(agent_id) if agent_id else None
        existing = await self.repo.get(pid)
        if existing is not None and existing.provider != provider:
            raise ProfileError(
                "profile_id",
                "conflict",
                f"profile '{pid}' belongs to provider {existing.provider}, not {provider}",
            )
        if validate:
            await check_api_key(self.key_check_target(provider, pid, provider_id), key)
        now = self._clock()
        profile = AuthProfile(
            profile_id=pid,
            provider=provider,  # type: ignore[arg-type]
            custom_name=custom_name.strip().lower() if custom_name else None,
            profile_name=name,
            agent_id=agent,
            credential_type="api_key",
            created_at=existing.created_at if existing else now,
            updated_at=now,
        )
        ref = vault_ref(profile, "api_key")
        profile = profile.with_changes(api_key_ref=str(ref))
        await self.vault.put(ref, key)
        await self.audit.record("secret.updated", target=str(ref), actor="system:auth", profile_id=pid)
        await self.repo.save(profile)
        if existing is not None:
            # A rotation that changed the scope (or type) must not orphan the old secrets.
            for old in set(existing.refs()) - set(profile.refs()):
                if await self.vault.delete(old):
                    await self.audit.record("secret.deleted", target=old, actor="system:auth", profile_id=pid)
        self.invalidate()
        action = "auth.profile.rotated" if existing else "auth.profile.saved"
        await self.audit.record(
            action,
            target=pid,
            provider=provider,
            scope=profile.scope,
            credential_type="api_key",
            validated=validate,
        )
        return profile, existing is not None

    async def save_oauth(
        self,
        *,
        provider: str,
        profile_id: str | None,
        profile_name: str,
        agent_id: str | None,
        endpoints: OAuthEndpoints,
        client_id: str,
        client_secret: str | None,
        scopes: tuple[str, ...],
        access_token: str,
        refresh_token: str,
        expires_in_s: float | None,
    ) -> AuthProfile:
        name = normalize_name(profile_name)
        pid = normalize_profile_id(profile_id) if profile_id else f"{slug(name)}-{secrets.token_hex(4)}"
        existing = await self.repo.get(pid)
        now = self._clock()
        profile = AuthProfile(
            profile_id=pid,
            provider=provider,  # type: ignore[arg-type]
            profile_name=name,
            agent_id=normalize_agent_id(agent_id) if agent_id else None,
            credential_type="oauth",
            created_at=existing.created_at if existing else now,
            updated_at=now,
            client_id=client_id,
            token_url=endpoints.token_url,
            revoke_url=endpoints.revoke_url,
            scopes=scopes,
            expires_at=now + expires_in_s if expires_in_s else None,
            refresh_last_success=now,
        )
        access_ref, refresh_ref = (
            vault_ref(profile, "oauth_access_token"),
            vault_ref(profile, "oauth_refresh_token"),
        )
        await self.vault.put(access_ref, access_token)
        await self.vault.put(refresh_ref, refresh_token)
        secret_ref = None
        if client_secret:
            secret_ref = vault_ref(profile, "oauth_client_secret")
            await self.vault.put(secret_ref, client_secret)
        profile = profile.with_changes(
            access_token_ref=str(access_ref),
            refresh_token_ref=str(refresh_ref),
            client_secret_ref=str(secret_ref) if secret_ref else None,
        )
        await self.repo.save(profile)
        if existing is not None:
            for old in set(existing.refs()) - set(profile.refs()):
                await self.vault.delete(old)
        self.invalidate()
        await self.audit.record(
            "auth.profile.saved", target=pid, provider=provider, scope=profile.scope, credential_type="oauth"
        )
        return profile

    async def refresh(
        self, profile_id: str, *, force: bool = False, reason: str = "requested"
    ) -> dict[str, Any]:
        """Refresh an OAuth profile, single-flight per profile. Honours the failure backoff."""
        lock = self._refresh_locks.setdefault(profile_id, asyncio.Lock())
        async with lock:
            profile = await self.repo.get(profile_id)
            if profile is None:
                raise ProfileError("profile_id", "not_found", f"no auth profile '{profile_id}'")
            if profile.credential_type != "oauth":
                return {"state": "not_oauth", "message": "API-key profiles have nothing to refresh"}
            now = self._clock()
            if (
                profile.expires_at is not None
                and profile.expires_at - now > EXPIRY_REFRESH_WINDOW_S
                and profile.refresh_last_success is not None
                and now - profile.refresh_last_success < 5
                and reason == "expiring before use"
            ):
                # Someone else refreshed while we waited for the lock.
                return {
                    "state": "refreshed",
                    "message": "refreshed concurrently",
                    "expires_at": profile.expires_at,
                }
            if profile.refresh_next_allowed is not None and profile.refresh_next_allowed > now:
                return {
                    "state": "cooldown",
                    "message": f"refresh backing off for {profile.refresh_next_allowed - now:.0f} s after "
                    f"{profile.refresh_failures} failure(s)",
                }
            refresh_token = (
                await self.vault.get(profile.refresh_token_ref) if profile.refresh_token_ref else None
            )
            client_secret = (
                await self.vault.get(profile.client_secret_ref) if profile.client_secret_ref else None
            )
            if not refresh_token or not profile.token_url:
                return await self._refresh_failed(profile, "refresh token reference is missing or unreadable")
            endpoints = OAuthEndpoints(
                authorize_url=profile.token_url, token_url=profile.token_url, revoke_url=profile.revoke_url
            )
            try:
                tokens = await self.oauth.refresh(
                    endpoints,
                    client_id=profile.client_id or "",
                    client_secret=client_secret,
                    refresh_token=refresh_token,
                    scopes=profile.scopes,
                )
            except OAuthError as exc:
                return await self._refresh_failed(profile, str(exc))
            if tokens.refresh_token:
                await self.vault.put(profile.refresh_token_ref or "", tokens.refresh_token)
            await self.vault.put(profile.access_token_ref or "", tokens.access_token)
            now = self._clock()
            expires_at = now + tokens.expires_in_s if tokens.expires_in_s else profile.expires_at
            await self.repo.update_fields(
                profile_id,
                expires_at=expires_at,
                refresh_failures=0,
                refresh_last_error=None,
                refresh_last_attempt=now,
                refresh_last_success=now,
                refresh_next_allowed=None,
                updated_at=max(profile.updated_at + 0.001, now),
            )
            self.invalidate()
            await self.audit.record("auth.profile.refreshed", target=profile_id, reason=reason)
            return {"state": "refreshed", "message": "access token refreshed", "expires_at": expires_at}

    async def refresh_due(self, window_s: float = 300.0) -> dict[str, Any]:
        """The ``oauth_refresh`` job: refresh OAuth profiles expiring within ``window_s`` (backoff kept)."""
        now = self._clock()
        outcomes: dict[str, int] = {}
        due: list[str] = []
        after: str | None = None
        while True:
            page = await self.repo.list(after=after, limit=500)
            if not page:
                break
            due += [
                p.profile_id
                for p in page
                if p.credential_type == "oauth"
                and p.expires_at is not None
                and p.expires_at - now <= window_s
            ]
            after = page[-1].profile_id
        for profile_id in due:
            outcome = await self.refresh(profile_id, force=True, reason="scheduled")
            outcomes[outcome["state"]] = outcomes.get(outcome["state"], 0) + 1
        return {"due": len(due), "outcomes": outcomes}

    async def _refresh_failed(self, profile: AuthProfile, message: str) -> dict[str, Any]:
        now = self._clock()
        failures = profile.refresh_failures + 1
        next_allowed = now + refresh_backoff_ms(profile.provider, failures) / 1000.0
        await self.repo.update_fields(
            profile.profile_id,
            refresh_failures=failures,
            refresh_last_error=message[:200],
            refresh_last_attempt=now,
            refresh_next_allowed=next_allowed,
        )
        self.invalidate()
        await self.audit.record("auth.profile.refresh_failed", target=profile.profile_id, error=message[:200])
        return {"state": "failed", "message": message, "next_allowed_at": next_allowed}

    async def revoke(self, profile_id: str) -> dict[str, Any]:
        """OAuth: revoke at the provider first (a failure keeps everything); then delete locally."""
        profile = await self.repo.get(profile_id)
        if profile is None:
            raise ProfileError("profile_id", "not_found", f"no auth profile '{profile_id}'")
        remote = False
        if profile.credential_type == "oauth" and profile.revoke_url:
            token = await self.vault.get(profile.refresh_token_ref) if profile.refresh_token_ref else None
            secret = await self.vault.get(profile.client_secret_ref) if profile.client_secret_ref else None
            if token:
                endpoints = OAuthEndpoints(
                    authorize_url=profile.token_url or "",
                    token_url=profile.token_url or "",
                    revoke_url=profile.revoke_url,
                )
                await self.oauth.revoke(
                    endpoints, client_id=profile.client_id or "", client_secret=secret, token=token
                )
                remote = True
        await self._remove(profile)
        await self.audit.record(
            "auth.profile.revoked",
            target=profile_id,
            provider=profile.provider,
            credential_type=profile.credential_type,
            remote_revocation=remote,
        )
        message = (
            "OAuth grant revoked at the provider and the profile removed."
            if remote
            else "Profile and its vault secrets removed. Revoke the key in the provider's console too if it "
            "must stop working everywhere."
        )
        return {"profile_id": profile_id, "state": "revoked", "remote_revocation": remote, "message": message}

    async def delete(self, profile_id: str) -> bool:
        profile = await self.repo.get(profile_id)
        if profile is None:
            return False
        await self._remove(profile)
        await self.audit.record("auth.profile.deleted", target=profile_id, provider=profile.provider)
        return True

    async def _remove(self, profile: AuthProfile) -> None:
        for ref in profile.refs():
            if await self.vault.delete(ref):
                await self.audit.record(
                    "secret.deleted", target=ref, actor="system:auth", profile_id=profile.profile_id
                )
        await self.repo.delete(profile.profile_id)
        self.invalidate()

    async def view(self, profile: AuthProfile) -> dict[str, Any]:
        """What an operator may see: the record, its health and eligibility; never a secret."""
        now = self._clock()
        if profile.credential_type == "api_key":
            present = bool(profile.api_key_ref and await self.vault.get(profile.api_key_ref))
            health, reason = (
                ("static", "api key credential is present (static token)")
                if present
                else ("missing", "the api key is missing from the vault")
            )
        elif not (profile.refresh_token_ref and await self.vault.get(profile.refresh_token_ref)):
            health, reason = "missing", "the refresh token is missing from the vault"
        elif not (profile.access_token_ref and await self.vault.get(profile.access_token_ref)):
            health, reason = "missing", "the access token is missing; refresh required"
        elif profile.expires_at is None:
            health, reason = "ok", "no expiry reported"
        elif profile.expires_at <= now:
            health, reason = "expired", "the access token has expired"
        elif profile.expires_at - now <= EXPIRING_WINDOW_S:
            health, reason = "expiring", f"expires in {profile.expires_at - now:.0f} s"
        else:
            health, reason = "ok", f"expires in {profile.expires_at - now:.0f} s"
        cooling = profile.cooldown_until is not None and profile.cooldown_until > now
        return {
            "profile_id": profile.profile_id,
            "provider": profile.provider,
            "custom_name": profile.custom_name,
            "profile_name": profile.profile_name,
            "scope": {"kind": "agent", "agent_id": profile.agent_id}
            if profile.agent_id
            else {"kind": "global"},
            "credential": {
                "type": profile.credential_type,
                "vault_refs": profile.refs(),
                "client_id": profile.client_id,
                "token_url": profile.token_url,
                "scopes": list(profile.scopes),
                "expires_at": profile.expires_at,
            },
            "health": health,
            "health_reason": reason,
            "eligibility": "cooling_down"
            if cooling
            else ("eligible" if health in ("static", "ok", "expiring") else health),
            "cooldown_until": profile.cooldown_until if cooling else None,
            "failure_count": profile.failure_count,
            "last_failure_kind": profile.last_failure_kind,
            "refresh": {
                "failures": profile.refresh_failures,
                "last_error": profile.refresh_last_error,
                "last_attempt": profile.refresh_last_attempt,
                "last_success": profile.refresh_last_success,
                "next_allowed": profile.refresh_next_allowed,
            },
            "created_at": profile.created_at,
            "updated_at": profile.updated_at,
        }
