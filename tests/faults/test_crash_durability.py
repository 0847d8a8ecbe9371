"""Crash durability of one daemon under concurrent load: SIGTERM finishes and records every response,
SIGKILL loses no record of a completed one and leaves a database that opens cleanly (SQLite and
PostgreSQL), and a restart repairs the cron runs and budget reservations a killed daemon left open.

docs/ARCHITECTURE.md "Fault handling" and docs/CONFIG.md (journal_flush_interval_ms) state the bounds.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import sqlite3
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis

from palyra.jobs.scheduler import REPAIRED_AT_START

from conftest import PG_URL, Daemon, start_daemon
from fakes import FakeOpenAI, Reply

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
PROMPT = "one two three four five six"


def config(upstream: FakeOpenAI, server: str = "", extra: str = "") -> str:
    return (
        f"[server]\n{server}\n"
        "[model_provider]\nfailover_enabled = false\n"
        '[[model_provider.providers]]\nprovider_id = "up"\nkind = "openai_compatible"\n'
        f'base_url = "{upstream.base_url}"\nallow_private_base_url = true\nmax_retries = 0\n'
        "request_timeout_ms = 30000\nmax_concurrency = 256\n"
        '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "up"\nupstream_model = "gpt-4o-mini"\n'
        f"{extra}"
    )


@dataclass
class Load:
    """Workers sending chat requests (every other one streamed) until stopped; what each client saw
    completely is kept with the time it completed."""

    daemon: Daemon
    token: str
    workers: int = 8
    completed: dict[str, float] = field(default_factory=dict)  # request id -> time.monotonic()
    sent: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)
    _threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __enter__(self) -> Load:
        self._threads = [threading.Thread(target=self._work, args=(n,)) for n in range(self.workers)]
        for t in self._threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(30)

    def wait_for(self, count: int, timeout: float = 20) -> None:
        deadline = time.monotonic() + timeout
        while len(self.completed) < count:
            assert time.monotonic() < deadline, f"only {len(self.completed)} responses completed"
            time.sleep(0.01)

    def _work(self, n: int) -> None:
        headers = {"Authorization": f"Bearer {self.token}"}
        with httpx.Client(base_url=self.daemon.v1, headers=headers, timeout=20) as client:
            i = 0
            while not self._stop.is_set():
                i += 1
                body = {
                    "model": "m",
                    "stream": (n + i) % 2 == 0,
                    "messages": [{"role": "user", "content": PROMPT}],
                }
                with self._lock:
                    self.sent += 1
                try:
                    request_id = self._one(client, body)
                except httpx.HTTPError:
                    time.sleep(0.01)  # the daemon is going away or gone
                    continue
                if request_id is not None:
                    with self._lock:
                        self.completed[request_id] = time.monotonic()

    @staticmethod
    def _one(client: httpx.Client, body: dict[str, Any]) -> str | None:
        if not body["stream"]:
            r = client.post("/chat/completions", json=body)
            return r.headers["x-request-id"] if r.status_code == 200 and r.json()["choices"] else None
        with client.stream("POST", "/chat/completions", json=body) as r:
            lines = [line for line in r.iter_lines() if line]
            done = r.status_code == 200 and lines and lines[-1] == "data: [DONE]"
            return r.headers["x-request-id"] if done else None


def stored_ids(d: Daemon) -> list[str]:
    """Every run record's request id, through the admin API (newest first, paged)."""
    ids: list[str] = []
    before: float | None = None
    with d.admin() as c:
        while True:
            params: dict[str, Any] = {"limit": 1000, **({"before": before} if before is not None else {})}
            page = c.get("/usage/runs", params=params).json()
            ids += [r["request_id"] for r in page["data"]]
            if not page["has_more"]:
                return ids
            before = page["data"][-1]["created_at"]


def sqlite_ids(state_dir: Path) -> set[str]:
    with sqlite3.connect(state_dir / "palyra.db") as db:
        return {row[0] for row in db.execute("SELECT request_id FROM runs")}


def spool_segments(state_dir: Path) -> list[str]:
    return sorted(p.name for p in (state_dir / "journal").glob("run-*.jsonl"))


@pytest.fixture
def upstream() -> Iterator[FakeOpenAI]:
    with FakeOpenAI() as fake:
        yield fake  # type: ignore[misc]


def test_sigterm_under_load_records_every_completed_response(tmp_path: Path, upstream: FakeOpenAI) -> None:
    # Nothing is written before shutdown, and every request takes a while, so SIGTERM lands with
    # records queued and requests and streams in flight.
    upstream.script("/v1/chat/completions", *[Reply(delay_s=0.05, chunk_delay_s=0.02)] * 5000)
    server = "journal_flush_interval_ms = 60000\njournal_batch_size = 10000\ngraceful_shutdown_s = 10\n"
    cfg = config(upstream, server)
    d = start_daemon(tmp_path, config=cfg)
    token, _ = d.create_token(name="load")
    with Load(d, token) as load:
        load.wait_for(40)
        d.proc.send_signal(signal.SIGTERM)
        signalled = time.monotonic()
        assert d.proc.wait(20) in (0, -signal.SIGTERM)
    assert any(at > signalled for at in load.completed.values()), "nothing in flight finished"

    # Written by the shutdown itself: in the database, once each, with no spool left to replay.
    stored = sqlite_ids(d.state_dir)
    assert set(load.completed) <= stored and len(stored) <= load.sent
    assert spool_segments(d.state_dir) == []


@pytest.mark.parametrize("database", ["sqlite", "postgresql"])
def test_sigkill_under_load_loses_no_completed_record_and_the_database_opens_cleanly(
    tmp_path: Path, upstream: FakeOpenAI, request: pytest.FixtureRequest, database: str
) -> None:
    # The default flush interval: batches are sealed, written and their spool segments deleted all
    # through the load, the kill lands anywhere in that cycle, and records of the last 200 ms are only
    # in the spool.
    upstream.script("/v1/chat/completions", *[Reply(delay_s=0.02, chunk_delay_s=0.01)] * 5000)
    server = "journal_flush_interval_ms = 200\n"
    if database == "postgresql":
        server += f'database_url = "{PG_URL}"\ndatabase_schema = "{request.getfixturevalue("pg_schema")}"\n'
    cfg = config(upstream, server)
    d = start_daemon(tmp_path, config=cfg)
    token, _ = d.create_token(name="load")
    killed_pid = d.proc.pid
    with Load(d, token) as load:
        load.wait_for(60)
        d.proc.send_signal(signal.SIGKILL)
        assert d.proc.wait(10) == -signal.SIGKILL
    if database == "sqlite":
        with sqlite3.connect(d.state_dir / "palyra.db") as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]

    restarted = start_daemon(tmp_path, config=cfg)  # ready: the database opened and migrations ran
    try:
        ids = stored_ids(restarted)
        missing = set(load.completed) - set(ids)
        assert not missing, f"{len(missing)} of {len(load.completed)} completed responses have no record"
        assert len(ids) == len(set(ids)) <= load.sent
        assert not [s for s in spool_segments(d.state_dir) if s.startswith(f"run-{killed_pid}-")]
        # And it serves and records as before.
        r = httpx.post(
            restarted.v1 + "/chat/completions",
            json={"model": "m", "messages": [{"role": "user", "content": "after"}]},
            headers={"Authorization": f"Bearer {token}"},
        )
        assert r.status_code == 200 and restarted.run(r.headers["x-request-id"])["status"] == "ok"
    finally:
        restarted.stop()


def test_restart_repairs_the_cron_run_and_budget_hold_a_killed_daemon_left_open(
    tmp_path: Path, upstream: FakeOpenAI
) -> None:
    extra = (
        '[[model_provider.models]]\nmodel_id = "emb"\nprovider_id = "up"\nrole = "embeddings"\n'
        'upstream_model = "text-embedding-3-small"\n' + BUDGET
    )
    cfg = config(upstream, extra=extra)
    d = start_daemon(tmp_path, config=cfg)
    token, _ = d.create_token(name="repairs")
    upstream.script("/v1/embeddings", Reply(status=400), Reply(hang=True))
    upstream.script("/v1/chat/completions", Reply(hang=True))
    with d.admin() as c:
        item = c.post("/memory/items", json={"text": "remember the milk", "agent_id": "a1"}).json()
        assert item["embedded"] is False  # left for the backfill
        started = c.post("/cron/jobs/embeddings_backfill/run").json()
        upstream.wait_for_requests(2)  # the backfill is inside its embedding call, which hangs
        assert c.get(f"/cron/runs/{started['run_id']}").json()["status"] == "running"
    with holding(d, token):  # a chat request holds ~700 of the budget's 1000 tokens, its upstream hangs
        refused = budget_chat(d, token)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        d.stop(signal.SIGKILL)

    # A replica that restarts at once cannot tell a dead run from one another replica is running, so a
    # run is repaired once its heartbeat is older than 120 s: stand for a daemon that stayed down so long.
    with sqlite3.connect(d.state_dir / "palyra.db") as db:
        db.execute(
            "UPDATE cron_runs SET heartbeat_at = heartbeat_at - 300, started_at = started_at - 300 "
            "WHERE run_id = ?",
            (started["run_id"],),
        )

    restarted = start_daemon(tmp_path, config=cfg)
    try:
        with restarted.admin() as c:
            run = c.get(f"/cron/runs/{started['run_id']}").json()
            assert run["status"] == "failed" and run["error"] == REPAIRED_AT_START and run["finished_at"]
            # In-process holds died with the process: the budget has its room back.
            assert reserved(restarted) == 0
            assert budget_chat(restarted, token).status_code == 200
            # The job is not blocked by the dead run: the next one runs and embeds the item.
            again = c.post("/cron/jobs/embeddings_backfill/run").json()
            deadline = time.monotonic() + 10
            while (status := c.get(f"/cron/runs/{again['run_id']}").json()["status"]) == "running":
                assert time.monotonic() < deadline
                time.sleep(0.05)
            assert status == "succeeded"
            items = c.get("/memory/items", params={"agent_id": "a1"}).json()["data"]
            assert [i["embedded"] for i in items] == [True]
    finally:
        restarted.stop()


BUDGET = (
    '[[budgets]]\npolicy_id = "cap"\nscope = "global"\nmetric = "tokens"\nwindow = "day"\nhard_limit = 1000\n'
)


def budget_chat(daemon: Daemon, token: str) -> httpx.Response:
    """A request whose estimate (prompt + max_tokens) is a little over 700 of the budget's 1000 tokens."""
    body = {"model": "m", "max_tokens": 700, "messages": [{"role": "user", "content": "hi"}]}
    headers = {"Authorization": f"Bearer {token}"}
    return httpx.post(daemon.v1 + "/chat/completions", json=body, headers=headers, timeout=30)


def reserved(daemon: Daemon) -> float:
    with daemon.admin() as c:
        return float(c.get("/budgets").json()["data"][0]["reserved"])


@contextlib.contextmanager
def holding(daemon: Daemon, token: str) -> Iterator[None]:
    """A budgeted request in flight (its upstream must hang) until the daemon is killed under it."""

    def send() -> None:
        with contextlib.suppress(httpx.HTTPError):
            budget_chat(daemon, token)

    holder = threading.Thread(target=send)
    holder.start()
    deadline = time.monotonic() + 10
    while reserved(daemon) < 700:
        assert time.monotonic() < deadline, "the request never reserved its estimate"
        time.sleep(0.02)
    yield
    holder.join(10)


@pytest.fixture
def redis_prefix() -> Iterator[str]:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL} (set PALYRA_TEST_REDIS_URL)")
    prefix = "crash-" + secrets.token_hex(4)
    yield prefix
    for key in client.scan_iter(match=f"palyra:{{{prefix}}}:*"):
        client.delete(key)
    client.close()


def test_a_killed_daemons_budget_hold_in_redis_expires(
    tmp_path: Path, upstream: FakeOpenAI, redis_prefix: str
) -> None:
    server = f'redis_url = "{REDIS_URL}"\nredis_key_prefix = "{redis_prefix}"\n'
    cfg = config(upstream, server, BUDGET)
    d = start_daemon(tmp_path, config=cfg)
    token, _ = d.create_token(name="budget")
    upstream.script("/v1/chat/completions", Reply(hang=True))
    with holding(d, token):
        assert budget_chat(d, token).status_code == 429
        d.stop(signal.SIGKILL)

    restarted = start_daemon(tmp_path, config=cfg)
    try:
        # The dead replica's hold lives in Redis and counts until it expires, 15 min after it was made.
        refused = budget_chat(restarted, token)
        assert refused.status_code == 429 and refused.json()["error"]["code"] == "budget_exceeded"
        assert reserved(restarted) >= 700
        # Expire it now, as if that time had passed: the next reservation sweeps it away.
        client = redis.Redis.from_url(REDIS_URL)
        holds = f"palyra:{{{redis_prefix}}}:bud:holds"
        client.zadd(holds, dict.fromkeys(client.zrange(holds, 0, -1), 0))
        client.close()
        served = budget_chat(restarted, token)
        assert served.status_code == 200, served.text
        assert reserved(restarted) == 0
    finally:
        restarted.stop()
