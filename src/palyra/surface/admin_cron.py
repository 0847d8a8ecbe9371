"""Admin API for scheduled jobs: list, inspect, run now, enable/disable, run history."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from palyra.jobs.scheduler import Scheduler

MAX_RUNS_PAGE = 500

LimitQuery = Annotated[int, Query(ge=1, le=MAX_RUNS_PAGE)]
BeforeQuery = Annotated[float | None, Query(description="page: runs created before this Unix time")]


def _page(rows: list[dict[str, Any]], limit: int) -> dict[str, Any]:
    return {"object": "list", "data": rows[:limit], "has_more": len(rows) > limit}


def build_cron_router(scheduler: Scheduler, admin: list[Any]) -> APIRouter:
    router = APIRouter(dependencies=admin)

    @router.get("/cron/jobs")
    async def list_jobs() -> dict[str, Any]:
        return {"object": "list", "data": await scheduler.list_jobs()}

    @router.get("/cron/jobs/{job_id}")
    async def get_job(job_id: str) -> dict[str, Any]:
        return await scheduler.get_job(job_id)

    @router.post("/cron/jobs/{job_id}/run", status_code=202)
    async def run_now(job_id: str) -> dict[str, Any]:
        run = await scheduler.run_now(job_id)
        return {
            "object": "cron.run",
            "job_id": job_id,
            "run_id": run.run_id,
            "status": run.status,
            "replaced": list(run.replaced),
        }

    @router.post("/cron/jobs/{job_id}/enable")
    async def enable(job_id: str) -> dict[str, Any]:
        return await scheduler.set_enabled(job_id, True)

    @router.post("/cron/jobs/{job_id}/disable")
    async def disable(job_id: str) -> dict[str, Any]:
        return await scheduler.set_enabled(job_id, False)

    @router.get("/cron/jobs/{job_id}/runs")
    async def job_runs(job_id: str, limit: LimitQuery = 50, before: BeforeQuery = None) -> dict[str, Any]:
        return _page(await scheduler.runs(job_id, limit=limit + 1, before=before), limit)

    @router.get("/cron/runs")
    async def all_runs(limit: LimitQuery = 50, before: BeforeQuery = None) -> dict[str, Any]:
        return _page(await scheduler.runs(None, limit=limit + 1, before=before), limit)

    @router.get("/cron/runs/{run_id}")
    async def get_run(run_id: str) -> dict[str, Any]:
        return await scheduler.get_run(run_id)

    return router
