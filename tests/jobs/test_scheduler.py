"""The scheduler against SQLite and PostgreSQL, driven by a controllable clock (``tick(now)``)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import CollectorRegistry
from sqlalchemy import insert, select

from palyra.jobs import JobConflict, JobContext, JobSpec, Scheduler
from palyra.jobs.schedule import jitter_offset
from palyra.jobs.scheduler import REPAIRED_AT_START
from palyra.jobs.tables import cron_jobs, cron_runs
from palyra.storage.db import Database, database_url_for

from conftest import PG_URL

T0 = 1_800_000_000.0  # a multiple of 60, 300 and 3600


class Clock:
    def __init__(self, t: float = T0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Recorder:
    """A handler that records its calls; ``gate`` (if set) holds each run until released."""

    def __init__(
        self, *, gate: bool = False, fail: str | None = None, clock: Clock | None = None, takes: float = 0
    ) -> None:
        self.calls: list[JobContext] = []
        self.cancelled: list[str] = []
        self.gate = asyncio.Event() if gate else None
        self.fail = fail
        self.clock, self.takes = clock, takes

    async def __call__(self, ctx: JobContext) -> dict[str, Any]:
        self.calls.append(ctx)
        if self.clock is not None:
            self.clock.t += self.takes
        try:
            if self.gate is not None:
                await self.gate.wait()
        except asyncio.CancelledError:
            self.cancelled.append(ctx.run_id)
            raise
        if self.fail:
            raise RuntimeError(self.fail)
        return {"n": len(self.calls), "slot": ctx.slot_at}


def _url(kind: str, tmp_path: Path) -> str:
    return database_url_for("" if kind == "sqlite" else PG_URL, tmp_path)


@pytest.fixture(params=["sqlite", "postgresql"])
async def db_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[Callable[[], Awaitable[Database]]]:
    """Opens Databases on one shared store: each call is another replica's engine."""
    schema = request.getfixturevalue("pg_schema") if request.param == "postgresql" else ""
    opened: list[Database] = []

    async def open_db() -> Database:
        db = Database(_url(request.param, tmp_path), schema=schema)
        await db.start()
        opened.append(db)
        return db

    yield open_db
    for db in opened:
        await db.close()


@pytest.fixture
async def db(db_factory: Callable[[], Awaitable[Database]]) -> Database:
    return await db_factory()


Make = Callable[..., Scheduler]


@pytest.fixture
async def make(db_factory: Callable[[], Awaitable[Database]]) -> AsyncIterator[Make]:
    """Builds schedulers; stops them before their databases close (a run left going holds locks)."""
    built: list[Scheduler] = []

    def build(db: Database, clock: Clock, *specs: JobSpec, **kwargs: Any) -> Scheduler:
        s = Scheduler(db, clock=clock, registry=CollectorRegistry(), **kwargs)
        for spec in specs:
            s.register(spec)
        built.append(s)
        return s

    yield build
    for s in built:
        await s.stop()


async def runs_of(s: Scheduler, job: str) -> list[dict[str, Any]]:
    return list(reversed(await s.runs(job, limit=500)))


async def test_interval_runs_each_slot_once_and_records_history(db: Database, make: Make) -> None:
    clock = Clock(T0 + 20)
    rec = Recorder()
    s = make(db, clock, JobSpec("every_minute", rec, interval_s=60))
    await s.setup()
    job = await s.get_job("every_minute")
    assert job["next_run_at"] == T0 + 60 and job["kind"] == "interval" and job["registered"]

    assert await s.tick(T0 + 59) == []
    for k in (1, 2, 3):
        clock.t = T0 + 60 * k + 0.5
        assert len(await s.tick()) == 1
        assert await s.tick() == []  # the same slot never runs twice
        await s.wait_idle(5)
    runs = await runs_of(s, "every_minute")
    assert [r["slot_at"] for r in runs] == [T0 + 60, T0 + 120, T0 + 180]
    assert {r["status"] for r in runs} == {"succeeded"}
    r = runs[-1]
    assert r["trigger"] == "scheduled" and r["replica_id"] == s.replica_id
    assert r["started_at"] == T0 + 180.5 and r["finished_at"] == T0 + 180.5 and r["duration_ms"] == 0
    assert r["summary"] == {"n": 3, "slot": T0 + 180} and r["error"] is None
    job = await s.get_job("every_minute")
    assert job["next_run_at"] == T0 + 240 and job["last_run"]["status"] == "succeeded"


async def test_cron_expression(db: Database, make: Make) -> None:
    clock = Clock(T0 + 10)
    rec = Recorder()
    s = make(db, clock, JobSpec("five", rec, cron="*/5 * * * *"))
    await s.setup()
    assert (await s.get_job("five"))["next_run_at"] == T0 + 300
    assert await s.tick(T0 + 299) == []
    assert len(await s.tick(T0 + 300)) == 1
    await s.wait_idle(5)
    assert [c.slot_at for c in rec.calls] == [T0 + 300]
    assert (await s.get_job("five"))["next_run_at"] == T0 + 600


@pytest.mark.parametrize("policy", ["skip", "catch_up_once"])
async def test_misfire_after_an_hour_outage(db: Database, make: Make, policy: str) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    spec = JobSpec("ten_minutes", rec, interval_s=600, misfire=policy)  # type: ignore[arg-type]
    await make(db, clock, spec).setup()  # first slot T0 + 600, persisted
    # The daemon was down for an hour; it comes back 5 minutes after a slot (beyond the 60 s grace).
    clock.t = T0 + 3600 + 300
    s = make(db, clock, JobSpec("ten_minutes", rec, interval_s=600, misfire=policy))  # type: ignore[arg-type]
    await s.setup()
    await s.tick()
    await s.wait_idle(5)
    runs = await runs_of(s, "ten_minutes")
    assert len(runs) == 1
    if policy == "skip":
        assert rec.calls == []
        assert runs[0]["status"] == "skipped" and runs[0]["missed_slots"] == 6
        assert runs[0]["summary"]["reason"] == "misfire_skipped"
        assert runs[0]["summary"]["first_missed"] == T0 + 600
        assert runs[0]["summary"]["last_missed"] == T0 + 3600
    else:
        assert len(rec.calls) == 1 and rec.calls[0].trigger == "catch_up"
        assert rec.calls[0].missed_slots == 6 and rec.calls[0].slot_at == T0 + 3600
        assert runs[0]["status"] == "succeeded" and runs[0]["trigger"] == "catch_up"
    assert (await s.get_job("ten_minutes"))["next_run_at"] == T0 + 4200
    assert await s.tick(T0 + 4199) == []


async def test_skip_still_runs_the_current_slot_when_back_in_time(db: Database, make: Make) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    await make(db, clock, JobSpec("m", rec, interval_s=60)).setup()
    clock.t = T0 + 600 + 5  # slots 60 … 540 missed; slot 600 is 5 s late, within grace
    s = make(db, clock, JobSpec("m", rec, interval_s=60))
    await s.setup()
    await s.tick()
    await s.wait_idle(5)
    runs = await runs_of(s, "m")
    assert [(r["status"], r["missed_slots"]) for r in runs] == [("skipped", 9), ("succeeded", 0)]
    assert [c.slot_at for c in rec.calls] == [T0 + 600]


async def test_overlap_forbid(db: Database, make: Make) -> None:
    clock = Clock(T0)
    rec = Recorder(gate=True)
    s = make(db, clock, JobSpec("slow", rec, interval_s=60))
    await s.setup()
    first = await s.tick(T0 + 60)
    await asyncio.sleep(0.01)
    assert len(rec.calls) == 1
    await s.tick(T0 + 120)
    with pytest.raises(JobConflict) as info:
        await s.run_now("slow")
    assert info.value.status == 409 and first[0] in info.value.message
    assert rec.gate is not None
    rec.gate.set()
    await s.wait_idle(5)
    runs = await runs_of(s, "slow")
    assert [r["status"] for r in runs] == ["succeeded", "skipped"]
    assert (
        runs[1]["summary"]["reason"] == "overlap_forbid" and runs[1]["summary"]["active_run_id"] == first[0]
    )
    assert len(rec.calls) == 1


async def test_overlap_queue_one(db: Database, make: Make) -> None:
    clock = Clock(T0)
    rec = Recorder(gate=True)
    s = make(db, clock, JobSpec("q", rec, interval_s=60, overlap="queue_one"))
    await s.setup()
    await s.tick(T0 + 60)
    await s.tick(T0 + 120)  # queued behind the active run
    await s.tick(T0 + 180)  # the queue holds one: skipped
    with pytest.raises(JobConflict):
        await s.run_now("q")
    statuses = [r["status"] for r in await runs_of(s, "q")]
    assert statuses == ["running", "queued", "skipped"]
    assert rec.gate is not None
    rec.gate.set()
    await s.wait_idle(5)
    clock.t = T0 + 185
    started = await s.tick()  # the active run ended: the queued one starts
    assert len(started) == 1
    await s.wait_idle(5)
    runs = await runs_of(s, "q")
    assert [r["status"] for r in runs] == ["succeeded", "succeeded", "skipped"]
    assert runs[1]["slot_at"] == T0 + 120 and runs[1]["started_at"] == T0 + 185
    assert [c.slot_at for c in rec.calls] == [T0 + 60, T0 + 120]


async def test_overlap_replace(db: Database, make: Make) -> None:
    clock = Clock(T0)
    rec = Recorder(gate=True)
    s = make(db, clock, JobSpec("r", rec, interval_s=60, overlap="replace"))
    await s.setup()
    old = (await s.tick(T0 + 60))[0]
    await asyncio.sleep(0.01)
    new = (await s.tick(T0 + 120))[0]
    await asyncio.sleep(0.05)
    assert rec.cancelled == [old]
    runs = {r["run_id"]: r for r in await runs_of(s, "r")}
    assert runs[old]["status"] == "cancelled" and new in runs[old]["error"]
    assert runs[new]["status"] == "running"
    manual = await s.run_now("r")
    assert manual.replaced == (new,) and manual.status == "running"
    assert rec.gate is not None
    rec.gate.set()
    await s.wait_idle(5)
    runs = {r["run_id"]: r for r in await runs_of(s, "r")}
    assert [runs[i]["status"] for i in (old, new, manual.run_id)] == ["cancelled", "cancelled", "succeeded"]


async def test_replace_reaches_a_run_on_another_replica(
    db_factory: Callable[[], Awaitable[Database]], make: Make
) -> None:
    clock = Clock(T0)
    rec = Recorder(gate=True)
    a = make(await db_factory(), clock, JobSpec("r", rec, interval_s=60, overlap="replace"), heartbeat_s=0.05)
    b = make(await db_factory(), clock, JobSpec("r", rec, interval_s=60, overlap="replace"), heartbeat_s=0.05)
    await a.setup()
    await b.setup()
    old = (await a.tick(T0 + 60))[0]
    new = (await b.tick(T0 + 120))[0]
    # a learns from its heartbeat that its row was cancelled, and stops the handler.
    await a.wait_idle(5)
    assert old in rec.cancelled
    runs = {r["run_id"]: r for r in await runs_of(a, "r")}
    assert runs[old]["status"] == "cancelled" and new in runs[old]["error"]
    assert runs[new]["status"] == "running"
    assert rec.gate is not None
    rec.gate.set()
    await b.wait_idle(5)


async def test_jitter_is_applied_deterministically(db: Database, make: Make) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    s = make(db, clock, JobSpec("jittery", rec, interval_s=300, jitter_s=120))
    await s.setup()
    offset = jitter_offset("jittery", T0 + 300, 120)
    job = await s.get_job("jittery")
    assert job["next_slot_at"] == T0 + 300 and job["next_run_at"] == T0 + 300 + offset
    assert 0 <= offset <= 120
    assert await s.tick(T0 + 300 + offset - 0.01) == []
    assert len(await s.tick(T0 + 300 + offset)) == 1
    await s.wait_idle(5)
    assert rec.calls[0].slot_at == T0 + 300
    job = await s.get_job("jittery")
    assert job["next_run_at"] == T0 + 600 + jitter_offset("jittery", T0 + 600, 120)


async def test_enable_disable(db: Database, make: Make) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    s = make(db, clock, JobSpec("toggle", rec, interval_s=60))
    await s.setup()
    job = await s.set_enabled("toggle", False)
    assert job["enabled"] is False and job["next_run_at"] is None
    assert await s.tick(T0 + 600) == []
    clock.t = T0 + 605
    job = await s.set_enabled("toggle", True)
    # The pause is not a misfire: the timer restarts from now.
    assert job["enabled"] and job["next_run_at"] == T0 + 660
    assert await s.tick(T0 + 605) == []
    assert len(await s.tick(T0 + 660)) == 1
    await s.wait_idle(5)
    assert [r["status"] for r in await runs_of(s, "toggle")] == ["succeeded"]


async def test_run_now_is_manual_and_leaves_the_timer(db: Database, make: Make) -> None:
    clock = Clock(T0 + 7)
    rec = Recorder()
    s = make(db, clock, JobSpec("manual", rec, interval_s=3600, settings={"batch": 64}))
    await s.setup()
    run = await s.run_now("manual")
    await s.wait_idle(5)
    assert run.status == "running"
    r = await s.get_run(run.run_id)
    assert r["trigger"] == "manual" and r["slot_at"] == T0 + 7 and r["status"] == "succeeded"
    assert rec.calls[0].settings == {"batch": 64} and rec.calls[0].trigger == "manual"
    job = await s.get_job("manual")
    assert job["next_run_at"] == T0 + 3600 and job["settings"] == {"batch": 64}


async def test_crash_repair_at_start(db: Database, make: Make) -> None:
    clock = Clock(T0 + 1000)
    s = make(db, clock, JobSpec("crashy", Recorder(), interval_s=60))
    await s.setup()
    async with db.engine.begin() as conn:
        for run_id, heartbeat in (("stale", T0 + 1000 - 300), ("fresh", T0 + 1000 - 10)):
            await conn.execute(
                insert(cron_runs).values(
                    run_id=run_id,
                    job_id="crashy",
                    slot_at=heartbeat,
                    trigger="scheduled",
                    status="running",
                    replica_id="dead-replica",
                    created_at=heartbeat,
                    started_at=heartbeat,
                    heartbeat_at=heartbeat,
                    missed_slots=0,
                )
            )
    restarted = make(db, clock, JobSpec("crashy", Recorder(), interval_s=60))
    await restarted.setup()
    stale, fresh = await restarted.get_run("stale"), await restarted.get_run("fresh")
    assert stale["status"] == "failed" and stale["error"] == REPAIRED_AT_START
    assert stale["finished_at"] == T0 + 1000
    assert fresh["status"] == "running"  # its replica may still be alive
    # Once its heartbeat is stale too, the periodic repair in the loop catches it.
    await restarted.tick(T0 + 1000 + 200)
    await restarted.wait_idle(5)
    fresh = await restarted.get_run("fresh")
    assert fresh["status"] == "failed" and "heartbeats" in fresh["error"]


async def test_failed_run_error_is_redacted(db: Database, make: Make) -> None:
    clock = Clock(T0)
    rec = Recorder(
        fail="upstream said 401 for Authorization: Bearer sk-secret123456 token=abcdef1234",
        clock=clock,
        takes=2.5,
    )
    s = make(db, clock, JobSpec("leaky", rec, interval_s=60))
    await s.setup()
    clock.t = T0 + 60
    await s.tick()
    await s.wait_idle(5)
    (run,) = await runs_of(s, "leaky")
    assert run["status"] == "failed"
    assert "sk-secret123456" not in run["error"] and "abcdef1234" not in run["error"]
    assert "<redacted>" in run["error"] and run["error"].startswith("RuntimeError: upstream said 401")
    assert run["started_at"] == T0 + 60 and run["finished_at"] == T0 + 62.5
    assert run["duration_ms"] == 2500


async def test_progress_is_recorded_while_running(db: Database, make: Make) -> None:
    clock = Clock(T0)
    release = asyncio.Event()

    async def handler(ctx: JobContext) -> dict[str, Any]:
        await ctx.report_progress({"done": 3, "of": 10})
        await release.wait()
        return {"done": 10}

    s = make(db, clock, JobSpec("progress", handler, interval_s=60))
    await s.setup()
    (run_id,) = await s.tick(T0 + 60)
    for _ in range(100):
        if (await s.get_run(run_id))["summary"]:
            break
        await asyncio.sleep(0.01)
    assert (await s.get_run(run_id))["summary"] == {"progress": {"done": 3, "of": 10}}
    release.set()
    await s.wait_idle(5)
    assert (await s.get_run(run_id))["summary"] == {"done": 10}


async def test_two_replicas_run_each_slot_once(
    db_factory: Callable[[], Awaitable[Database]], make: Make
) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    replicas = [
        make(await db_factory(), clock, JobSpec("shared", rec, interval_s=60), replica_id=f"r{i}")
        for i in range(2)
    ]
    await asyncio.gather(*(r.setup() for r in replicas))
    for k in range(1, 9):
        now = T0 + 60 * k
        results = await asyncio.gather(*(r.tick(now) for r in replicas))
        assert sum(len(x) for x in results) == 1, results
        await asyncio.gather(*(r.wait_idle(5) for r in replicas))
    runs = await runs_of(replicas[0], "shared")
    assert [r["slot_at"] for r in runs] == [T0 + 60 * k for k in range(1, 9)]
    assert [c.slot_at for c in rec.calls] == [T0 + 60 * k for k in range(1, 9)]
    # Manual runs on both replicas at once, forbid: one runs, the other is refused.
    gate = Recorder(gate=True)
    blockers = [
        make(await db_factory(), clock, JobSpec("exclusive", gate, interval_s=3600), replica_id=f"x{i}")
        for i in range(2)
    ]
    await asyncio.gather(*(b.setup() for b in blockers))
    outcomes = await asyncio.gather(*(b.run_now("exclusive") for b in blockers), return_exceptions=True)
    assert sorted(type(o).__name__ for o in outcomes) == ["JobConflict", "ManualRun"]
    assert gate.gate is not None
    gate.gate.set()
    await asyncio.gather(*(b.wait_idle(5) for b in blockers))


async def test_timers_and_enabled_flag_survive_a_restart(db: Database, make: Make) -> None:
    clock = Clock(T0 + 5)
    s = make(
        db,
        clock,
        JobSpec("persist", Recorder(), interval_s=3600, jitter_s=600),
        JobSpec("off", Recorder(), interval_s=60),
    )
    await s.setup()
    before = await s.get_job("persist")
    await s.set_enabled("off", False)
    clock.t = T0 + 1800  # restart half-way: the timer is not reset to now + interval
    s2 = make(
        db,
        clock,
        JobSpec("persist", Recorder(), interval_s=3600, jitter_s=600),
        JobSpec("off", Recorder(), interval_s=60),
    )
    await s2.setup()
    after = await s2.get_job("persist")
    assert after["next_run_at"] == before["next_run_at"] and after["next_slot_at"] == T0 + 3600
    assert (await s2.get_job("off"))["enabled"] is False
    # Configuration wins for the schedule: a new interval re-times the job from now.
    s3 = make(
        db, clock, JobSpec("persist", Recorder(), interval_s=600), JobSpec("off", Recorder(), interval_s=60)
    )
    await s3.setup()
    changed = await s3.get_job("persist")
    assert changed["interval_s"] == 600 and changed["next_slot_at"] == T0 + 2400
    async with db.engine.connect() as conn:
        count = (await conn.execute(select(cron_jobs.c.job_id))).all()
    assert len(count) == 2


async def test_stop_cancels_runs_that_outlive_the_grace(db: Database, make: Make) -> None:
    clock = Clock(T0)
    rec = Recorder(gate=True)
    s = make(db, clock, JobSpec("long", rec, interval_s=60), stop_timeout_s=0.05)
    await s.setup()
    (run_id,) = await s.tick(T0 + 60)
    await asyncio.sleep(0.01)
    await s.stop()
    run = await s.get_run(run_id)
    assert run["status"] == "cancelled" and "stopped" in run["error"]
    assert rec.cancelled == [run_id]
    assert await s.tick(T0 + 120) == []  # a stopped scheduler claims nothing


async def test_loop_sleeps_until_the_earliest_job_and_wakes_on_change(db: Database, make: Make) -> None:
    clock = Clock(T0 + 10)
    delays: list[float] = []
    fast, slow = Recorder(), Recorder()

    async def fake_sleep(delay: float) -> None:
        # Time only jumps once runs have finished, as it would for a real minute-long nap.
        await s.wait_idle(5)
        delays.append(delay)
        clock.t += delay
        await asyncio.sleep(0.001)

    s = make(
        db,
        clock,
        JobSpec("fast", fast, interval_s=60),
        JobSpec("slow", slow, interval_s=3600),
        sleep=fake_sleep,
        max_sleep_s=10_000,
        repair_every_s=100_000,
    )
    await s.start()
    for _ in range(500):
        if len(fast.calls) >= 3 and delays:
            break
        await asyncio.sleep(0.005)
    await s.stop()
    # The first nap ran exactly to the fast job's slot (not the slow job's, nor a fixed poll).
    assert delays[0] == pytest.approx(50)
    assert [c.slot_at for c in fast.calls[:3]] == [T0 + 60, T0 + 120, T0 + 180]
    assert slow.calls == []
    assert all(d <= 60 for d in delays)


async def test_unknown_jobs(db: Database, make: Make) -> None:
    from palyra.errors import NotFound

    s = make(db, Clock(), JobSpec("known", Recorder(), interval_s=60))
    await s.setup()
    for call in (s.run_now("nope"), s.set_enabled("nope", True), s.get_job("nope"), s.runs("nope")):
        with pytest.raises(NotFound):
            await call
    with pytest.raises(ValueError, match="already registered"):
        s.register(JobSpec("known", Recorder(), interval_s=60))


async def test_a_slot_that_already_ran_is_not_run_again(db: Database, make: Make) -> None:
    clock = Clock(T0 + 1)
    rec = Recorder()
    s = make(db, clock, JobSpec("once", rec, interval_s=60))
    await s.setup()
    async with db.engine.begin() as conn:  # as if the timer had been moved back to a slot that ran
        await conn.execute(
            insert(cron_runs).values(
                run_id="earlier",
                job_id="once",
                slot_at=T0 + 60,
                trigger="scheduled",
                status="succeeded",
                created_at=T0 + 60,
                missed_slots=0,
            )
        )
    assert await s.tick(T0 + 60) == []
    assert rec.calls == [] and (await s.get_job("once"))["next_run_at"] == T0 + 120
    assert len(await s.tick(T0 + 120)) == 1
    await s.wait_idle(5)
