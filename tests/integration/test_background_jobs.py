"""Background jobs through a real daemon: the built-in jobs, run-now and history, memory through the
API (admin and memory-scoped tokens), the backfill through the normal provider path, and skills."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import httpx2 as httpx
import pytest

from conftest import Daemon, start_daemon
from test_lifecycle import cli


@pytest.fixture(scope="module")
def jd(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("jobs"), config="[memory]\nmax_entries = 3\n")
    yield d
    d.stop()


def wait_run(d: Daemon, job: str, run_id: str, timeout: float = 20) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    with d.admin() as c:
        while time.monotonic() < deadline:
            runs = c.get(f"/cron/jobs/{job}/runs", params={"limit": 20}).json()["data"]
            run = next((r for r in runs if r["run_id"] == run_id), None)
            if run and run["status"] not in ("accepted", "running"):
                return dict(run)
            time.sleep(0.1)
    raise AssertionError(f"run {run_id} of {job} did not finish")


def test_builtin_jobs_listed_with_intervals(jd: Daemon) -> None:
    with jd.admin() as c:
        jobs = {j["job_id"]: j for j in c.get("/cron/jobs").json()["data"]}
    assert {"memory_maintenance", "embeddings_backfill", "skill_reaudit", "oauth_refresh"} <= set(jobs)
    assert jobs["memory_maintenance"]["interval_s"] == 300
    assert jobs["embeddings_backfill"]["interval_s"] == 600
    assert jobs["skill_reaudit"]["interval_s"] == 21600


def test_memory_api_search_and_token_scope(jd: Daemon) -> None:
    with jd.admin() as c:
        for text in ("the cat sat on the mat", "stock market report for today", "a cat and a mat"):
            r = c.post("/memory/items", json={"text": text, "agent_id": "alpha", "tags": ["t"]})
            assert r.status_code == 201, r.text
        found = c.post("/memory/search", json={"query": "cat on a mat", "agent_id": "alpha", "k": 2}).json()
    top = (
        [hit["text"] for hit in found["data"]]
        if "data" in found
        else [hit["item"]["text"] for hit in found["results"]]
    )
    assert len(top) == 2 and "stock" not in " ".join(top)
    own, _ = jd.create_token(name="mem-alpha", scopes=["memory"], agent_id="alpha")
    other, _ = jd.create_token(name="mem-beta", scopes=["memory"], agent_id="beta")
    chat_only, _ = jd.create_token(name="chat-only", scopes=["chat"], agent_id="alpha")
    base = jd.base_url + "/api/v1/memory"
    ok = httpx.get(base + "/items", params={"agent_id": "alpha"}, headers={"Authorization": f"Bearer {own}"})
    assert ok.status_code == 200
    denied = httpx.get(
        base + "/items", params={"agent_id": "alpha"}, headers={"Authorization": f"Bearer {other}"}
    )
    assert denied.status_code == 403
    scope = httpx.get(
        base + "/items", params={"agent_id": "alpha"}, headers={"Authorization": f"Bearer {chat_only}"}
    )
    assert scope.status_code == 403
    # Searching through the API made embedding runs; they are journaled like any other.
    with jd.admin() as c:
        runs = c.get("/usage/runs", params={"agent": "alpha"}).json()["data"]
    assert any(r["endpoint"] == "embeddings" for r in runs)


def test_run_now_maintenance_and_backfill(jd: Daemon) -> None:
    with jd.admin() as c:
        started = c.post("/cron/jobs/memory_maintenance/run")
        assert started.status_code == 202, started.text
        run = wait_run(jd, "memory_maintenance", started.json()["run_id"])
        assert run["status"] == "succeeded"
        items = c.get("/memory/items", params={"agent_id": "alpha"}).json()["data"]
        assert len(items) <= 3
        bf = c.post("/cron/jobs/embeddings_backfill/run").json()
        done = wait_run(jd, "embeddings_backfill", bf["run_id"])
        assert done["status"] == "succeeded"
        assert done["summary"]["pending"] == 0


def test_cli_cron_and_memory(jd: Daemon) -> None:
    env = {
        "PALYRA_STATE_DIR": str(jd.state_dir),
        "PALYRA_PORT": jd.base_url.rsplit(":", 1)[1],
        "PALYRA_ADMIN_TOKEN": jd.admin_token,
    }
    listed = cli("cron", "list", "--json", env=env)
    assert listed.returncode == 0, listed.stderr
    assert "oauth_refresh" in listed.stdout
    ran = cli("cron", "run", "oauth_refresh", env=env)
    assert ran.returncode == 0, ran.stderr
    history = cli("cron", "runs", "oauth_refresh", "--json", env=env)
    assert history.returncode == 0 and json.loads(history.stdout)
    added = cli("memory", "add", "remember the blue door", "--agent", "gamma", env=env)
    assert added.returncode == 0, added.stderr
    found = cli("memory", "search", "blue door", "--agent", "gamma", "--json", env=env)
    assert found.returncode == 0, found.stderr
    assert "blue door" in found.stdout
