"""API token records: create, find by hash, list, revoke. Plaintext tokens are never stored."""

from __future__ import annotations

import time
from dataclasses import dataclass

from sqlalchemy import insert, select, update

from palyra.storage.db import Database
from palyra.storage.schema import api_tokens


@dataclass(frozen=True, slots=True)
class TokenRecord:
    token_id: str
    name: str
    display_prefix: str
    scopes: frozenset[str]
    agent_id: str | None
    rate_limit_per_minute: int | None
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    last_used_at: float | None
    routing_mode: str | None = None

    def is_active(self, now: float) -> bool:
        return self.revoked_at is None and (self.expires_at is None or self.expires_at > now)

    def public(self) -> dict[str, object]:
        """What may be shown to an operator: everything but the hash."""
        return {
            "token_id": self.token_id,
            "name": self.name,
            "prefix": self.display_prefix,
            "scopes": sorted(self.scopes),
            "agent_id": self.agent_id,
            "rate_limit_per_minute": self.rate_limit_per_minute,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked_at": self.revoked_at,
            "last_used_at": self.last_used_at,
            "routing_mode": self.routing_mode,
            "status": "revoked"
            if self.revoked_at is not None
            else ("expired" if not self.is_active(time.time()) else "active"),
        }


def _record(row: object) -> TokenRecord:
    m = row._mapping  # type: ignore[attr-defined]
    return TokenRecord(
        token_id=m["token_id"],
        name=m["name"],
        display_prefix=m["display_prefix"],
        scopes=frozenset(m["scopes"].split()),
        agent_id=m["agent_id"],
        rate_limit_per_minute=m["rate_limit_per_minute"],
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        revoked_at=m["revoked_at"],
        last_used_at=m["last_used_at"],
        routing_mode=m.get("routing_mode"),
    )


class TokenRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert(self, record: TokenRecord, token_hash: str) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(api_tokens).values(
                    token_id=record.token_id,
                    name=record.name,
                    token_hash=token_hash,
                    display_prefix=record.display_prefix,
                    scopes=" ".join(sorted(record.scopes)),
                    agent_id=record.agent_id,
                    rate_limit_per_minute=record.rate_limit_per_minute,
                    created_at=record.created_at,
                    expires_at=record.expires_at,
                    routing_mode=record.routing_mode,
                )
            )

    async def find_by_hash(self, token_hash: str) -> TokenRecord | None:
        async with self._db.engine.connect() as conn:
            row = (
                await conn.execute(select(api_tokens).where(api_tokens.c.token_hash == token_hash))
            ).first()
        return _record(row) if row is not None else None

    async def get(self, token_id: str) -> TokenRecord | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(api_tokens).where(api_tokens.c.token_id == token_id))).first()
        return _record(row) if row is not None else None

    async def list(self, *, include_revoked: bool = True) -> list[TokenRecord]:
        query = select(api_tokens).order_by(api_tokens.c.created_at.desc())
        if not include_revoked:
            query = query.where(api_tokens.c.revoked_at.is_(None))
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def revoke(self, token_id: str, *, now: float) -> tuple[bool, str | None]:
        """Revoke; returns (changed, token_hash) so callers can drop cached lookups."""
        async with self._db.engine.begin() as conn:
            row = (
                await conn.execute(
                    select(api_tokens.c.token_hash, api_tokens.c.revoked_at).where(
                        api_tokens.c.token_id == token_id
                    )
                )
            ).first()
            if row is None:
                return False, None
            if row.revoked_at is not None:
                return False, row.token_hash
            await conn.execute(
                update(api_tokens).where(api_tokens.c.token_id == token_id).values(revoked_at=now)
            )
            return True, row.token_hash

    async def touch(self, used: dict[str, float]) -> None:
        if not used:
            return
        async with self._db.engine.begin() as conn:
            for token_id, at in used.items():
                await conn.execute(
                    update(api_tokens).where(api_tokens.c.token_id == token_id).values(last_used_at=at)
                )
