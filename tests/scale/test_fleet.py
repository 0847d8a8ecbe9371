"""Three replicas sharing PostgreSQL and Redis behave as one gateway under concurrent load.

The replicas start at the same moment (so their migrations race), each on its own state directory,
with one vault key for the fleet, as in production (docs/DEPLOY.md). Load is spread over all three.
"""

from __future__ import annotations

import os
import secrets
import signal
import subprocess
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
import redis

from palyra.vault.crypto import encode_master_key, generate_master_key

from conftest import PG_URL, Daemon, free_port, isolated_pg_schema, start_daemon, wait_ready
from fakes import FakeOpenAI, Reply

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
BUDGET_TOKENS = 600


def fleet_config(schema: str, redis_url: str, prefix: str, upstream: str) -> str:
    return f"""
[server]
database_url = "{PG_URL}"
database_schema = "{schema}"
redis_url = "{redis_url}"
redis_key_prefix = "{prefix}"
journal_flush_interval_ms = 100
policy_sync_interval_s = 0.5

[cron]
memory_maintenance_interval_s = 1

[model_provider]
default_chat_model_id = "deterministic"
failover_enabled = false

[[model_provider.providers]]
provider_id = "deterministic"
kind = "deterministic"

[[model_provider.providers]]
provider_id = "flaky"
kind = "openai_compatible"
base_url = "{upstream}"
allow_private_base_url = true
max_retries = 0
circuit_breaker = {{ failure_threshold = 3, cooldown_ms = 60000 }}

[[model_provider.models]]
model_id = "deterministic"
provider_id = "deterministic"

[[model_provider.models]]
model_id = "flaky-gpt"
provider_id = "flaky"
upstream_model = "gpt-4o-mini"

[[budgets]]
policy_id = "fleet-agent"
scope = "agent:budgeted"
metric = "tokens"
window = "day"
hard_limit = {BUDGET_TOKENS}
"""


class Fleet:
    def __init__(self, root: Path, config: str, env: dict[str, str], upstream: FakeOpenAI) -> None:
        self.root = root
        self.config = config
        self.env = env
        self.upstream = upstream
        self.replicas: list[Daemon] = []

    def start(self, count: int) -> None:
        # All at once: three replicas migrating one fresh schema concurrently must all come up.
        self.replicas = [self.launch(i) for i in range(count)]
        for d in self.replicas:
            wait_ready(d, timeout=40)

    def launch(self, index: int) -> Daemon:
        home = self.root / f"replica{index}"
        home.mkdir(exist_ok=True)
        return start_daemon(home, config=self.config, env=self.env, wait=False)

    def restart(self, index: int) -> Daemon:
        d = self.launch(index)
        wait_ready(d, timeout=40)
        self.replicas[index] = d
        return d

    def stop(self) -> None:
        for d in self.replicas:
            d.stop()


def redis_or_skip() -> None:
    client = redis.Redis.from_url(REDIS_URL)
    try:
        client.ping()
    except redis.RedisError:
        pytest.skip(f"no Redis at {REDIS_URL} (set PALYRA_TEST_REDIS_URL)")
    finally:
        client.close()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    redis_or_skip()
    prefix = "fleet-" + secrets.token_hex(4)
    with isolated_pg_schema() as schema, FakeOpenAI() as upstream:
        env = {"PALYRA_VAULT_KEY": encode_master_key(generate_master_key())}
        f = Fleet(
            tmp_path_factory.mktemp("fleet"),
            fleet_config(schema, REDIS_URL, prefix, upstream.base_url),
            env,
            upstream,
        )
        f.start(3)
        try:
            yield f
        finally:
            f.stop()
            client = redis.Redis.from_url(REDIS_URL)
            for key in client.scan_iter(match=f"palyra:{{{prefix}}}:*"):
                client.delete(key)
            client.close()


def chat(d: Daemon, token: str, model: str = "deterministic", **extra: Any) -> httpx.Response:
    body = {"model": model, "max_tokens": 20, "messages": [{"role": "user", "content": "hello there"}]}
    return httpx.post(
        d.v1 + "/chat/completions",
        headers={"Authorization": f"Bearer {token}"},
        json={**body, **extra},
        timeout=15,
    )


def spread(fleet: Fleet, count: int, send: Callable[[Daemon], httpx.Response]) -> list[httpx.Response]:
    """``count`` requests, round-robin over the replicas, 24 at a time."""
    with ThreadPoolExecutor(24) as pool:
        return list(pool.map(lambda i: send(fleet.replicas[i % len(fleet.replicas)]), range(count)))


def runs_of(d: Daemon, expected: int, **filters: str) -> list[dict[str, Any]]:
    """The journal's records for ``filters``, once ``expected`` of them are written."""
    deadline = time.monotonic() + 10
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with d.admin() as c:
            rows = c.get("/usage/runs", params={"limit": 1000, "since": "1h", **filters}).json()["data"]
        if len(rows) >= expected:
            return rows
        time.sleep(0.1)
    raise AssertionError(f"expected {expected} run records for {filters}, found {len(rows)}")


def away_from_minute_edge() -> None:
    """Fixed one-minute windows: keep a burst inside one of them."""
    if time.time() % 60 > 50:
        time.sleep(61 - time.time() % 60)


def test_a_hard_token_budget_is_never_overspent_across_replicas(fleet: Fleet) -> None:
    a = fleet.replicas[0]
    token, _ = a.create_token(name="budgeted", agent_id="budgeted")
    responses = spread(fleet, 150, lambda d: chat(d, token))
    codes = [r.status_code for r in responses]
    assert 200 in codes and 429 in codes, codes
    refused = [r.json()["error"] for r in responses if r.status_code == 429]
    assert {e["code"] for e in refused} == {"budget_exceeded"}

    rows = runs_of(a, len(responses), agent="budgeted")
    spent = sum(r["total_tokens"] for r in rows if r["status"] == "ok")
    assert len(rows) == len(responses)
    # Every estimate (prompt + max_tokens) bounds its request's actual use, so the documented bound
    # is the limit itself: never a token over.
    assert 0 < spent <= BUDGET_TOKENS
    assert sum(r["status"] == "ok" for r in rows) == codes.count(200)
    time.sleep(0.3)  # settlements reach Redis in the background
    views = []
    for d in fleet.replicas:
        with d.admin() as c:
            views.append(next(p for p in c.get("/budgets").json()["data"] if p["policy_id"] == "fleet-agent"))
    assert {v["spent"] for v in views} == {spent} and {v["reserved"] for v in views} == {0}


def test_a_per_token_rate_limit_holds_for_the_fleet(fleet: Fleet) -> None:
    token, _ = fleet.replicas[1].create_token(name="limited", rate_limit_per_minute=10)
    away_from_minute_edge()
    responses = spread(fleet, 36, lambda d: chat(d, token))
    codes = [r.status_code for r in responses]
    assert codes.count(200) == 10 and codes.count(429) == 26
    limited = [r for r in responses if r.status_code == 429]
    assert all(r.json()["error"]["code"] == "rate_limit_exceeded" for r in limited)
    assert all(int(r.headers["retry-after"]) >= 1 for r in limited)


def test_a_circuit_opened_on_one_replica_is_open_on_the_others(fleet: Fleet) -> None:
    a, b, c = fleet.replicas
    token, _ = a.create_token(name="breaker")
    fleet.upstream.script("/v1/chat/completions", *[Reply(status=500) for _ in range(3)])
    failures = [chat(a, token, "flaky-gpt").status_code for _ in range(3)]
    assert all(code >= 500 for code in failures), failures
    seen = len(fleet.upstream.requests_for("/v1/chat/completions"))

    for d in (b, c):
        with d.admin() as admin:
            circuit = admin.get("/providers/flaky").json()["circuit"]
        assert circuit["state"] == "open" and circuit["consecutive_failures"] >= 3
    refused = chat(c, token, "flaky-gpt")
    assert refused.status_code == 503 and "circuit open" in refused.json()["error"]["message"]
    assert int(refused.headers["retry-after"]) >= 1
    assert len(fleet.upstream.requests_for("/v1/chat/completions")) == seen  # nothing reached it


def test_a_cron_job_runs_once_per_slot(fleet: Fleet) -> None:
    deadline = time.monotonic() + 20
    scheduled: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        with fleet.replicas[2].admin() as c:
            runs = c.get("/cron/jobs/memory_maintenance/runs", params={"limit": 200}).json()["data"]
        scheduled = [r for r in runs if r["trigger"] == "scheduled"]
        if len(scheduled) >= 4:
            break
        time.sleep(0.25)
    slots = [r["slot_at"] for r in scheduled]
    assert len(slots) >= 4 and len(set(slots)) == len(slots), slots


def test_a_replica_killed_mid_load_loses_no_record_and_the_others_keep_serving(fleet: Fleet) -> None:
    token, info = fleet.replicas[0].create_token(name="sigkill")
    victim = fleet.replicas[2]
    served: list[tuple[int, httpx.Response]] = []
    stop_at = time.monotonic() + 3.0
    killed_at = time.monotonic() + 1.0

    def worker(n: int) -> None:
        while time.monotonic() < stop_at:
            index = n % 3
            if index == 2 and time.monotonic() >= killed_at:
                index = n % 2  # the load balancer noticed
            try:
                served.append((index, chat(fleet.replicas[index], token, stream=n % 2 == 0)))
            except httpx.HTTPError:
                assert index == 2  # only the killed replica may drop a connection

    with ThreadPoolExecutor(12) as pool:
        futures = [pool.submit(worker, n) for n in range(12)]
        time.sleep(max(0.0, killed_at - time.monotonic()))
        victim.proc.send_signal(signal.SIGKILL)
        for f in futures:
            f.result()

    survivors = [r for index, r in served if index != 2]
    assert survivors and all(r.status_code == 200 for r in survivors)
    completed = {r.headers["x-request-id"] for _, r in served if r.status_code == 200}
    assert any(index == 2 for index, r in served if r.status_code == 200)

    fleet.restart(2)  # the killed replica comes back on its state directory and replays its spool
    rows = runs_of(fleet.replicas[0], len(completed), token=info["token_id"])
    assert completed <= {r["request_id"] for r in rows}


def test_redis_lost_mid_run_fails_budgets_closed_then_recovers_without_double_counting(
    tmp_path: Path,
) -> None:
    redis_or_skip()
    port = free_port()
    server = private_redis(port, tmp_path)
    try:
        with isolated_pg_schema() as schema, FakeOpenAI() as upstream:
            config = fleet_config(schema, f"redis://127.0.0.1:{port}/0", "outage", upstream.base_url)
            config = config.replace('scope = "agent:budgeted"', 'scope = "global"').replace(
                f"hard_limit = {BUDGET_TOKENS}", "hard_limit = 1000000"
            )
            (tmp_path / "d").mkdir()
            d = start_daemon(tmp_path / "d", config=config)
            try:
                token, _ = d.create_token(name="t")
                sent = 0

                def send() -> httpx.Response:
                    nonlocal sent
                    sent += 1
                    return chat(d, token)

                assert [send().status_code for _ in range(5)] == [200] * 5
                server.kill()
                server.wait(5)
                during = [send() for _ in range(3)]
                assert {r.status_code for r in during} == {503}
                assert {r.json()["error"]["code"] for r in during} == {"budget_store_unavailable"}
                assert all("retry-after" in r.headers for r in during)
                ready = httpx.get(d.base_url + "/readyz").json()
                assert ready["status"] == "ready" and ready["shared_state"] is False

                server = private_redis(port, tmp_path)  # back, empty: accounts reload from the journal
                deadline = time.monotonic() + 10
                after = send()
                while after.status_code != 200 and time.monotonic() < deadline:
                    time.sleep(0.2)
                    after = send()
                assert after.status_code == 200
                assert [send().status_code for _ in range(3)] == [200] * 3

                rows = runs_of(d, sent)
                journal_tokens = sum(r["total_tokens"] for r in rows if r["status"] == "ok")
                deadline = time.monotonic() + 5  # an idle allowance goes back within a second
                with d.admin() as c:
                    view = c.get("/budgets").json()["data"][0]
                    while view["reserved"] and time.monotonic() < deadline:
                        time.sleep(0.2)
                        view = c.get("/budgets").json()["data"][0]
                assert view["spent"] == journal_tokens and view["reserved"] == 0
            finally:
                d.stop()
    finally:
        server.kill()
        server.wait(5)


def private_redis(port: int, tmp: Path) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=tmp,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    client = redis.Redis(port=port)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            client.ping()
            client.close()
            return proc
        except redis.RedisError:
            time.sleep(0.05)
    proc.kill()
    raise AssertionError("private redis-server did not start")
