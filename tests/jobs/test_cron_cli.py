"""`palyra cron …`: through a running daemon's admin API, and from the database when none answers."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from typer.testing import CliRunner

from palyra.callers.admin import load_admin_token
from palyra.config.load import load_config
from palyra.errors import AuthenticationFailed, PalyraError
from palyra.jobs import JobContext, JobSpec, Scheduler
from palyra.jobs.cli import cron_app
from palyra.storage.db import Database, database_url_for
from palyra.surface.admin_api import _error
from palyra.surface.admin_cron import build_cron_router

from conftest import PG_URL, free_port


async def ok(_ctx: JobContext) -> dict[str, Any]:
    return {"swept": 2}


def specs() -> list[JobSpec]:
    return [
        JobSpec("memory_maintenance", ok, interval_s=300),
        JobSpec("embeddings_backfill", ok, interval_s=600, overlap="queue_one"),
    ]


@pytest.fixture(params=["sqlite", "postgresql"])
def config(request: pytest.FixtureRequest, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    for var in ("PALYRA_CONFIG", "PALYRA_STATE_DIR", "PALYRA_DATABASE_URL", "PALYRA_DATABASE_SCHEMA"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.delenv("PALYRA_ADMIN_TOKEN", raising=False)
    server = f'state_dir = "{tmp_path / "state"}"\nport = {free_port()}\n'
    if request.param == "postgresql":
        schema = request.getfixturevalue("pg_schema")
        server += f'database_url = "{PG_URL}"\ndatabase_schema = "{schema}"\n'
    path = tmp_path / "palyra.toml"
    path.write_text("[server]\n" + server)
    return path


@contextlib.asynccontextmanager
async def opened(config: Path) -> AsyncIterator[Database]:
    cfg = load_config(config, environ={})
    db = Database(
        database_url_for(cfg.server.database_url, Path(cfg.server.state_dir)),
        schema=cfg.server.database_schema,
    )
    await db.start()
    try:
        yield db
    finally:
        await db.close()


def seed(config: Path) -> None:
    """Definitions and one finished run, as a daemon would have left them."""

    async def go() -> None:
        async with opened(config) as db:
            s = Scheduler(db)
            for spec in specs():
                s.register(spec)
            await s.setup()
            await s.run_now("memory_maintenance")
            await s.wait_idle(5)

    asyncio.run(go())


def run(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(cron_app, list(args))
    if result.exception and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout, " ".join(result.stderr.split())


def test_offline_list_runs_and_toggle(config: Path) -> None:
    seed(config)
    code, out, err = run("list", "--config", str(config), "--json")
    assert code == 0, err
    assert "daemon is not reachable" in err
    jobs = {j["job_id"]: j for j in json.loads(out)}
    assert set(jobs) == {"memory_maintenance", "embeddings_backfill"}
    assert jobs["memory_maintenance"]["last_run"]["status"] == "succeeded"

    code, out, _ = run("runs", "memory_maintenance", "--config", str(config), "--json")
    (r,) = json.loads(out)
    assert r["trigger"] == "manual" and r["summary"] == {"swept": 2}
    code, out, _ = run("runs", "--config", str(config))
    assert code == 0 and "memory_maintenance" in out and "succeeded" in out
    code, _, err = run("runs", "nope", "--config", str(config))
    assert code == 1 and "no job 'nope'" in err

    code, out, _ = run("disable", "embeddings_backfill", "--config", str(config))
    assert code == 0 and "disabled" in out
    code, out, _ = run("list", "--config", str(config))
    assert code == 0 and "embeddings_backfill" in " ".join(out.split())
    code, out, _ = run("enable", "embeddings_backfill", "--config", str(config), "--json")
    assert code == 0 and json.loads(out)["enabled"] is True

    code, _, err = run("run", "memory_maintenance", "--config", str(config))
    assert code == 1
    assert "daemon is not reachable" in err and "palyra serve" in err


@contextlib.contextmanager
def mini_daemon(config: Path) -> Iterator[None]:
    """The admin cron routes and a scheduler, served on the configured port like `palyra serve`."""
    cfg = load_config(config, environ={})
    token, _ = load_admin_token(Path(cfg.server.state_dir), environ={})

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async with opened(config) as db:
            scheduler = Scheduler(db)
            for spec in specs():
                scheduler.register(spec)
            await scheduler.start()
            app.include_router(build_cron_router(scheduler, [Depends(require_admin)]), prefix="/api/v1")
            try:
                yield
            finally:
                await scheduler.stop()

    async def require_admin(request: Request) -> None:
        if request.headers.get("authorization") != f"Bearer {token}":
            raise AuthenticationFailed("admin token required")

    app = FastAPI(lifespan=lifespan)

    @app.exception_handler(PalyraError)
    async def palyra_error(_request: Request, exc: PalyraError) -> JSONResponse:
        return _error(exc)

    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=cfg.server.port, log_level="warning", lifespan="on")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "mini daemon did not start"
        time.sleep(0.02)
    try:
        yield
    finally:
        server.should_exit = True
        thread.join(20)


@pytest.mark.parametrize("config", ["sqlite"], indirect=True)
def test_through_the_daemon(config: Path) -> None:
    with mini_daemon(config):
        code, out, err = run("run", "embeddings_backfill", "--config", str(config), "--json")
        assert code == 0, err
        started = json.loads(out)
        assert started["status"] in ("running", "queued") and started["run_id"].startswith("cr_")
        code, out, err = run("list", "--config", str(config), "--json")
        assert code == 0 and "not reachable" not in err
        assert {j["job_id"] for j in json.loads(out)} == {"memory_maintenance", "embeddings_backfill"}
        for _ in range(100):
            code, out, _ = run("runs", "embeddings_backfill", "--config", str(config), "--json")
            if json.loads(out)[0]["status"] == "succeeded":
                break
            time.sleep(0.05)
        assert json.loads(out)[0]["run_id"] == started["run_id"]
        assert json.loads(out)[0]["status"] == "succeeded"
        code, _, err = run("run", "nope", "--config", str(config))
        assert code == 1 and "no job 'nope'" in err
        code, out, _ = run("disable", "memory_maintenance", "--config", str(config))
        assert code == 0 and "memory_maintenance disabled" in " ".join(out.split())
