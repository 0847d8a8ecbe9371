"""The scheduler's rows: job definitions with their timers, and run history.

Every state change of a run is a conditional UPDATE (``WHERE status = 'running'`` and the like), so a
replica that lost a race, or whose run was cancelled or repaired elsewhere, changes nothing. Claims
start by writing the job's row, which serialises them per job: PostgreSQL locks the row until commit,
SQLite takes its single write lock, and the overlap check that follows sees every committed run.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson
from sqlalchemy import exists, func, insert, select, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection

from palyra.jobs.overlap import REASON_TEXT, Action, Decision, OverlapPolicy, decide_overlap
from palyra.jobs.tables import cron_jobs, cron_runs
from palyra.storage.db import Database

ACTIVE = ("accepted", "running")
FINISHED = ("succeeded", "failed", "skipped", "cancelled")
MAX_SUMMARY_BYTES = 16_384


@dataclass(frozen=True, slots=True)
class JobRow:
    job_id: str
    kind: str
    interval_s: float | None
    cron_expr: str | None
    enabled: bool
    overlap_policy: str
    misfire_policy: str
    jitter_s: float
    misfire_grace_s: float
    next_slot_at: float | None
    next_run_at: float | None
    last_slot_at: float | None
    settings: dict[str, Any]


@dataclass(frozen=True, slots=True)
class NewRun:
    run_id: str
    slot_at: float
    trigger: str
    missed_slots: int = 0


@dataclass(frozen=True, slots=True)
class MissedSlots:
    """Slots a ``skip`` job did not run; recorded as one skipped run so the history shows the gap."""

    run_id: str
    first: float
    last: float
    count: int


@dataclass(frozen=True, slots=True)
class Advance:
    """Move the job's timer, but only if it still points at ``expect_slot`` (else another replica won)."""

    expect_slot: float
    last_slot: float
    next_slot: float
    next_run_at: float


@dataclass(frozen=True, slots=True)
class Claim:
    won: bool
    decision: Decision | None = None
    replaced: tuple[str, ...] = field(default_factory=tuple)
    active_run_id: str | None = None


def encode_json(value: Mapping[str, Any] | None) -> str | None:
    if value is None:
        return None
    data = orjson.dumps(value, default=str, option=orjson.OPT_NON_STR_KEYS)
    if len(data) > MAX_SUMMARY_BYTES:
        data = orjson.dumps(
            {"truncated": True, "bytes": len(data), "keys": sorted(str(k) for k in value)[:50]}
        )
    return data.decode()


def _decode(text: str | None) -> Any:
    if not text:
        return None
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return {"raw": text[:1000]}


def _job(row: Any) -> JobRow:
    return JobRow(
        job_id=row.job_id,
        kind=row.kind,
        interval_s=row.interval_s,
        cron_expr=row.cron_expr,
        enabled=bool(row.enabled),
        overlap_policy=row.overlap_policy,
        misfire_policy=row.misfire_policy,
        jitter_s=row.jitter_s,
        misfire_grace_s=row.misfire_grace_s,
        next_slot_at=row.next_slot_at,
        next_run_at=row.next_run_at,
        last_slot_at=row.last_slot_at,
        settings=_decode(row.settings) or {},
    )


def run_view(row: Any) -> dict[str, Any]:
    m = row._mapping
    out = {str(k): m[k] for k in m.keys()}  # noqa: SIM118 - RowMapping keys are Column labels
    out["summary"] = _decode(out.get("summary"))
    return out


def job_view(row: Any) -> dict[str, Any]:
    return {
        "job_id": row.job_id,
        "kind": row.kind,
        "interval_s": row.interval_s,
        "cron": row.cron_expr,
        "timezone": row.timezone,
        "enabled": bool(row.enabled),
        "overlap_policy": row.overlap_policy,
        "misfire_policy": row.misfire_policy,
        "jitter_s": row.jitter_s,
        "misfire_grace_s": row.misfire_grace_s,
        "settings": _decode(row.settings) or {},
        "next_slot_at": row.next_slot_at,
        "next_run_at": row.next_run_at if row.enabled else None,
        "last_slot_at": row.last_slot_at,
        "last_run": None
        if row.last_run_id is None
        else {
            "run_id": row.last_run_id,
            "status": row.last_status,
            "trigger": row.last_trigger,
            "started_at": row.last_started_at,
            "finished_at": row.last_finished_at,
            "error": row.last_error,
        },
        "updated_at": row.updated_at,
    }


class CronStore:
    def __init__(self, db: Database) -> None:
        self._db = db

    # ---- jobs ---------------------------------------------------------------------------------

    async def get_job(self, job_id: str) -> JobRow | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(cron_jobs).where(cron_jobs.c.job_id == job_id))).first()
        return _job(row) if row is not None else None

    async def insert_job(self, values: dict[str, Any]) -> bool:
        """Insert a definition; False if another replica inserted it first."""
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(insert(cron_jobs).values(**values))
        except IntegrityError:
            return False
        return True

    async def update_job(self, job_id: str, values: dict[str, Any]) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(update(cron_jobs).where(cron_jobs.c.job_id == job_id).values(**values))

    async def set_enabled(
        self, job_id: str, enabled: bool, *, now: float, timer: tuple[float, float] | None
    ) -> bool:
        values: dict[str, Any] = {"enabled": enabled, "updated_at": now}
        if timer is not None:
            values["next_slot_at"], values["next_run_at"] = timer
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(cron_jobs).where(cron_jobs.c.job_id == job_id).values(**values)
            )
        return result.rowcount == 1

    async def due_jobs(self, job_ids: Collection[str], now: float) -> list[JobRow]:
        if not job_ids:
            return []
        query = (
            select(cron_jobs)
            .where(
                cron_jobs.c.enabled.is_(True),
                cron_jobs.c.next_run_at <= now,
                cron_jobs.c.job_id.in_(list(job_ids)),
            )
            .order_by(cron_jobs.c.next_run_at, cron_jobs.c.job_id)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_job(r) for r in rows]

    async def earliest_next_run(self, job_ids: Collection[str]) -> float | None:
        if not job_ids:
            return None
        query = select(func.min(cron_jobs.c.next_run_at)).where(
            cron_jobs.c.enabled.is_(True), cron_jobs.c.job_id.in_(list(job_ids))
        )
        async with self._db.engine.connect() as conn:
            value = (await conn.execute(query)).scalar()
        return None if value is None else float(value)

    async def list_jobs(self, job_id: str | None = None) -> list[dict[str, Any]]:
        last = cron_runs.alias("last")
        query = (
            select(
                cron_jobs,
                last.c.status.label("last_status"),
                last.c.trigger.label("last_trigger"),
                last.c.started_at.label("last_started_at"),
                last.c.finished_at.label("last_finished_at"),
                last.c.error.label("last_error"),
            )
            .select_from(cron_jobs.outerjoin(last, last.c.run_id == cron_jobs.c.last_run_id))
            .order_by(cron_jobs.c.job_id)
        )
        if job_id is not None:
            query = query.where(cron_jobs.c.job_id == job_id)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [job_view(r) for r in rows]

    # ---- claims -------------------------------------------------------------------------------

    async def claim(
        self,
        job_id: str,
        *,
        now: float,
        replica_id: str,
        stale_before: float,
        overlap: OverlapPolicy,
        advance: Advance | None,
        missed: MissedSlots | None = None,
        run: NewRun | None = None,
    ) -> Claim:
        """One transaction: move the timer (compare-and-set) or lock the job, then record the run.

        ``won`` is False when the timer had already moved (another replica claimed the slot) or the
        job does not exist; nothing is written then.
        """
        async with self._db.engine.begin() as conn:
            if advance is not None:
                result = await conn.execute(
                    update(cron_jobs)
                    .where(
                        cron_jobs.c.job_id == job_id,
                        cron_jobs.c.next_slot_at == advance.expect_slot,
                        cron_jobs.c.enabled.is_(True),
                    )
                    .values(
                        next_slot_at=advance.next_slot,
                        next_run_at=advance.next_run_at,
                        last_slot_at=advance.last_slot,
                        updated_at=now,
                    )
                )
            else:
                result = await conn.execute(
                    update(cron_jobs)
                    .where(cron_jobs.c.job_id == job_id)
                    .values(updated_at=cron_jobs.c.updated_at)
                )
            if result.rowcount != 1:
                return Claim(won=False)
            if missed is not None:
                await conn.execute(
                    insert(cron_runs).values(
                        run_id=missed.run_id,
                        job_id=job_id,
                        slot_at=missed.first,
                        trigger="scheduled",
                        status="skipped",
                        replica_id=replica_id,
                        created_at=now,
                        started_at=now,
                        finished_at=now,
                        duration_ms=0.0,
                        missed_slots=missed.count,
                        summary=encode_json(
                            {
                                "reason": "misfire_skipped",
                                "message": REASON_TEXT["misfire_skipped"],
                                "missed_slots": missed.count,
                                "first_missed": missed.first,
                                "last_missed": missed.last,
                            }
                        ),
                    )
                )
                await self._set_last_run(conn, job_id, missed.run_id)
            if run is None:
                return Claim(won=True)
            return await self._record_run(conn, job_id, run, now, replica_id, stale_before, overlap)

    async def _record_run(
        self,
        conn: AsyncConnection,
        job_id: str,
        run: NewRun,
        now: float,
        replica_id: str,
        stale_before: float,
        overlap: OverlapPolicy,
    ) -> Claim:
        active = await self._active_runs(conn, job_id, stale_before)
        queued = bool(
            (
                await conn.execute(
                    select(exists().where(cron_runs.c.job_id == job_id, cron_runs.c.status == "queued"))
                )
            ).scalar()
        )
        decision = decide_overlap(overlap, manual=run.trigger == "manual", active=bool(active), queued=queued)
        base = {
            "run_id": run.run_id,
            "job_id": job_id,
            "slot_at": run.slot_at,
            "trigger": run.trigger,
            "created_at": now,
            "missed_slots": run.missed_slots,
        }
        first_active = active[0] if active else None
        if decision.action is Action.REFUSE:
            return Claim(won=True, decision=decision, active_run_id=first_active)
        if decision.action is Action.START:
            if decision.replace:
                await conn.execute(
                    update(cron_runs)
                    .where(cron_runs.c.run_id.in_(active), cron_runs.c.status.in_(ACTIVE))
                    .values(
                        status="cancelled",
                        finished_at=now,
                        error=f"replaced by run {run.run_id} (overlap policy replace)",
                    )
                )
            values = {**base, "status": "running", "replica_id": replica_id}
            values |= {"started_at": now, "heartbeat_at": now}
        elif decision.action is Action.QUEUE:
            values = {**base, "status": "queued"}
        else:
            reason = decision.reason or "overlap"
            values = {**base, "status": "skipped", "replica_id": replica_id}
            values |= {"started_at": now, "finished_at": now, "duration_ms": 0.0}
            values["summary"] = encode_json(
                {"reason": reason, "message": REASON_TEXT.get(reason, reason), "active_run_id": first_active}
            )
        await conn.execute(insert(cron_runs).values(**values))
        await self._set_last_run(conn, job_id, run.run_id)
        return Claim(
            won=True,
            decision=decision,
            replaced=tuple(active) if decision.replace else (),
            active_run_id=first_active,
        )

    async def queued_runs(self, job_ids: Collection[str]) -> list[dict[str, Any]]:
        if not job_ids:
            return []
        query = (
            select(cron_runs)
            .where(cron_runs.c.status == "queued", cron_runs.c.job_id.in_(list(job_ids)))
            .order_by(cron_runs.c.created_at, cron_runs.c.run_id)
        )
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [run_view(r) for r in rows]

    async def start_queued(
        self, job_id: str, run_id: str, *, now: float, replica_id: str, stale_before: float
    ) -> bool:
        """Start a queued run if the job has no active run; False if busy or another replica took it."""
        async with self._db.engine.begin() as conn:
            locked = await conn.execute(
                update(cron_jobs)
                .where(cron_jobs.c.job_id == job_id)
                .values(updated_at=cron_jobs.c.updated_at)
            )
            if locked.rowcount != 1 or await self._active_runs(conn, job_id, stale_before):
                return False
            result = await conn.execute(
                update(cron_runs)
                .where(cron_runs.c.run_id == run_id, cron_runs.c.status == "queued")
                .values(status="running", replica_id=replica_id, started_at=now, heartbeat_at=now)
            )
            return result.rowcount == 1

    @staticmethod
    async def _active_runs(conn: AsyncConnection, job_id: str, stale_before: float) -> list[str]:
        rows = await conn.execute(
            select(cron_runs.c.run_id)
            .where(
                cron_runs.c.job_id == job_id,
                cron_runs.c.status.in_(ACTIVE),
                cron_runs.c.heartbeat_at >= stale_before,
            )
            .order_by(cron_runs.c.created_at)
        )
        return [r.run_id for r in rows]

    @staticmethod
    async def _set_last_run(conn: AsyncConnection, job_id: str, run_id: str) -> None:
        await conn.execute(update(cron_jobs).where(cron_jobs.c.job_id == job_id).values(last_run_id=run_id))

    # ---- a run's life -------------------------------------------------------------------------

    async def heartbeat(self, run_id: str, now: float, *, summary: Mapping[str, Any] | None = None) -> bool:
        """False when the run is no longer ``running`` (cancelled or repaired by another replica)."""
        values: dict[str, Any] = {"heartbeat_at": now}
        if summary is not None:
            values["summary"] = encode_json(summary)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(cron_runs)
                .where(cron_runs.c.run_id == run_id, cron_runs.c.status == "running")
                .values(**values)
            )
        return result.rowcount == 1

    async def finish(
        self,
        run_id: str,
        *,
        status: str,
        now: float,
        duration_ms: float | None,
        summary: Mapping[str, Any] | None,
        error: str | None,
        from_statuses: tuple[str, ...] = ("running",),
    ) -> bool:
        """Record the outcome unless the run was already finished elsewhere (then False)."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(cron_runs)
                .where(cron_runs.c.run_id == run_id, cron_runs.c.status.in_(from_statuses))
                .values(
                    status=status,
                    finished_at=now,
                    heartbeat_at=now,
                    duration_ms=duration_ms,
                    summary=encode_json(summary),
                    error=error,
                )
            )
        return result.rowcount == 1

    async def repair_stale(self, *, stale_before: float, now: float, message: str) -> list[tuple[str, str]]:
        """Fail runs left active by a replica that stopped heartbeating; returns (run_id, job_id)."""
        stale = (cron_runs.c.status.in_(ACTIVE)) & (
            cron_runs.c.heartbeat_at.is_(None) | (cron_runs.c.heartbeat_at < stale_before)
        )
        async with self._db.engine.begin() as conn:
            rows = (await conn.execute(select(cron_runs.c.run_id, cron_runs.c.job_id).where(stale))).all()
            if not rows:
                return []
            await conn.execute(
                update(cron_runs)
                .where(stale, cron_runs.c.run_id.in_([r.run_id for r in rows]))
                .values(status="failed", finished_at=now, error=message)
            )
        return [(r.run_id, r.job_id) for r in rows]

    # ---- history ------------------------------------------------------------------------------

    async def get_run(self, run_id: str) -> dict[str, Any] | None:
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(select(cron_runs).where(cron_runs.c.run_id == run_id))).first()
        return run_view(row) if row is not None else None

    async def runs(
        self, job_id: str | None = None, *, limit: int = 50, before: float | None = None
    ) -> list[dict[str, Any]]:
        """Newest first; ``before`` pages on ``created_at``."""
        query = select(cron_runs).order_by(
            cron_runs.c.created_at.desc(), cron_runs.c.slot_at.desc(), cron_runs.c.run_id.desc()
        )
        if job_id is not None:
            query = query.where(cron_runs.c.job_id == job_id)
        if before is not None:
            query = query.where(cron_runs.c.created_at < before)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query.limit(limit))).all()
        return [run_view(r) for r in rows]
