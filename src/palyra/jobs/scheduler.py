"""The scheduler loop: claims due slots, runs handlers, records history, repairs abandoned runs.

Every replica runs one. Timers live in ``cron_jobs`` (so they survive restarts) and a slot belongs to
the replica whose compare-and-set on the job's ``next_slot_at`` commits first (``CronStore.claim``):
exactly one replica runs it. Overlap across replicas is judged from ``cron_runs``: a run counts as
active while its heartbeat is fresh; one whose replica died is repaired as failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
import os
import secrets
import socket
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

import orjson
from prometheus_client import CollectorRegistry
from sqlalchemy.exc import IntegrityError

from palyra.errors import NotFound, PalyraError
from palyra.jobs.metrics import CronMetrics
from palyra.jobs.overlap import REASON_TEXT, Action
from palyra.jobs.schedule import Schedule, fire_time, plan_due
from palyra.jobs.spec import JobContext, JobSpec
from palyra.jobs.store import Advance, Claim, CronStore, JobRow, MissedSlots, NewRun
from palyra.providers.failures import sanitize_remote_error
from palyra.storage.db import Database

log = logging.getLogger("palyra.jobs")

REPAIRED_AT_START = "run abandoned: the replica running it stopped (repaired at start)"
_ERROR_LIMIT = 1000


class JobConflict(PalyraError):
    """A manual run refused by the job's overlap policy."""

    status = 409
    type = "invalid_request_error"
    code = "job_busy"


@dataclass(frozen=True, slots=True)
class ManualRun:
    run_id: str
    status: str  # running | queued
    replaced: tuple[str, ...] = ()


@dataclass(slots=True)
class _LocalRun:
    job_id: str
    task: asyncio.Task[None]
    cancel_reason: str | None = None


def new_run_id() -> str:
    return "cr_" + secrets.token_hex(12)


def redact_error(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
    return sanitize_remote_error(text, limit=_ERROR_LIMIT)


class Scheduler:
    """Runs registered ``JobSpec``s on their schedules.

    ``clock`` (Unix seconds) and ``sleep`` are injectable so tests drive time; ``tick(now)`` is one
    pass of the loop. ``start()`` syncs definitions, repairs abandoned runs and starts the loop;
    ``stop()`` ends it and cancels what is still running after ``stop_timeout_s``.
    """

    def __init__(
        self,
        db: Database,
        *,
        registry: CollectorRegistry | None = None,
        replica_id: str | None = None,
        clock: Callable[[], float] = time.time,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        max_sleep_s: float = 30.0,
        heartbeat_s: float = 15.0,
        stale_after_s: float = 120.0,
        repair_every_s: float = 60.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.store = CronStore(db)
        self.replica_id = replica_id or f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(3)}"
        self._metrics = CronMetrics(registry if registry is not None else CollectorRegistry())
        self._clock = clock
        self._sleep = sleep
        self._max_sleep_s = max_sleep_s
        self._heartbeat_s = heartbeat_s
        self._stale_after_s = stale_after_s
        self._repair_every_s = repair_every_s
        self._stop_timeout_s = stop_timeout_s
        self._specs: dict[str, JobSpec] = {}
        self._unsynced: set[str] = set()
        self._local: dict[str, _LocalRun] = {}
        self._wake = asyncio.Event()
        self._loop_task: asyncio.Task[None] | None = None
        self._last_repair = -math.inf
        self._ready = False
        self._stopping = False

    # ---- definitions --------------------------------------------------------------------------

    def register(self, spec: JobSpec) -> None:
        """Add a job. Before ``start()`` usually; later ones are synced on the next tick."""
        if spec.name in self._specs:
            raise ValueError(f"job {spec.name!r} is already registered")
        self._specs[spec.name] = spec
        self._unsynced.add(spec.name)
        self._wake.set()

    @property
    def jobs(self) -> Mapping[str, JobSpec]:
        return dict(self._specs)

    async def _sync(self, now: float) -> None:
        """Write definitions: code and config win for schedule and policies; enabled and timers persist."""
        for job_id in sorted(self._unsynced):
            spec = self._specs[job_id]
            values: dict[str, Any] = {
                "kind": spec.schedule.kind,
                "interval_s": spec.schedule.interval_s,
                "cron_expr": spec.schedule.cron,
                "timezone": "UTC",
                "overlap_policy": spec.overlap,
                "misfire_policy": spec.misfire,
                "jitter_s": spec.jitter_s,
                "misfire_grace_s": spec.misfire_grace_s,
                "settings": orjson.dumps(dict(spec.settings), default=str).decode(),
                "updated_at": now,
            }
            row = await self.store.get_job(job_id)
            if row is None:
                first = spec.schedule.next_after(now)
                inserted = await self.store.insert_job(
                    {
                        **values,
                        "job_id": job_id,
                        "enabled": spec.enabled,
                        "next_slot_at": first,
                        "next_run_at": fire_time(job_id, first, spec.jitter_s),
                        "created_at": now,
                    }
                )
                row = None if inserted else await self.store.get_job(job_id)
            if row is not None:
                values |= self._timer_after_sync(spec, row, now)
                await self.store.update_job(job_id, values)
            self._unsynced.discard(job_id)

    @staticmethod
    def _timer_after_sync(spec: JobSpec, row: JobRow, now: float) -> dict[str, float]:
        schedule = spec.schedule
        moved = (row.kind, row.interval_s, row.cron_expr) != (
            schedule.kind,
            schedule.interval_s,
            schedule.cron,
        )
        if moved or row.next_slot_at is None:
            # A new schedule starts from now; the old one's overdue slot is not a misfire of the new.
            slot = schedule.next_after(now)
            return {"next_slot_at": slot, "next_run_at": fire_time(spec.name, slot, spec.jitter_s)}
        if row.jitter_s != spec.jitter_s:
            return {"next_run_at": fire_time(spec.name, row.next_slot_at, spec.jitter_s)}
        return {}

    # ---- lifecycle ----------------------------------------------------------------------------

    async def setup(self) -> None:
        """Sync definitions and repair runs a crashed replica left active. ``start()`` calls it."""
        now = self._clock()
        await self._sync(now)
        await self._repair(now, REPAIRED_AT_START)
        self._ready = True

    async def start(self) -> None:
        await self.setup()
        self._loop_task = asyncio.create_task(self.run_forever(), name="palyra-cron")

    async def stop(self) -> None:
        """End the loop; wait up to ``stop_timeout_s`` for running handlers, then cancel them."""
        self._stopping = True
        self._wake.set()
        if self._loop_task is not None:
            self._loop_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._loop_task
            self._loop_task = None
        if not self._local:
            return
        await asyncio.wait([r.task for r in self._local.values()], timeout=self._stop_timeout_s)
        for run in self._local.values():
            run.cancel_reason = "the daemon stopped before the run finished"
            run.task.cancel()
        if self._local:
            await asyncio.wait([r.task for r in self._local.values()], timeout=5.0)
        for run_id in list(self._local):  # handlers that ignore cancellation
            await self.store.finish(
                run_id,
                status="cancelled",
                now=self._clock(),
                duration_ms=None,
                summary=None,
                error="the daemon stopped before the run finished",
            )

    async def wait_idle(self, within_s: float | None = None) -> None:
        """Wait until no run executes in this replica (tests, graceful shutdown)."""
        deadline = None if within_s is None else time.monotonic() + within_s
        while self._local:
            remaining = None if deadline is None else max(0.0, deadline - time.monotonic())
            if remaining == 0.0:
                raise TimeoutError(f"{len(self._local)} run(s) still executing")
            await asyncio.wait([r.task for r in self._local.values()], timeout=remaining)

    async def run_forever(self) -> None:
        if not self._ready:
            await self.setup()
        while not self._stopping:
            self._wake.clear()
            try:
                await self.tick()
                delay = await self._next_delay()
            except Exception:
                log.exception("scheduler pass failed; retrying in 1 s")
                delay = 1.0
            await self._nap(delay)

    async def _next_delay(self) -> float:
        now = self._clock()
        if self._unsynced:
            return 0.0
        delay = min(self._max_sleep_s, self._last_repair + self._repair_every_s - now)
        earliest = await self.store.earliest_next_run(self._specs.keys())
        if earliest is not None:
            delay = min(delay, earliest - now)
        return max(0.0, delay)

    async def _nap(self, delay: float) -> None:
        """Sleep ``delay`` seconds or until woken (enable, run-now, a run ending, a new job)."""
        if delay <= 0:
            await asyncio.sleep(0)
            return
        sleeper = asyncio.ensure_future(self._sleep(delay))
        waker = asyncio.ensure_future(self._wake.wait())
        try:
            await asyncio.wait({sleeper, waker}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeper, waker):
                task.cancel()
            await asyncio.gather(sleeper, waker, return_exceptions=True)

    # ---- one pass -----------------------------------------------------------------------------

    async def tick(self, now: float | None = None) -> list[str]:
        """One pass at ``now``: start queued runs, then claim due slots. Returns the run ids recorded."""
        now = self._clock() if now is None else now
        if self._stopping:
            return []
        if self._unsynced:
            await self._sync(now)
        if now - self._last_repair >= self._repair_every_s:
            await self._repair(
                now, f"run abandoned: its replica stopped sending heartbeats (repaired by {self.replica_id})"
            )
        recorded: list[str] = []
        for queued in await self.store.queued_runs(self._specs.keys()):
            spec = self._specs[queued["job_id"]]
            started = await self.store.start_queued(
                spec.name,
                queued["run_id"],
                now=now,
                replica_id=self.replica_id,
                stale_before=now - self._stale_after_s,
            )
            if started:
                self._launch(spec, NewRun(queued["run_id"], queued["slot_at"], queued["trigger"]), now)
                recorded.append(queued["run_id"])
        for job in await self.store.due_jobs(self._specs.keys(), now):
            try:
                recorded += await self._fire(self._specs[job.job_id], job, now)
            except Exception:
                # One job's trouble (its database write, say) must not starve the others.
                log.exception("job %s: could not claim its due slot; retrying on the next pass", job.job_id)
        return recorded

    async def _fire(self, spec: JobSpec, job: JobRow, now: float) -> list[str]:
        assert job.next_slot_at is not None  # due_jobs only returns jobs with a timer
        plan = plan_due(
            spec.schedule,
            job_id=spec.name,
            next_slot=job.next_slot_at,
            now=now,
            jitter_s=spec.jitter_s,
            grace_s=spec.misfire_grace_s,
            misfire=spec.misfire,
        )
        missed = None
        if plan.missed and spec.misfire == "skip":
            assert plan.first_missed is not None and plan.last_missed is not None
            missed = MissedSlots(new_run_id(), plan.first_missed, plan.last_missed, plan.missed)
        run = None
        if plan.run_slot is not None:
            covered = plan.missed if spec.misfire == "catch_up_once" else 0
            run = NewRun(new_run_id(), plan.run_slot, plan.trigger, missed_slots=covered)
        last_slot = plan.run_slot if plan.run_slot is not None else plan.last_missed
        advance = Advance(job.next_slot_at, last_slot or job.next_slot_at, plan.next_slot, plan.next_run_at)
        claim_args: dict[str, Any] = {
            "now": now,
            "replica_id": self.replica_id,
            "stale_before": now - self._stale_after_s,
            "overlap": spec.overlap,
            "advance": advance,
        }
        try:
            claim = await self.store.claim(spec.name, missed=missed, run=run, **claim_args)
        except IntegrityError:
            # The slot already has a run (the timer was moved back by a schedule change and then
            # forth again): it ran once, so only move the timer on.
            log.warning("job %s: slot %s already has a run; moving on", spec.name, plan.run_slot)
            await self.store.claim(spec.name, **claim_args)
            return []
        if not claim.won:
            return []  # another replica claimed this slot first
        recorded = []
        if missed is not None:
            log.warning(
                "job %s missed %d slot(s) (%s); skipped by misfire policy",
                spec.name,
                missed.count,
                spec.schedule.describe(),
            )
            self._metrics.runs.labels(spec.name, "skipped").inc()
            recorded.append(missed.run_id)
        if run is not None:
            self._after_claim(spec, run, claim, now)
            recorded.append(run.run_id)
        return recorded

    def _after_claim(self, spec: JobSpec, run: NewRun, claim: Claim, now: float) -> None:
        assert claim.decision is not None
        action = claim.decision.action
        for run_id in claim.replaced:
            local = self._local.get(run_id)
            if local is not None:
                local.cancel_reason = f"replaced by run {run.run_id} (overlap policy replace)"
                local.task.cancel()
        if action is Action.START:
            self._launch(spec, run, now)
        elif action is Action.QUEUE:
            log.info("job %s: run %s queued behind active run %s", spec.name, run.run_id, claim.active_run_id)
        elif action is Action.SKIP:
            reason = claim.decision.reason or "overlap"
            log.info("job %s: slot skipped: %s", spec.name, REASON_TEXT.get(reason, reason))
            self._metrics.runs.labels(spec.name, "skipped").inc()

    # ---- running ------------------------------------------------------------------------------

    def _launch(self, spec: JobSpec, run: NewRun, started_at: float) -> None:
        task = asyncio.create_task(
            self._execute(spec, run, started_at), name=f"palyra-cron:{spec.name}:{run.run_id}"
        )
        self._local[run.run_id] = _LocalRun(spec.name, task)
        self._metrics.running.labels(spec.name).inc()

    async def _execute(self, spec: JobSpec, run: NewRun, started_at: float) -> None:
        job_log = logging.getLogger(f"palyra.jobs.{spec.name}")

        async def progress(data: Mapping[str, Any]) -> None:
            await self.store.heartbeat(run.run_id, self._clock(), summary={"progress": dict(data)})

        ctx = JobContext(
            job=spec.name,
            run_id=run.run_id,
            slot_at=run.slot_at,
            trigger=run.trigger,
            missed_slots=run.missed_slots,
            settings=spec.settings,
            log=job_log,
            _progress=progress,
        )
        heartbeat = asyncio.create_task(self._heartbeat(run.run_id))
        summary: dict[str, Any] | None = None
        error: str | None = None
        try:
            try:
                result = await spec.handler(ctx)
                status, summary = "succeeded", dict(result or {})
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None:
                    task.uncancel()
                local = self._local.get(run.run_id)
                status = "cancelled"
                error = (local.cancel_reason if local else None) or "cancelled"
            except Exception as exc:
                status, error = "failed", redact_error(exc)
                job_log.warning("job %s run %s failed: %s", spec.name, run.run_id, error)
            finally:
                heartbeat.cancel()
            finished = self._clock()
            duration_ms = max(0.0, (finished - started_at) * 1000.0)
            try:
                await self.store.finish(
                    run.run_id,
                    status=status,
                    now=finished,
                    duration_ms=duration_ms,
                    summary=summary,
                    error=error,
                )
            except Exception:
                log.exception("job %s: could not record the end of run %s", spec.name, run.run_id)
            self._metrics.runs.labels(spec.name, status).inc()
            self._metrics.duration.labels(spec.name).observe(duration_ms / 1000.0)
            if status == "succeeded":
                self._metrics.last_success.labels(spec.name).set(finished)
        finally:
            self._local.pop(run.run_id, None)
            self._metrics.running.labels(spec.name).dec()
            self._wake.set()  # a queued run may start now

    async def _heartbeat(self, run_id: str) -> None:
        """Keep the run's lease fresh; cancel the handler if the row was ended elsewhere."""
        while True:
            await asyncio.sleep(self._heartbeat_s)
            try:
                alive = await self.store.heartbeat(run_id, self._clock())
            except Exception:
                log.warning("heartbeat of run %s failed; retrying", run_id, exc_info=True)
                continue
            if not alive:
                local = self._local.get(run_id)
                if local is not None:
                    local.cancel_reason = (
                        "the run was ended elsewhere (replaced or repaired by another replica)"
                    )
                    local.task.cancel()
                return

    async def _repair(self, now: float, message: str) -> None:
        self._last_repair = now
        repaired = await self.store.repair_stale(
            stale_before=now - self._stale_after_s, now=now, message=message
        )
        for run_id, job_id in repaired:
            log.warning("job %s: run %s was abandoned by a stopped replica; marked failed", job_id, run_id)
            self._metrics.runs.labels(job_id, "failed").inc()

    # ---- operations ---------------------------------------------------------------------------

    async def run_now(self, job_id: str) -> ManualRun:
        """Start a manual run now (slot = now), subject to the overlap policy; 409 if it refuses."""
        spec = self._spec(job_id)
        now = self._clock()
        run = NewRun(new_run_id(), now, "manual")
        claim = await self.store.claim(
            job_id,
            now=now,
            replica_id=self.replica_id,
            stale_before=now - self._stale_after_s,
            overlap=spec.overlap,
            advance=None,
            run=run,
        )
        if not claim.won or claim.decision is None:
            raise NotFound(f"job {job_id!r} has no definition yet; retry once the scheduler has started")
        if claim.decision.action is Action.REFUSE:
            reason = claim.decision.reason or "overlap"
            raise JobConflict(
                f"job {job_id!r} not started: {REASON_TEXT.get(reason, reason)} "
                f"(active run {claim.active_run_id})",
                code=reason,
            )
        self._after_claim(spec, run, claim, now)
        status = "queued" if claim.decision.action is Action.QUEUE else "running"
        return ManualRun(run.run_id, status, claim.replaced)

    async def set_enabled(self, job_id: str, enabled: bool) -> dict[str, Any]:
        """Enable or disable. Re-enabling restarts the timer from now: a paused job has no misfires."""
        row = await self.store.get_job(job_id)
        if row is None:
            raise NotFound(f"no job {job_id!r}; list them with GET /api/v1/cron/jobs")
        now = self._clock()
        timer = None
        if enabled and not row.enabled:
            spec = self._specs.get(job_id)
            schedule = spec.schedule if spec is not None else Schedule.from_row(row)
            slot = schedule.next_after(now)
            timer = (slot, fire_time(job_id, slot, row.jitter_s))
        await self.store.set_enabled(job_id, enabled, now=now, timer=timer)
        self._wake.set()
        return await self.get_job(job_id)

    async def list_jobs(self) -> list[dict[str, Any]]:
        return [self._annotate(j) for j in await self.store.list_jobs()]

    async def get_job(self, job_id: str) -> dict[str, Any]:
        rows = await self.store.list_jobs(job_id)
        if not rows:
            raise NotFound(f"no job {job_id!r}; list them with GET /api/v1/cron/jobs")
        return self._annotate(rows[0])

    async def runs(
        self, job_id: str | None = None, *, limit: int = 50, before: float | None = None
    ) -> list[dict[str, Any]]:
        if job_id is not None and await self.store.get_job(job_id) is None:
            raise NotFound(f"no job {job_id!r}; list them with GET /api/v1/cron/jobs")
        return await self.store.runs(job_id, limit=limit, before=before)

    async def get_run(self, run_id: str) -> dict[str, Any]:
        run = await self.store.get_run(run_id)
        if run is None:
            raise NotFound(f"no run {run_id!r}; list them with GET /api/v1/cron/runs")
        return run

    def _annotate(self, job: dict[str, Any]) -> dict[str, Any]:
        spec = self._specs.get(job["job_id"])
        job["registered"] = spec is not None
        job["description"] = spec.description if spec is not None else ""
        job["running_here"] = sorted(r for r, local in self._local.items() if local.job_id == job["job_id"])
        return job

    def _spec(self, job_id: str) -> JobSpec:
        spec = self._specs.get(job_id)
        if spec is None:
            raise NotFound(f"no job {job_id!r} on this daemon; list them with GET /api/v1/cron/jobs")
        return spec
