"""Several worker processes on one port (server.workers), sharing state through Redis."""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx2 as httpx
import pytest
import redis

from conftest import REPO, start_daemon

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
CHAT = {"model": "deterministic", "messages": [{"role": "user", "content": "hello"}]}


def worker_pids(parent: int) -> set[int]:
    """The supervisor's worker processes (not multiprocessing's resource tracker)."""
    found = set()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            ppid = int((proc / "stat").read_text().rpartition(")")[2].split()[1])
            args = (proc / "cmdline").read_bytes()
        except (OSError, ValueError, IndexError):
            continue
        if ppid == parent and b"spawn_main" in args:
            found.add(int(proc.name))
    return found


def test_more_than_one_worker_without_redis_is_refused_naming_the_key(tmp_path: Path) -> None:
    config = tmp_path / "palyra.toml"
    config.write_text("[server]\nworkers = 2\n")
    out = subprocess.run(
        [sys.executable, "-m", "palyra", "config", "check", "--config", str(config)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=60,
    )
    assert out.returncode == 2
    assert "server.workers" in out.stderr and "redis_url" in out.stderr


def test_two_workers_serve_one_port_and_share_limits(tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL}")
    prefix = "workers-" + secrets.token_hex(4)
    config = (
        f'[server]\nworkers = 2\nredis_url = "{REDIS_URL}"\nredis_key_prefix = "{prefix}"\n'
        "journal_flush_interval_ms = 100\n"
    )
    d = start_daemon(tmp_path, config=config)
    try:
        deadline = time.monotonic() + 20
        while len(worker_pids(d.proc.pid)) < 2 and time.monotonic() < deadline:
            time.sleep(0.1)
        workers = worker_pids(d.proc.pid)
        assert len(workers) == 2
        token, info = d.create_token(name="w", rate_limit_per_minute=20)
        if time.time() % 60 > 50:
            time.sleep(61 - time.time() % 60)

        def send(_: int) -> httpx.Response:
            with httpx.Client(timeout=10) as c:  # a connection each: the kernel spreads them
                return c.post(
                    d.v1 + "/chat/completions", json=CHAT, headers={"Authorization": f"Bearer {token}"}
                )

        with ThreadPoolExecutor(16) as pool:
            responses = list(pool.map(send, range(60)))
        codes = [r.status_code for r in responses]
        assert codes.count(200) == 20 and codes.count(429) == 40  # one limit for both workers
        ok = {r.headers["x-request-id"] for r in responses if r.status_code == 200}
        # Request ids carry a per-process prefix: both workers served.
        assert len({rid[:16] for rid in ok}) == 2
        assert d.stop(signal.SIGTERM) in (0, -signal.SIGTERM)
        assert not any(Path(f"/proc/{pid}").exists() for pid in workers)
    finally:
        d.stop()
        for key in client.scan_iter(match=f"palyra:{{{prefix}}}:*"):
            client.delete(key)
        client.close()
    restarted = start_daemon(tmp_path, config=config.replace("workers = 2", "workers = 1"))
    try:
        with restarted.admin() as c:
            rows = c.get("/usage/runs", params={"limit": 200, "token": info["token_id"]}).json()["data"]
        assert ok <= {r["request_id"] for r in rows} and len(rows) == 60
    finally:
        restarted.stop()
