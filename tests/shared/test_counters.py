"""Fixed-window counters (per-token rate limits): one count for the whole fleet."""

from __future__ import annotations

import asyncio

import pytest

from palyra.shared import RedisCounterStore

NOW = 1_794_999_980.0  # 20 s into a 60 s window


async def test_counts_are_shared_between_replicas(replicas) -> None:
    a, b = replicas.counters()
    counts = []
    for i in range(6):
        count, reset_s = await (a if i % 2 else b).hit("tok_1", 60, NOW)
        counts.append(count)
        assert reset_s == pytest.approx(40.0)
    assert counts == [1, 2, 3, 4, 5, 6]
    assert (await a.hit("tok_other", 60, NOW))[0] == 1  # counters are per key


async def test_concurrent_hits_from_two_replicas_are_all_counted(replicas) -> None:
    a, b = replicas.counters()
    results = await asyncio.gather(*(store.hit("tok_2", 60, NOW) for store in [a, b] * 50))
    assert sorted(count for count, _ in results) == list(range(1, 101))


async def test_a_new_window_starts_from_one(replicas) -> None:
    a, b = replicas.counters()
    await a.hit("tok_3", 60, NOW)
    await b.hit("tok_3", 60, NOW)
    count, reset_s = await b.hit("tok_3", 60, NOW + 60)
    assert count == 1 and reset_s == pytest.approx(40.0)


async def test_redis_counter_keys_expire_with_their_window(redis_factory) -> None:
    state = redis_factory()
    await RedisCounterStore(state).hit("tok_4", 60, NOW)
    ttl_ms = await state.command("PTTL", state.key("rl", "tok_4", str(int(NOW // 60))))
    assert 40_000 < ttl_ms <= 41_000  # the rest of the window plus a second of slack


async def test_unreachable_redis_falls_back_to_a_per_replica_window(redis_factory, dead_redis_url) -> None:
    store = RedisCounterStore(redis_factory(dead_redis_url))
    counts = [(await store.hit("tok_5", 60, NOW))[0] for _ in range(3)]
    assert counts == [1, 2, 3]  # the limit still holds, for this replica alone
    assert (await store.hit("tok_5", 60, NOW + 60))[0] == 1
