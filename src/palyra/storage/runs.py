"""The run journal's rows: batched inserts and the queries behind `palyra usage` and usage/runs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Select, func, insert, select

from palyra.storage.db import Database
from palyra.storage.schema import runs

GROUP_COLUMNS = {
    "model": runs.c.model_id,
    "agent": runs.c.agent_id,
    "session": runs.c.session_id,
    "provider": runs.c.provider_id,
    "token": runs.c.token_id,
    "endpoint": runs.c.endpoint,
}


class RunRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def insert_many(self, rows: Sequence[dict[str, Any]]) -> None:
        if not rows:
            return
        async with self._db.engine.begin() as conn:
            await conn.execute(insert(runs), list(rows))

    async def get(self, request_id: str) -> dict[str, Any] | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(runs).where(runs.c.request_id == request_id))).first()
        return dict(row._mapping) if row is not None else None

    async def recent(
        self,
        *,
        since: float | None = None,
        limit: int = 50,
        before: float | None = None,
        filters: dict[str, str] | None = None,
    ) -> list[dict[str, Any]]:
        query = self._filtered(select(runs), since=since, filters=filters)
        if before is not None:
            query = query.where(runs.c.created_at < before)
        query = query.order_by(runs.c.created_at.desc()).limit(limit)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [dict(r._mapping) for r in rows]

    async def totals(
        self, *, since: float | None = None, by: str | None = None, filters: dict[str, str] | None = None
    ) -> list[dict[str, Any]]:
        """Request count, tokens and cost, overall or grouped by model/agent/session/provider/token."""
        cols: list[Any] = [
            func.count().label("requests"),
            func.sum(func.cast(runs.c.status != "ok", type_=runs.c.prompt_tokens.type)).label("errors"),
            func.coalesce(func.sum(runs.c.prompt_tokens), 0).label("prompt_tokens"),
            func.coalesce(func.sum(runs.c.completion_tokens), 0).label("completion_tokens"),
            func.coalesce(func.sum(runs.c.cached_tokens), 0).label("cached_tokens"),
            func.coalesce(func.sum(runs.c.total_tokens), 0).label("total_tokens"),
            func.sum(runs.c.cost_usd).label("cost_usd"),
            func.coalesce(
                func.sum(func.cast(runs.c.pricing_missing, type_=runs.c.prompt_tokens.type)), 0
            ).label("unpriced_runs"),
        ]
        group = GROUP_COLUMNS.get(by) if by else None
        if by and group is None:
            raise ValueError(f"cannot group by {by!r}; use one of {', '.join(GROUP_COLUMNS)}")
        if group is not None:
            cols.insert(0, group.label("key"))
        query = self._filtered(select(*cols), since=since, filters=filters)
        if group is not None:
            query = query.group_by(group).order_by(func.count().desc())
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d["errors"] = int(d["errors"] or 0)
            out.append(d)
        return out

    @staticmethod
    def _filtered(query: Select[Any], *, since: float | None, filters: dict[str, str] | None) -> Select[Any]:
        if since is not None:
            query = query.where(runs.c.created_at >= since)
        for key, value in (filters or {}).items():
            col = GROUP_COLUMNS.get(key)
            if col is None:
                raise ValueError(f"cannot filter by {key!r}")
            query = query.where(col == value)
        return query
