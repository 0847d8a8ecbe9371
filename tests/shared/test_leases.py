"""Job leases, in process and shared: one holder at a time across replicas."""

from __future__ import annotations

import asyncio

import pytest

from palyra.shared import RedisLeaseStore, SharedStateUnavailable


async def test_one_holder_at_a_time(replicas) -> None:
    a, b = replicas.leases()
    assert await a.acquire("memory_maintenance", "replica-a", 30)
    assert not await b.acquire("memory_maintenance", "replica-b", 30)
    assert await a.acquire("memory_maintenance", "replica-a", 30)  # renewal
    assert await b.holder("memory_maintenance") == "replica-a"
    await b.release("memory_maintenance", "replica-b")  # not the holder: no effect
    assert await b.holder("memory_maintenance") == "replica-a"
    await a.release("memory_maintenance", "replica-a")
    assert await b.holder("memory_maintenance") is None
    assert await b.acquire("memory_maintenance", "replica-b", 30)
    assert await a.acquire("other_job", "replica-a", 30)


async def test_a_lease_nobody_renews_falls_free(replicas) -> None:
    a, b = replicas.leases()
    assert await a.acquire("job", "replica-a", 0.2)
    await asyncio.sleep(0.3)
    assert await b.holder("job") is None
    assert await b.acquire("job", "replica-b", 30)


async def test_unreachable_redis_raises(redis_factory, dead_redis_url) -> None:
    with pytest.raises(SharedStateUnavailable):
        await RedisLeaseStore(redis_factory(dead_redis_url)).acquire("job", "replica-a", 30)
