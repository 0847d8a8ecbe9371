"""Where the daemon keeps its state during a run: the embedded default (SQLite in the state dir, shared
state in process), PostgreSQL for the journal, or PostgreSQL plus Redis for shared state.

Every PostgreSQL daemon gets a fresh ``palyra_bench_<hex>`` schema (``server.database_schema``), dropped
afterwards; with Redis, a fresh ``server.redis_key_prefix`` whose keys are deleted afterwards (when the
code under test has that setting; older code shares the default prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import sqlite3
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass

import asyncpg

from daemon_proc import Daemon

BACKENDS = ("embedded", "embedded+redis", "postgres", "postgres+redis")
DEFAULT_POSTGRES_URL = "postgresql://postgres@127.0.0.1:5432/test"
DEFAULT_REDIS_URL = "redis://127.0.0.1:6379/0"


@dataclass(frozen=True, slots=True)
class Backend:
    name: str  # one of BACKENDS
    database_url: str = ""  # empty: SQLite in the state dir
    redis_url: str = ""  # empty: shared state in process

    @property
    def database(self) -> str:
        return "postgres" if self.database_url else "sqlite"


def backend(name: str, database_url: str, redis_url: str) -> Backend:
    if name == "embedded":
        return Backend(name)
    return Backend(name, database_url, redis_url if name.endswith("+redis") else "")


async def _pg(url: str, sql: str) -> str:
    conn = await asyncpg.connect(url)
    try:
        return str(await conn.fetchval(sql))
    finally:
        await conn.close()


@contextlib.contextmanager
def postgres_schema(runner: asyncio.Runner, url: str) -> Iterator[str]:
    """A fresh schema name for one daemon (the daemon creates it), dropped afterwards."""
    schema = f"palyra_bench_{secrets.token_hex(4)}"
    try:
        yield schema
    finally:
        try:
            runner.run(_pg(url, f"DROP SCHEMA IF EXISTS {schema} CASCADE"))
        except Exception as exc:
            print(f"bench: could not drop schema {schema}: {exc}", file=sys.stderr)


def code_has_setting(source_dir: str, name: str) -> bool:
    """Whether the code under test's ``[server]`` accepts ``name`` (unknown keys are an error there)."""
    code = (
        "import sys; from palyra.config.models import ServerConfig as S; "
        f"sys.exit(0 if {name!r} in S.model_fields else 1)"
    )
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    if source_dir:
        env["PYTHONPATH"] = source_dir
    return (
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, check=False).returncode
        == 0
    )


@contextlib.contextmanager
def redis_prefix(url: str, enabled: bool) -> Iterator[str]:
    """A fresh key prefix (``bench-<hex>``); every ``palyra:{prefix}:*`` key is deleted afterwards."""
    if not enabled:
        yield ""
        return
    prefix = f"bench-{secrets.token_hex(4)}"
    try:
        yield prefix
    finally:
        try:
            import redis

            client = redis.Redis.from_url(url)
            try:
                keys = list(client.scan_iter(match=f"palyra:{{{prefix}}}:*", count=1000))
                if keys:
                    client.delete(*keys)
            finally:
                client.close()
        except Exception as exc:
            print(f"bench: could not delete the Redis keys of {prefix}: {exc}", file=sys.stderr)


def redis_version(url: str) -> str:
    import redis

    client = redis.Redis.from_url(url, socket_timeout=5)
    try:
        return str(client.info("server").get("redis_version", "?"))
    finally:
        client.close()


def versions(runner: asyncio.Runner, backends: list[Backend]) -> str:
    """SQLite's, PostgreSQL's and Redis's versions, for the backends in use; fails early if one is down."""
    out = [f"SQLite {sqlite3.sqlite_version}"]
    pg = next((b.database_url for b in backends if b.database_url), "")
    if pg:
        out.append(f"PostgreSQL {runner.run(_pg(pg, 'SHOW server_version'))} ({pg})")
    rd = next((b.redis_url for b in backends if b.redis_url), "")
    if rd:
        out.append(f"Redis {redis_version(rd)} ({rd})")
    return ", ".join(out)


def journal_rows(runner: asyncio.Runner, daemon: Daemon, url: str, schema: str) -> int | None:
    """Rows in the run journal once the daemon has stopped (and flushed)."""
    try:
        if schema:
            return int(runner.run(_pg(url, f"SELECT count(*) FROM {schema}.runs")))
        with contextlib.closing(sqlite3.connect(daemon.state_dir / "palyra.db")) as db:
            return int(db.execute("SELECT count(*) FROM runs").fetchone()[0])
    except Exception as exc:
        print(f"bench: could not count journal rows: {exc}", file=sys.stderr)
        return None
