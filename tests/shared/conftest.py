"""Fixtures for shared state: the same behavioural tests run in process and on Redis.

``replicas`` builds two instances of a component. In process both are the same object (one process is
one replica); on Redis each has its own client, like two replicas, on a key prefix unique to the test
and deleted afterwards. Redis tests skip if ``PALYRA_TEST_REDIS_URL`` does not answer.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import secrets
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any
from urllib.parse import urlsplit

import pytest

from palyra.governance.budgets import BudgetLedger, Policy
from palyra.providers.resilience import ConcurrencyLimit
from palyra.shared import (
    InProcessCircuitBreaker,
    InProcessLeaseStore,
    RedisBudgetLedger,
    RedisCircuitBreaker,
    RedisConcurrencyLimit,
    RedisCounterStore,
    RedisLeaseStore,
    RedisState,
)
from palyra.shared_state import InProcessCounterStore

REDIS_URL = os.environ.get("PALYRA_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")


def closed_port_url() -> str:
    """A Redis URL on a loopback port nothing listens on."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = int(s.getsockname()[1])
    db = urlsplit(REDIS_URL).path or "/0"
    return f"redis://127.0.0.1:{port}{db}"


class RedisFactory:
    """Makes RedisState clients (one per replica) on a key prefix unique to the test."""

    def __init__(self) -> None:
        self.prefix = "test-" + secrets.token_hex(6)
        self.made: list[RedisState] = []
        self.closers: list[Callable[[], Awaitable[None]]] = []  # components to close before the keys go

    def __call__(self, url: str = REDIS_URL, *, fail_fast_s: float = 0.0) -> RedisState:
        state = RedisState.from_url(url, prefix=self.prefix, fail_fast_s=fail_fast_s)
        self.made.append(state)
        return state


@pytest.fixture
async def redis_factory() -> AsyncIterator[RedisFactory]:
    factory = RedisFactory()
    probe = factory()
    if not await probe.ping():
        await probe.aclose()
        pytest.skip(f"no Redis at {REDIS_URL} (set PALYRA_TEST_REDIS_URL)")
    yield factory
    for close in factory.closers:
        await close()
    await probe.delete_namespace()
    for state in factory.made:
        await state.aclose()


class Clock:
    def __init__(self, now: float | None = None) -> None:
        self.now = time.time() if now is None else now

    def __call__(self) -> float:
        return self.now


class Replicas:
    """Two handles on one piece of state: the same object in process, two clients on Redis."""

    def __init__(self, kind: str, make_redis: RedisFactory | None) -> None:
        self.kind = kind
        self._make = make_redis
        self.alerts: list[tuple[str, str]] = []
        self.loads: list[str] = []
        self.closers: list[Callable[[], Awaitable[None]]] = [] if make_redis is None else make_redis.closers

    @property
    def redis(self) -> bool:
        return self.kind == "redis"

    def _states(self) -> tuple[RedisState, RedisState]:
        assert self._make is not None
        return self._make(), self._make()

    def counters(self) -> tuple[Any, Any]:
        if not self.redis:
            store = InProcessCounterStore()
            return store, store
        a, b = self._states()
        return RedisCounterStore(a), RedisCounterStore(b)

    def ledgers(
        self,
        *policies: Policy,
        clock: Clock | None = None,
        loaded: list[tuple[int, float]] | None = None,
        **redis_options: Any,
    ) -> tuple[BudgetLedger, BudgetLedger]:
        async def loader(policy: Policy, start: float) -> list[tuple[int, float]]:
            self.loads.append(policy.policy_id)
            await asyncio.sleep(0.01)
            return list(loaded or [])

        def on_soft(policy: Policy, window: str, spent: float, limit: float) -> None:
            self.alerts.append((policy.policy_id, window))

        clock_kw: dict[str, Any] = {"clock": clock} if clock else {}
        if not self.redis:
            ledger = BudgetLedger(list(policies), loader, on_soft, **clock_kw)
            return ledger, ledger
        made = tuple(
            RedisBudgetLedger(list(policies), loader, on_soft, redis=state, **clock_kw, **redis_options)
            for state in self._states()
        )
        for ledger in made:
            self.closers.append(ledger.aclose)
        return made[0], made[1]

    def breakers(self, *, failure_threshold: int, cooldown_s: float) -> tuple[Any, Any]:
        if not self.redis:
            breaker = InProcessCircuitBreaker(
                "p1", failure_threshold=failure_threshold, cooldown_s=cooldown_s
            )
            return breaker, breaker
        made = tuple(
            RedisCircuitBreaker(state, "p1", failure_threshold=failure_threshold, cooldown_s=cooldown_s)
            for state in self._states()
        )
        for breaker in made:
            self.closers.append(breaker.aclose)
        return made[0], made[1]

    def limits(self, limit: int, wait_s: float) -> tuple[Any, Any]:
        if not self.redis:
            slots = ConcurrencyLimit("p1", limit, wait_s)
            return slots, slots
        made = tuple(RedisConcurrencyLimit(state, "p1", limit, wait_s) for state in self._states())
        for slots in made:
            self.closers.append(slots.aclose)
        return made[0], made[1]

    def leases(self) -> tuple[Any, Any]:
        if not self.redis:
            store = InProcessLeaseStore()
            return store, store
        a, b = self._states()
        return RedisLeaseStore(a), RedisLeaseStore(b)


@pytest.fixture(params=["in_process", "redis"])
def replicas(request: pytest.FixtureRequest) -> Replicas:
    make = request.getfixturevalue("redis_factory") if request.param == "redis" else None
    return Replicas(request.param, make)


async def settled(*ledgers: BudgetLedger) -> None:
    """Wait until settlements made on these ledgers are visible to every replica."""
    for ledger in ledgers:
        if isinstance(ledger, RedisBudgetLedger):
            await ledger.flush()


class FlakyProxy:
    """A TCP proxy in front of Redis that a test can cut and restore on the same port, or make lose
    every reply (the command reaches Redis, the answer never comes back)."""

    def __init__(self, target: str = REDIS_URL) -> None:
        parts = urlsplit(target)
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._db = parts.path or "/0"
        self.port = 0
        self.drop_replies = False
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}{self._db}"

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        self.port = int(self._server.sockets[0].getsockname()[1])

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            for writer in list(self._writers):
                writer.transport.abort()
            await self._server.wait_closed()
            self._server = None

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection(self._host, self._port)
        except OSError:
            writer.transport.abort()
            return
        self._writers.update((writer, up_writer))

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, reply: bool) -> None:
            with contextlib.suppress(OSError, asyncio.IncompleteReadError):
                while data := await src.read(65536):
                    if reply and self.drop_replies:
                        break
                    dst.write(data)
                    await dst.drain()
            writer.transport.abort()
            up_writer.transport.abort()

        await asyncio.gather(pipe(reader, up_writer, False), pipe(up_reader, writer, True))
        self._writers.difference_update((writer, up_writer))


@pytest.fixture
async def proxy() -> AsyncIterator[FlakyProxy]:
    p = FlakyProxy()
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def clock() -> Clock:
    """A wall clock the test moves by hand (budget windows and hold expiry follow it)."""
    return Clock(1_795_000_000.0)  # 2026-11-18 11:06:40 UTC


@pytest.fixture
def settle_all() -> Callable[..., Any]:
    return settled


@pytest.fixture
def dead_redis_url() -> str:
    return closed_port_url()
