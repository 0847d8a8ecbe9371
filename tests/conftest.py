"""Shared fixtures: a real daemon on an ephemeral loopback port, driven over HTTP."""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from openai import OpenAI

REPO = Path(__file__).resolve().parents[1]
PG_URL = os.environ.get("PALYRA_TEST_DATABASE_URL", "postgresql://postgres@127.0.0.1:5432/test")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Daemon:
    base_url: str
    state_dir: Path
    admin_token: str
    proc: subprocess.Popen[bytes]
    log_path: Path
    config_path: Path | None
    env: dict[str, str] = field(default_factory=dict)

    @property
    def v1(self) -> str:
        return self.base_url + "/v1"

    def admin(self) -> httpx.Client:
        return httpx.Client(
            base_url=self.base_url + "/api/v1",
            headers={"Authorization": f"Bearer {self.admin_token}"},
            timeout=10,
        )

    def create_token(self, **body: Any) -> tuple[str, dict[str, Any]]:
        body.setdefault("name", "test")
        with self.admin() as c:
            r = c.post("/tokens", json=body)
        assert r.status_code == 201, r.text
        data = r.json()
        return data["token"], data

    def client(self, token: str, **kwargs: Any) -> OpenAI:
        return OpenAI(base_url=self.v1, api_key=token, max_retries=0, **kwargs)

    def run(self, request_id: str, timeout: float = 5.0) -> dict[str, Any]:
        """The journal record of a request, waiting for the batched writer to flush it."""
        deadline = time.monotonic() + timeout
        with self.admin() as c:
            while True:
                rows = c.get("/usage/runs", params={"request_id": request_id}).json()["data"]
                if rows:
                    return dict(rows[0])
                if time.monotonic() > deadline:
                    raise AssertionError(f"no run record for {request_id}")
                time.sleep(0.05)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 20) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode


def start_daemon(
    tmp: Path, *, config: str | None = None, env: dict[str, str] | None = None, wait: bool = True
) -> Daemon:
    state_dir = tmp / "state"
    port = free_port()
    config_path = None
    args = [sys.executable, "-m", "palyra", "serve", "--port", str(port), "--state-dir", str(state_dir)]
    if config is not None:
        config_path = tmp / "palyra.toml"
        config_path.write_text(config)
        args += ["--config", str(config_path)]
    admin_token = "admin-" + secrets.token_hex(16)
    full_env = {
        **os.environ,
        "PALYRA_ADMIN_TOKEN": admin_token,
        **(env or {}),
    }
    full_env.pop("PALYRA_CONFIG", None)
    log_path = tmp / "daemon.log"
    log = log_path.open("wb")
    proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=tmp)
    daemon = Daemon(f"http://127.0.0.1:{port}", state_dir, admin_token, proc, log_path, config_path, full_env)
    if wait:
        wait_ready(daemon)
    return daemon


def wait_ready(daemon: Daemon, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if daemon.proc.poll() is not None:
            raise AssertionError(f"daemon exited with {daemon.proc.returncode}:\n{daemon.log()}")
        try:
            if httpx.get(daemon.base_url + "/readyz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    daemon.stop(signal.SIGKILL)
    raise AssertionError(f"daemon did not become ready:\n{daemon.log()}")


@pytest.fixture(scope="session")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daemon]:
    d = start_daemon(tmp_path_factory.mktemp("daemon"))
    yield d
    d.stop()


@pytest.fixture(scope="session")
def token(daemon: Daemon) -> str:
    value, _ = daemon.create_token(name="session-token", scopes=["*"])
    return value


@pytest.fixture(scope="session")
def client(daemon: Daemon, token: str) -> OpenAI:
    return daemon.client(token)


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """An isolated PostgreSQL schema for one test, dropped afterwards."""
    with isolated_pg_schema() as name:
        yield name


@contextlib.contextmanager
def isolated_pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema, dropped on exit (for fixtures of any scope)."""
    import asyncio

    import asyncpg

    name = "palyra_t_" + secrets.token_hex(6)
    dsn = PG_URL

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(dsn)
        try:
            if sql.startswith("DROP"):
                # A test that left a connection mid-transaction in the schema would block the drop
                # forever; end such sessions rather than hang the suite.
                await conn.execute("SET lock_timeout = '5s'")
                try:
                    await conn.execute(sql)
                    return
                except asyncpg.exceptions.LockNotAvailableError:
                    await conn.execute(
                        """SELECT pg_terminate_backend(l.pid) FROM pg_locks l
                           JOIN pg_class c ON c.oid = l.relation JOIN pg_namespace n ON n.oid = c.relnamespace
                           WHERE n.nspname = $1 AND l.pid <> pg_backend_pid()""",
                        name,
                    )
            await conn.execute(sql)
        finally:
            await conn.close()

    def blocking(sql: str) -> None:
        # A thread of its own, so this works from sync and async tests alike.
        with ThreadPoolExecutor(1) as pool:
            pool.submit(asyncio.run, run(sql)).result()

    blocking(f'CREATE SCHEMA "{name}"')
    try:
        yield name
    finally:
        blocking(f'DROP SCHEMA IF EXISTS "{name}" CASCADE')
