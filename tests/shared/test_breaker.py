"""Circuit breakers, in process and shared: a circuit one replica opened is open on the others."""

from __future__ import annotations

import asyncio

import pytest

from palyra.providers.resilience import CircuitOpen, CircuitState
from palyra.shared import RedisCircuitBreaker

CACHE_S = 0.1  # RedisCircuitBreaker's default staleness bound
SETTLE_S = CACHE_S + 0.05


async def _fail(breaker, times: int) -> None:
    for _ in range(times):
        await breaker.acquire()
        await breaker.record_failure()


async def test_failures_seen_on_one_replica_open_the_circuit_on_the_other(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=3, cooldown_s=30.0)
    await b.acquire()  # b now has a cached "closed"
    await b.record_success()
    await _fail(a, 2)
    await b.acquire()  # two failures: still closed
    await _fail(a, 1)
    await asyncio.sleep(SETTLE_S)  # the documented staleness bound
    with pytest.raises(CircuitOpen) as info:
        await b.acquire()
    assert info.value.provider_id == "p1" and 1.0 <= info.value.retry_after_s <= 30.0
    await b.refresh()
    assert b.state is CircuitState.OPEN
    assert b.consecutive_failures == 3 and 29.0 < b.retry_after_s() <= 30.0
    assert (b.failure_threshold, b.cooldown_s, b.provider_id) == (3, 30.0, "p1")


async def test_half_open_admits_a_single_probe_across_replicas(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=1, cooldown_s=0.2)
    await _fail(a, 1)
    with pytest.raises(CircuitOpen):
        await b.acquire()
    await asyncio.sleep(0.25)
    await b.refresh()
    assert b.state is CircuitState.HALF_OPEN
    order = [a, b] * 5
    results = await asyncio.gather(*(x.acquire() for x in order), return_exceptions=True)
    winners = [x for x, r in zip(order, results, strict=True) if r is None]
    assert len(winners) == 1
    assert all(isinstance(r, CircuitOpen) for r in results if r is not None)
    await winners[0].record_success()
    await asyncio.sleep(SETTLE_S)
    await a.acquire()
    await b.acquire()
    assert a.state is CircuitState.CLOSED and b.state is CircuitState.CLOSED
    assert b.consecutive_failures == 0


async def test_a_failed_probe_opens_the_circuit_again_everywhere(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=1, cooldown_s=0.2)
    await _fail(a, 1)
    await asyncio.sleep(0.25)
    await b.acquire()  # b probes
    await b.record_failure()
    await asyncio.sleep(SETTLE_S)
    with pytest.raises(CircuitOpen):
        await a.acquire()
    await a.refresh()
    assert a.state is CircuitState.OPEN


async def test_a_released_probe_lets_another_one_through(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=1, cooldown_s=0.2)
    await _fail(a, 1)
    await asyncio.sleep(0.25)
    await a.acquire()  # the probe
    with pytest.raises(CircuitOpen):
        await b.acquire()
    await a.release_probe()  # it ended with a client error: says nothing about health
    await asyncio.sleep(SETTLE_S)
    await b.acquire()  # the next probe
    await b.record_success()
    await asyncio.sleep(SETTLE_S)
    await a.acquire()


async def test_a_success_resets_the_failure_count(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=2, cooldown_s=30.0)
    await _fail(a, 1)
    await asyncio.sleep(SETTLE_S)
    await b.acquire()
    await b.record_success()
    await _fail(a, 1)  # one failure after the success: not two in a row
    await asyncio.sleep(SETTLE_S)
    await b.acquire()
    await b.refresh()
    assert b.state is CircuitState.CLOSED and b.consecutive_failures == 1


async def test_unreachable_redis_falls_back_to_this_replicas_own_breaker(
    redis_factory, dead_redis_url
) -> None:
    breaker = RedisCircuitBreaker(redis_factory(dead_redis_url), "p1", failure_threshold=2, cooldown_s=30.0)
    await breaker.acquire()  # calls are not refused because Redis is down
    assert breaker.degraded
    await breaker.record_failure()
    await breaker.acquire()
    await breaker.record_failure()
    with pytest.raises(CircuitOpen):
        await breaker.acquire()
    assert breaker.state is CircuitState.OPEN and breaker.consecutive_failures == 2
    await breaker.aclose()


async def test_the_shared_state_takes_over_again_when_redis_returns(redis_factory, proxy) -> None:
    flaky = RedisCircuitBreaker(redis_factory(proxy.url), "p1", failure_threshold=1, cooldown_s=30.0)
    other = RedisCircuitBreaker(redis_factory(), "p1", failure_threshold=1, cooldown_s=30.0)
    await flaky.acquire()
    await proxy.stop()
    await flaky.record_success()
    await flaky.record_failure()  # seen only locally: the fleet's circuit stays closed
    assert flaky.degraded and flaky.state is CircuitState.OPEN
    await other.acquire()
    await proxy.start()
    await flaky.refresh()
    assert not flaky.degraded and flaky.state is CircuitState.CLOSED
    await flaky.acquire()
    await flaky.record_failure()
    await asyncio.sleep(SETTLE_S)
    with pytest.raises(CircuitOpen):
        await other.acquire()


async def test_a_success_never_waits_for_redis_but_still_resets_the_count(replicas) -> None:
    a, b = replicas.breakers(failure_threshold=3, cooldown_s=30.0)
    await b.acquire()  # b caches "closed, no failures"
    await _fail(a, 2)
    await asyncio.sleep(SETTLE_S)  # b's view is now older than the cache
    await b.record_success()  # returns at once; the reset goes out in the background
    await asyncio.sleep(0.05)
    await _fail(a, 2)
    await asyncio.sleep(SETTLE_S)
    await b.acquire()  # 2 failures since the success, not 4: still closed
    await b.refresh()
    assert b.consecutive_failures == 2
