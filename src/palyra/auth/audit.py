"""The audit log: who changed which credential, when. Never a secret: details are checked on write."""

from __future__ import annotations

import time
from typing import Any

import orjson
from sqlalchemy import insert, select

from palyra.storage.db import Database
from palyra.storage.schema import audit_events

# Keys that would carry a secret value; refusing them at write time keeps the log clean by construction.
_FORBIDDEN = ("api_key", "token", "secret", "password", "authorization")


class AuditLog:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def record(self, action: str, *, target: str | None, actor: str = "admin", **details: Any) -> None:
        for key in details:
            if any(word in key.lower() for word in _FORBIDDEN) and not key.endswith(("_ref", "_type", "_id")):
                raise ValueError(f"audit detail {key!r} looks like a secret; record a reference instead")
        async with self._db.engine.begin() as conn:
            await conn.execute(
                insert(audit_events).values(
                    at=time.time(),
                    action=action,
                    actor=actor,
                    target=target,
                    details=orjson.dumps(details).decode() if details else None,
                )
            )

    async def list(
        self, *, limit: int = 100, before_id: int | None = None, action_prefix: str | None = None
    ) -> list[dict[str, Any]]:
        query = select(audit_events).order_by(audit_events.c.event_id.desc()).limit(limit)
        if before_id is not None:
            query = query.where(audit_events.c.event_id < before_id)
        if action_prefix:
            query = query.where(audit_events.c.action.startswith(action_prefix))
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d["details"] = orjson.loads(d["details"]) if d["details"] else {}
            out.append(d)
        return out
