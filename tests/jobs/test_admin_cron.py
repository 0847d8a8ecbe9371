"""The /api/v1/cron admin routes over ASGI, with the admin API's error mapping."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, generate_latest

from palyra.errors import AuthenticationFailed, PalyraError
from palyra.jobs import JobContext, JobSpec, Scheduler
from palyra.storage.db import Database, database_url_for
from palyra.surface.admin_api import _error
from palyra.surface.admin_cron import build_cron_router

T0 = 1_800_000_000.0
TOKEN = "admin-test-token"


class Clock:
    def __init__(self, t: float) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


class Env:
    def __init__(
        self,
        scheduler: Scheduler,
        client: httpx.AsyncClient,
        gate: asyncio.Event,
        registry: CollectorRegistry,
        clock: Clock,
    ) -> None:
        self.scheduler, self.client, self.gate, self.registry = scheduler, client, gate, registry
        self.clock = clock


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    db = Database(database_url_for("", tmp_path))
    await db.start()
    gate = asyncio.Event()
    clock = Clock(T0 + 5)

    async def slow(ctx: JobContext) -> dict[str, Any]:
        await gate.wait()
        return {"ok": True}

    async def quick(ctx: JobContext) -> dict[str, Any]:
        return {"items": 3}

    registry = CollectorRegistry()
    scheduler = Scheduler(db, clock=clock, registry=registry)
    scheduler.register(JobSpec("memory_maintenance", quick, interval_s=300, settings={"max_entries": 10}))
    scheduler.register(JobSpec("skill_reaudit", slow, cron="0 */6 * * *"))
    await scheduler.setup()

    async def require_admin(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {TOKEN}":
            raise AuthenticationFailed("admin token required")

    api = FastAPI()

    @api.exception_handler(PalyraError)
    async def palyra_error(_request: Request, exc: PalyraError) -> JSONResponse:
        return _error(exc)

    api.include_router(build_cron_router(scheduler, [Depends(require_admin)]))
    transport = httpx.ASGITransport(app=api)
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers={"Authorization": f"Bearer {TOKEN}"}
    ) as client:
        yield Env(scheduler, client, gate, registry, clock)
    gate.set()
    await scheduler.stop()
    await db.close()


async def test_list_and_get_jobs(env: Env) -> None:
    r = await env.client.get("/cron/jobs")
    assert r.status_code == 200
    jobs = {j["job_id"]: j for j in r.json()["data"]}
    assert set(jobs) == {"memory_maintenance", "skill_reaudit"}
    mm = jobs["memory_maintenance"]
    assert mm["kind"] == "interval" and mm["interval_s"] == 300 and mm["settings"] == {"max_entries": 10}
    assert mm["enabled"] and mm["next_run_at"] == T0 + 300 and mm["last_run"] is None
    assert mm["overlap_policy"] == "forbid" and mm["misfire_policy"] == "skip" and mm["timezone"] == "UTC"
    assert jobs["skill_reaudit"]["cron"] == "0 */6 * * *"
    r = await env.client.get("/cron/jobs/skill_reaudit")
    assert r.status_code == 200 and r.json()["kind"] == "cron"
    r = await env.client.get("/cron/jobs/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = await env.client.get("/cron/jobs", headers={"Authorization": "Bearer wrong"})
    assert r.status_code == 401


async def test_run_now_conflict_and_history(env: Env) -> None:
    r = await env.client.post("/cron/jobs/skill_reaudit/run")
    assert r.status_code == 202, r.text
    first = r.json()
    assert first["status"] == "running" and first["run_id"].startswith("cr_")
    env.clock.t += 1
    r = await env.client.post("/cron/jobs/skill_reaudit/run")
    assert r.status_code == 409
    err = r.json()["error"]
    assert err["code"] == "overlap_forbid" and first["run_id"] in err["message"]
    env.gate.set()
    await env.scheduler.wait_idle(5)
    r = await env.client.get("/cron/jobs/skill_reaudit/runs")
    (run,) = r.json()["data"]
    assert run["status"] == "succeeded" and run["trigger"] == "manual" and run["summary"] == {"ok": True}
    r = await env.client.get(f"/cron/runs/{first['run_id']}")
    assert r.status_code == 200 and r.json()["job_id"] == "skill_reaudit"
    assert (await env.client.get("/cron/runs/cr_missing")).status_code == 404
    assert (await env.client.post("/cron/jobs/nope/run")).status_code == 404
    metrics = generate_latest(env.registry).decode()
    assert 'palyra_cron_runs_total{job="skill_reaudit",status="succeeded"} 1.0' in metrics
    assert 'palyra_cron_last_success_timestamp_seconds{job="skill_reaudit"}' in metrics


async def test_runs_paging(env: Env) -> None:
    for _ in range(5):
        env.clock.t += 1
        assert (await env.client.post("/cron/jobs/memory_maintenance/run")).status_code == 202
        await env.scheduler.wait_idle(5)
    r = await env.client.get("/cron/jobs/memory_maintenance/runs", params={"limit": 2})
    page = r.json()
    assert len(page["data"]) == 2 and page["has_more"] is True
    oldest_shown = page["data"][-1]["created_at"]
    r = await env.client.get(
        "/cron/jobs/memory_maintenance/runs", params={"limit": 10, "before": oldest_shown}
    )
    rest = r.json()
    assert len(rest["data"]) == 3 and rest["has_more"] is False
    assert all(x["created_at"] < oldest_shown for x in rest["data"])
    r = await env.client.get("/cron/runs", params={"limit": 500})
    assert len(r.json()["data"]) == 5
    assert (await env.client.get("/cron/runs", params={"limit": 501})).status_code == 422
    assert (await env.client.get("/cron/jobs/nope/runs")).status_code == 404


async def test_enable_disable(env: Env) -> None:
    r = await env.client.post("/cron/jobs/memory_maintenance/disable")
    assert r.status_code == 200 and r.json()["enabled"] is False and r.json()["next_run_at"] is None
    env.clock.t = T0 + 1000
    r = await env.client.post("/cron/jobs/memory_maintenance/enable")
    assert r.status_code == 200 and r.json()["enabled"] is True and r.json()["next_run_at"] == T0 + 1200
    assert (await env.client.post("/cron/jobs/nope/enable")).status_code == 404
