"""`memory_maintenance`: retention limits, the weekly vacuum and the state it leaves behind.

Each run deletes, in this order and in chunks of bounded size (one short transaction each, so the
journal writer and API never wait long on a lock):

1. items past their own expiry (``ttl_days`` given when added);
2. items older than ``memory.ttl_days``;
3. the oldest items beyond ``memory.max_entries``;
4. the oldest items until the total ``size_bytes`` is at most ``memory.max_bytes``.

A limit of 0 is no limit. The vacuum keeps its own weekly schedule (every 7 days from the first
run, recorded in ``memory_state``), so there is no schedule expression that could fail to parse on
every tick (the reference's quirk 10), and a failing vacuum is reported without undoing the deletes.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import ColumnElement, delete, func, select, text

from palyra.config.models import MemoryConfig
from palyra.memory.state import MAINTENANCE, load_state, save_state
from palyra.memory.tables import memory_items
from palyra.storage.db import Database

log = logging.getLogger("palyra.memory")

VACUUM_INTERVAL_S = 7 * 86_400.0
DEFAULT_CHUNK = 250
_OLDEST_FIRST = (memory_items.c.created_at, memory_items.c.item_id)


async def counts(db: Database) -> dict[str, int]:
    async with db.engine.connect() as conn:
        row = (
            await conn.execute(
                select(func.count(), func.coalesce(func.sum(memory_items.c.size_bytes), 0)).select_from(
                    memory_items
                )
            )
        ).one()
    return {"items": int(row[0]), "bytes": int(row[1])}


async def delete_oldest(
    db: Database, where: ColumnElement[bool] | None, *, chunk: int, cap: int | None = None
) -> tuple[int, int]:
    """Delete matching items oldest first, ``chunk`` per transaction, at most ``cap`` in all.

    Returns (deleted, chunks)."""
    deleted = chunks = 0
    while cap is None or deleted < cap:
        size = chunk if cap is None else min(chunk, cap - deleted)
        query = select(memory_items.c.item_id).order_by(*_OLDEST_FIRST).limit(size)
        if where is not None:
            query = query.where(where)
        async with db.engine.begin() as conn:
            ids = list((await conn.execute(query)).scalars())
            if not ids:
                break
            result = await conn.execute(delete(memory_items).where(memory_items.c.item_id.in_(ids)))
        deleted += result.rowcount
        chunks += 1
        if len(ids) < size:
            break
    return deleted, chunks


async def purge_expired(db: Database, now: float, *, chunk: int = DEFAULT_CHUNK) -> tuple[int, int]:
    """Delete items past their own expiry. Returns (deleted, chunks)."""
    return await delete_oldest(
        db, memory_items.c.expires_at.is_not(None) & (memory_items.c.expires_at <= now), chunk=chunk
    )


async def _trim_entries(db: Database, max_entries: int, chunk: int) -> tuple[int, int]:
    surplus = (await counts(db))["items"] - max_entries
    if surplus <= 0:
        return 0, 0
    return await delete_oldest(db, None, chunk=chunk, cap=surplus)


async def _trim_bytes(db: Database, max_bytes: int, chunk: int) -> tuple[int, int]:
    deleted = chunks = 0
    total_query = select(func.coalesce(func.sum(memory_items.c.size_bytes), 0))
    oldest = select(memory_items.c.item_id, memory_items.c.size_bytes).order_by(*_OLDEST_FIRST).limit(chunk)
    while True:
        async with db.engine.begin() as conn:
            total = int((await conn.execute(total_query)).scalar_one())
            if total <= max_bytes:
                break
            ids: list[str] = []
            for item_id, size in (await conn.execute(oldest)).all():
                ids.append(item_id)
                total -= size
                if total <= max_bytes:
                    break
            if not ids:
                break
            result = await conn.execute(delete(memory_items).where(memory_items.c.item_id.in_(ids)))
        deleted += result.rowcount
        chunks += 1
    return deleted, chunks


async def vacuum(db: Database) -> None:
    """VACUUM outside any transaction (both databases refuse it inside one)."""
    statement = "VACUUM" if db.is_sqlite else "VACUUM (ANALYZE) memory_items"
    async with db.engine.connect() as conn:
        autocommit = await conn.execution_options(isolation_level="AUTOCOMMIT")
        await autocommit.execute(text(statement))


async def run_maintenance(
    db: Database,
    config: MemoryConfig,
    *,
    now: float,
    vacuum_due: bool | None = None,
    chunk: int = DEFAULT_CHUNK,
) -> dict[str, Any]:
    """One `memory_maintenance` tick; the summary returned is also saved as the job's state.

    ``vacuum_due``: None decides from the weekly schedule in ``memory_state``; True or False
    overrides it for this run (a forced vacuum restarts the weekly clock).
    """
    if chunk < 1:
        raise ValueError("chunk must be at least 1")
    previous = await load_state(db, MAINTENANCE) or {}
    next_vacuum_at = previous.get("next_vacuum_at")
    if next_vacuum_at is None:
        # The first run sets the clock instead of vacuuming at start-up, when the daemon is busiest.
        next_vacuum_at = now + VACUUM_INTERVAL_S
    if vacuum_due is None:
        vacuum_due = now >= next_vacuum_at
    before = await counts(db)
    deleted: dict[str, int] = {}
    deleted["expired"], chunks = await purge_expired(db, now, chunk=chunk)
    deleted["ttl_days"] = deleted["max_entries"] = deleted["max_bytes"] = 0
    if config.ttl_days:
        cutoff = now - config.ttl_days * 86_400.0
        deleted["ttl_days"], used = await delete_oldest(db, memory_items.c.created_at <= cutoff, chunk=chunk)
        chunks += used
    if config.max_entries:
        deleted["max_entries"], used = await _trim_entries(db, config.max_entries, chunk)
        chunks += used
    if config.max_bytes:
        deleted["max_bytes"], used = await _trim_bytes(db, config.max_bytes, chunk)
        chunks += used
    vacuumed = False
    vacuum_error: str | None = None
    last_vacuum_at = previous.get("last_vacuum_at")
    if vacuum_due:
        try:
            await vacuum(db)
        except Exception as exc:
            # Reported and retried next tick; the deletes above are already committed.
            log.warning("memory vacuum failed", exc_info=True)
            vacuum_error = f"{type(exc).__name__}: {exc}"[:300]
        else:
            vacuumed = True
            last_vacuum_at = now
            next_vacuum_at = now + VACUUM_INTERVAL_S
    after = await counts(db)
    summary: dict[str, Any] = {
        "ran_at": now,
        "before": before,
        "after": after,
        "deleted": deleted,
        "deleted_total": sum(deleted.values()),
        "chunks": chunks,
        "vacuumed": vacuumed,
        "vacuum_error": vacuum_error,
        "last_vacuum_at": last_vacuum_at,
        "next_vacuum_at": next_vacuum_at,
        "limits": {
            "ttl_days": config.ttl_days,
            "max_entries": config.max_entries,
            "max_bytes": config.max_bytes,
        },
    }
    await save_state(db, MAINTENANCE, summary, now)
    return summary
