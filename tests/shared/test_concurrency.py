"""Provider concurrency limits, in process and shared: the limit holds across replicas."""

from __future__ import annotations

import asyncio
import time

import pytest

from palyra.errors import NoHealthyProvider
from palyra.shared import RedisConcurrencyLimit


async def _drained(*limits) -> None:
    for slots in limits:
        if isinstance(slots, RedisConcurrencyLimit):
            await slots.drain()


async def test_the_limit_is_global_across_replicas(replicas) -> None:
    a, b = replicas.limits(3, wait_s=0.3)
    await a.acquire()
    await a.acquire()
    await b.acquire()
    started = time.monotonic()
    with pytest.raises(NoHealthyProvider) as info:
        await b.acquire()
    assert info.value.code == "provider_busy" and "limit of 3" in info.value.message
    assert time.monotonic() - started >= 0.25  # it waited for a slot first
    waiter = asyncio.create_task(a.acquire())
    await asyncio.sleep(0.05)
    b.release()  # a slot freed on one replica goes to a caller waiting on the other
    await asyncio.wait_for(waiter, 1.0)
    for slots in (a, a, a):
        slots.release()
    await _drained(a, b)
    assert (a.in_flight, a.limit) == (0, 3)


async def test_a_burst_on_two_replicas_gets_exactly_the_limit(replicas) -> None:
    a, b = replicas.limits(5, wait_s=0)
    order = [a, b] * 10
    results = await asyncio.gather(*(x.acquire() for x in order), return_exceptions=True)
    admitted = [x for x, r in zip(order, results, strict=True) if r is None]
    assert len(admitted) == 5
    assert all(isinstance(r, NoHealthyProvider) for r in results if r is not None)
    for slots in admitted:
        slots.release()
    await _drained(a, b)
    await asyncio.gather(*(x.acquire() for x in order[:5]))


async def test_a_crashed_replicas_slots_expire(redis_factory) -> None:
    crashed = RedisConcurrencyLimit(redis_factory(), "p1", 1, 0, lease_ttl_s=0.3)
    other = RedisConcurrencyLimit(redis_factory(), "p1", 1, 1.0, lease_ttl_s=0.3)
    await crashed.acquire()
    assert await other.global_in_flight() == 1
    assert crashed._heartbeat is not None
    crashed._heartbeat.cancel()  # the replica dies: nobody renews its lease
    started = time.monotonic()
    await other.acquire()
    assert 0.1 < time.monotonic() - started < 1.0
    await other.aclose()
    assert await other.global_in_flight() == 0


async def test_a_live_holder_keeps_its_slot(redis_factory) -> None:
    holder = RedisConcurrencyLimit(redis_factory(), "p1", 1, 0, lease_ttl_s=0.3)
    other = RedisConcurrencyLimit(redis_factory(), "p1", 1, 0, lease_ttl_s=0.3)
    await holder.acquire()
    await asyncio.sleep(0.7)  # more than twice the lease: renewed meanwhile
    with pytest.raises(NoHealthyProvider):
        await other.acquire()
    await holder.aclose()
    await other.acquire()
    await other.aclose()


async def test_unreachable_redis_falls_back_to_a_per_replica_limit(redis_factory, dead_redis_url) -> None:
    slots = RedisConcurrencyLimit(redis_factory(dead_redis_url), "p1", 2, 0)
    await slots.acquire()
    await slots.acquire()
    with pytest.raises(NoHealthyProvider):
        await slots.acquire()
    assert slots.in_flight == 2
    slots.release()
    await slots.acquire()
    await slots.aclose()
    assert slots.in_flight == 0


async def test_a_busy_replica_reuses_its_slots_without_a_round_trip(redis_factory) -> None:
    from palyra.shared.limits_redis import IDLE_S

    state = redis_factory()
    slots = RedisConcurrencyLimit(state, "p2", 2, wait_s=1.0)
    try:
        await slots.acquire()
        await slots.acquire()
        calls = 0
        real = state.run

        async def counting(*args, **kwargs):  # type: ignore[no-untyped-def]
            nonlocal calls
            calls += 1
            return await real(*args, **kwargs)

        state.run = counting  # type: ignore[method-assign]
        for _ in range(20):  # a release then an acquire: the slot never leaves this replica
            slots.release()
            await slots.acquire()
        waiter = asyncio.create_task(slots.acquire())  # at the limit: waits
        await asyncio.sleep(0.02)
        started = time.monotonic()
        slots.release()  # handed straight to the waiter
        await asyncio.wait_for(waiter, 1.0)
        assert time.monotonic() - started < 0.01
        assert calls <= 2  # the waiter may have polled Redis once or twice; the rest was local
        assert await slots.global_in_flight() == 2
        slots.release()
        slots.release()
        await asyncio.sleep(IDLE_S * 4)  # idle slots go back to the fleet by themselves
        assert await slots.global_in_flight() == 0
    finally:
        await slots.aclose()
