"""The factory: in process without ``redis_url``, Redis with it; fail-fast while Redis is down."""

from __future__ import annotations

import time

import pytest

from palyra.governance.budgets import BudgetLedger, Policy
from palyra.providers.resilience import ConcurrencyLimit
from palyra.shared import (
    InProcessCircuitBreaker,
    RedisBudgetLedger,
    RedisCircuitBreaker,
    RedisConcurrencyLimit,
    RedisCounterStore,
    RedisState,
    SharedState,
    SharedStateUnavailable,
)
from palyra.shared_state import InProcessCounterStore


async def _loader(policy: Policy, start: float) -> list[tuple[int, float]]:
    return []


async def test_without_redis_everything_stays_in_process() -> None:
    state = SharedState.from_url("")
    assert not state.shared and await state.ready()
    assert isinstance(state.counters, InProcessCounterStore)
    ledger = state.budget_ledger([], _loader, lambda *_: None)
    assert type(ledger) is BudgetLedger
    assert isinstance(
        state.circuit_breaker("p", failure_threshold=3, cooldown_s=1.0), InProcessCircuitBreaker
    )
    assert isinstance(state.concurrency_limit("p", 4, 1.0), ConcurrencyLimit)
    await state.aclose()


async def test_with_redis_everything_is_shared(redis_factory) -> None:
    state = SharedState(redis_factory())
    assert state.shared and await state.ready()
    assert isinstance(state.counters, RedisCounterStore)
    ledger = state.budget_ledger([], _loader, lambda *_: None)
    assert isinstance(ledger, RedisBudgetLedger) and isinstance(ledger, BudgetLedger)
    assert isinstance(state.circuit_breaker("p", failure_threshold=3, cooldown_s=1.0), RedisCircuitBreaker)
    slots = state.concurrency_limit("p", 4, 1.0)
    assert isinstance(slots, RedisConcurrencyLimit)
    await slots.acquire()
    await state.aclose()


async def test_from_url_builds_a_client(redis_factory) -> None:
    state = SharedState.from_url("redis://127.0.0.1:1/0", prefix=redis_factory.prefix)
    assert state.shared and not await state.ready()
    await state.aclose()


async def test_calls_fail_fast_after_a_connection_failure(dead_redis_url) -> None:
    state = RedisState.from_url(dead_redis_url, fail_fast_s=5.0)
    with pytest.raises(SharedStateUnavailable):
        await state.command("PING")
    assert not state.available
    started = time.monotonic()
    with pytest.raises(SharedStateUnavailable, match="retrying shortly"):
        await state.command("PING")
    assert time.monotonic() - started < 0.01
    await state.aclose()
