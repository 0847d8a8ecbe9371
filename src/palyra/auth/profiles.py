"""Auth profile records and their repository. A profile holds vault references, never secret values."""

from __future__ import annotations

import builtins
import re
import time
from dataclasses import asdict, dataclass, replace
from typing import Any, Literal

from sqlalchemy import delete, insert, select, update

from palyra.storage.db import Database
from palyra.storage.schema import auth_profiles

ProviderKind = Literal["openai", "anthropic", "custom"]
CredentialType = Literal["api_key", "oauth"]
_IDENT = re.compile(r"^[a-z0-9._-]{1,128}$")
_AGENT = re.compile(r"^[A-Za-z0-9_.:@-]{1,128}$")


class ProfileError(ValueError):
    """A field of a profile request is invalid; ``field`` names it and ``code`` says how."""

    def __init__(self, field: str, code: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.code = code
        self.message = message


def normalize_profile_id(value: str) -> str:
    v = value.strip().lower()
    if not v:
        raise ProfileError("profile_id", "required", "profile_id cannot be empty")
    if len(v) > 128:
        raise ProfileError("profile_id", "too_long", "profile_id exceeds 128 characters")
    if not _IDENT.match(v):
        raise ProfileError(
            "profile_id", "invalid_format", "profile_id may contain only a-z, 0-9, '.', '_' and '-'"
        )
    return v


def normalize_agent_id(value: str) -> str:
    v = value.strip()
    if not _AGENT.match(v):
        raise ProfileError(
            "scope.agent_id",
            "invalid_format",
            "agent_id must be 1-128 of letters, digits, '_', '.', ':', '@', '-'",
        )
    return v


def normalize_name(value: str) -> str:
    v = value.strip()
    if not v:
        raise ProfileError("profile_name", "required", "profile_name cannot be empty")
    if len(v.encode()) > 256:
        raise ProfileError("profile_name", "too_long", "profile_name exceeds 256 bytes")
    return v


@dataclass(frozen=True, slots=True)
class AuthProfile:
    profile_id: str
    provider: ProviderKind
    profile_name: str
    agent_id: str | None
    credential_type: CredentialType
    created_at: float
    updated_at: float
    custom_name: str | None = None
    api_key_ref: str | None = None
    access_token_ref: str | None = None
    refresh_token_ref: str | None = None
    client_secret_ref: str | None = None
    client_id: str | None = None
    token_url: str | None = None
    revoke_url: str | None = None
    scopes: tuple[str, ...] = ()
    expires_at: float | None = None
    refresh_failures: int = 0
    refresh_last_error: str | None = None
    refresh_last_attempt: float | None = None
    refresh_last_success: float | None = None
    refresh_next_allowed: float | None = None
    failure_count: int = 0
    last_failure_kind: str | None = None
    last_failure_at: float | None = None
    cooldown_until: float | None = None
    last_success_at: float | None = None

    @property
    def scope(self) -> str:
        return f"agent:{self.agent_id}" if self.agent_id else "global"

    @property
    def provider_label(self) -> str:
        return (
            f"custom:{self.custom_name}" if self.provider == "custom" and self.custom_name else self.provider
        )

    def refs(self) -> list[str]:
        return [
            r
            for r in (self.api_key_ref, self.access_token_ref, self.refresh_token_ref, self.client_secret_ref)
            if r
        ]

    def row(self) -> dict[str, Any]:
        d = asdict(self)
        d["scopes"] = " ".join(self.scopes) if self.scopes else None
        return d

    def with_changes(self, **changes: Any) -> AuthProfile:
        return replace(self, **changes)


def _profile(row: Any) -> AuthProfile:
    m = dict(row._mapping)
    m["scopes"] = tuple((m.get("scopes") or "").split())
    return AuthProfile(**m)


class ProfileRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, profile_id: str) -> AuthProfile | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(select(auth_profiles).where(auth_profiles.c.profile_id == profile_id))
            ).first()
        return _profile(row) if row is not None else None

    async def list(
        self,
        *,
        provider: str | None = None,
        agent_id: str | None = None,
        after: str | None = None,
        limit: int = 100,
    ) -> list[AuthProfile]:
        query = select(auth_profiles).order_by(auth_profiles.c.profile_id).limit(limit)
        if provider:
            query = query.where(auth_profiles.c.provider == provider)
        if agent_id:
            query = query.where(auth_profiles.c.agent_id == agent_id)
        if after:
            query = query.where(auth_profiles.c.profile_id > after)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_profile(r) for r in rows]

    async def agent_profiles(self, provider: str, agent_id: str) -> builtins.list[AuthProfile]:
        query = (
            select(auth_profiles)
            .where(auth_profiles.c.provider == provider, auth_profiles.c.agent_id == agent_id)
            .order_by(auth_profiles.c.updated_at.desc())
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_profile(r) for r in rows]

    async def save(self, profile: AuthProfile) -> None:
        row = profile.row()
        async with self._db.engine.begin() as conn:
            exists = (
                await conn.execute(
                    select(auth_profiles.c.profile_id).where(auth_profiles.c.profile_id == profile.profile_id)
                )
            ).first()
            if exists is None:
                await conn.execute(insert(auth_profiles).values(**row))
            else:
                await conn.execute(
                    update(auth_profiles)
                    .where(auth_profiles.c.profile_id == profile.profile_id)
                    .values(**row)
                )

    async def update_fields(self, profile_id: str, **fields: Any) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(auth_profiles).where(auth_profiles.c.profile_id == profile_id).values(**fields)
            )

    async def delete(self, profile_id: str) -> bool:
        async with self._db.engine.begin() as conn:
            result = await conn.execute(delete(auth_profiles).where(auth_profiles.c.profile_id == profile_id))
        return bool(result.rowcount)

    async def count(self) -> int:
        from sqlalchemy import func

        async with self._db.engine.connect() as conn:
            return int((await conn.execute(select(func.count()).select_from(auth_profiles))).scalar_one())


def now() -> float:
    return time.time()
