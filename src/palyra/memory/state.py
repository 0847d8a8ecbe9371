"""Small JSON documents in ``memory_state``: what the last maintenance and backfill runs did."""

from __future__ import annotations

from typing import Any

import orjson
from sqlalchemy import delete, insert, select

from palyra.memory.tables import memory_state
from palyra.storage.db import Database

MAINTENANCE = "maintenance"
BACKFILL = "backfill"


async def load_state(db: Database, key: str) -> dict[str, Any] | None:
    async with db.engine.connect() as conn:
        value = (
            await conn.execute(select(memory_state.c.value_json).where(memory_state.c.key == key))
        ).scalar_one_or_none()
    return dict(orjson.loads(value)) if value is not None else None


async def save_state(db: Database, key: str, value: dict[str, Any], now: float) -> None:
    # Delete and insert in one transaction: an upsert both SQLite and PostgreSQL read the same way.
    async with db.engine.begin() as conn:
        await conn.execute(delete(memory_state).where(memory_state.c.key == key))
        await conn.execute(
            insert(memory_state).values(key=key, value_json=orjson.dumps(value).decode(), updated_at=now)
        )
