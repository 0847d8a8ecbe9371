"""Alerts: soft budget limits crossed, unpriced models used. Deduplicated per subject and window by a
unique key in the database, so N replicas raise one alert, and optionally POSTed to a webhook."""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

import orjson
from sqlalchemy import insert, select, update
from sqlalchemy.exc import IntegrityError

from palyra.storage.db import Database
from palyra.storage.schema import alerts

log = logging.getLogger("palyra.alerts")
WEBHOOK_ATTEMPTS = 3


class AlertLog:
    def __init__(self, db: Database) -> None:
        self._db = db
        self._seen: set[tuple[str, str, str]] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    def raise_soon(
        self,
        kind: str,
        subject: str,
        window_key: str,
        message: str,
        webhook_url: str | None = None,
        **details: Any,
    ) -> None:
        """Raise an alert off the request path; repeated calls for the same window are dropped cheaply."""
        key = (kind, subject, window_key)
        if key in self._seen:
            return
        self._seen.add(key)
        task = asyncio.get_running_loop().create_task(
            self._raise(kind, subject, window_key, message, webhook_url, details)
        )
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _raise(
        self,
        kind: str,
        subject: str,
        window_key: str,
        message: str,
        webhook_url: str | None,
        details: dict[str, Any],
    ) -> None:
        now = time.time()
        try:
            async with self._db.engine.begin() as conn:
                result = await conn.execute(
                    insert(alerts).values(
                        at=now,
                        kind=kind,
                        subject=subject,
                        window_key=window_key,
                        message=message,
                        details=orjson.dumps(details).decode(),
                        webhook_status="pending" if webhook_url else None,
                    )
                )
                alert_id = result.inserted_primary_key[0] if result.inserted_primary_key else None
        except IntegrityError:
            return  # another replica (or an earlier run) raised it for this window already
        except Exception:
            log.exception("recording an alert failed")
            return
        log.warning("alert %s: %s", kind, message, extra={"fields": {"alert": kind, "subject": subject}})
        if webhook_url and alert_id is not None:
            status = await self._post(
                webhook_url,
                {
                    "kind": kind,
                    "subject": subject,
                    "window": window_key,
                    "message": message,
                    "at": now,
                    **details,
                },
            )
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    update(alerts).where(alerts.c.alert_id == alert_id).values(webhook_status=status)
                )

    async def _post(self, url: str, payload: dict[str, Any]) -> str:
        import aiohttp  # loaded with the first webhook, not at start

        async with aiohttp.ClientSession() as session:
            for attempt in range(WEBHOOK_ATTEMPTS):
                try:
                    async with session.post(
                        url,
                        data=orjson.dumps(payload),
                        headers={"content-type": "application/json"},
                        timeout=aiohttp.ClientTimeout(total=5),
                        allow_redirects=False,
                    ) as resp:
                        if resp.status < 300:
                            return "delivered"
                        if resp.status < 500:
                            return f"rejected:{resp.status}"
                except (aiohttp.ClientError, TimeoutError, OSError):
                    pass
                await asyncio.sleep(0.5 * (attempt + 1))
        return "failed"

    async def drain(self) -> None:
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)

    async def list(self, *, limit: int = 100, kind: str | None = None) -> list[dict[str, Any]]:
        query = select(alerts).order_by(alerts.c.alert_id.desc()).limit(limit)
        if kind:
            query = query.where(alerts.c.kind == kind)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        out = []
        for r in rows:
            d = dict(r._mapping)
            d["details"] = orjson.loads(d["details"]) if d["details"] else {}
            out.append(d)
        return out
