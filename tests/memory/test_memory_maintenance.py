"""memory_maintenance on SQLite and PostgreSQL: eviction order, chunking, weekly vacuum, state."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palyra.config.models import MemoryConfig
from palyra.memory import maintenance
from palyra.memory.maintenance import VACUUM_INTERVAL_S, run_maintenance
from palyra.memory.state import MAINTENANCE, load_state
from palyra.memory.store import MemoryStore
from palyra.storage.db import Database

from memory_fakes import BACKENDS, DAY, Clock, FakeEmbedder, memory_db


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with memory_db(request, tmp_path) as database:
        yield database


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, clock: Clock) -> MemoryStore:
    embedder = FakeEmbedder()
    return MemoryStore(db, embedder, target_model=embedder.target, clock=clock)


async def _ids(store: MemoryStore, agent: str = "a") -> list[str]:
    return sorted(i.item_id for i in await store.list(agent, limit=10_000))


async def test_eviction_order(db: Database, store: MemoryStore, clock: Clock) -> None:
    # Two items older than ttl_days, then one with its own 1-day TTL, then eight fresh ones.
    clock.now -= 20 * DAY
    old = [await store.add("a", f"old item {i}") for i in range(2)]
    clock.now += 20 * DAY
    expiring = await store.add("a", "expiring item", ttl_days=1)
    fresh = []
    for i in range(8):
        clock.advance(60)
        fresh.append(await store.add("a" if i % 2 else "b", f"fresh item {i}"))
    size = fresh[0].size_bytes
    assert all(i.size_bytes == size for i in fresh)
    now = clock.now + 2 * DAY
    config = MemoryConfig(ttl_days=10, max_entries=5, max_bytes=3 * size + size // 2)

    summary = await run_maintenance(db, config, now=now)

    assert summary["deleted"] == {"expired": 1, "ttl_days": 2, "max_entries": 3, "max_bytes": 2}
    assert summary["deleted_total"] == 8
    assert summary["before"]["items"] == 11 and summary["after"] == {"items": 3, "bytes": 3 * size}
    clock.now = now
    left = await _ids(store, "a") + await _ids(store, "b")
    assert sorted(left) == sorted(i.item_id for i in fresh[5:])
    assert not {i.item_id for i in [*old, expiring]} & set(left)
    assert await load_state(db, MAINTENANCE) == summary

    # Nothing left to do: a second run deletes nothing.
    again = await run_maintenance(db, config, now=now)
    assert again["deleted_total"] == 0 and again["after"] == again["before"]


async def test_deletes_run_in_bounded_chunks(db: Database, store: MemoryStore, clock: Clock) -> None:
    for i in range(7):
        await store.add("a", f"expiring {i}", ttl_days=1)
    for i in range(9):
        clock.advance(1)
        await store.add("a", f"kept or trimmed {i}")
    summary = await run_maintenance(db, MemoryConfig(max_entries=4), now=clock.now + 2 * DAY, chunk=2)
    assert summary["deleted"]["expired"] == 7 and summary["deleted"]["max_entries"] == 5
    # 7 expired in chunks of 2 -> 4; 5 surplus in chunks of 2 -> 3.
    assert summary["chunks"] == 7
    clock.now += 2 * DAY
    survivors = await store.list("a")
    assert [i.text for i in survivors] == [f"kept or trimmed {i}" for i in (8, 7, 6, 5)]


async def test_no_limits_only_expired_items_go(db: Database, store: MemoryStore, clock: Clock) -> None:
    await store.add("a", "expiring", ttl_days=1)
    clock.now -= 400 * DAY
    await store.add("a", "ancient but unlimited")
    summary = await run_maintenance(db, MemoryConfig(), now=clock.now + 401 * DAY)
    assert summary["deleted"] == {"expired": 1, "ttl_days": 0, "max_entries": 0, "max_bytes": 0}
    assert summary["after"]["items"] == 1


async def test_vacuum_runs_weekly(db: Database, clock: Clock) -> None:
    config = MemoryConfig()
    t0 = clock.now
    first = await run_maintenance(db, config, now=t0)
    assert first["vacuumed"] is False and first["next_vacuum_at"] == t0 + VACUUM_INTERVAL_S
    assert first["last_vacuum_at"] is None
    assert (await run_maintenance(db, config, now=t0 + 6 * DAY))["vacuumed"] is False
    due = await run_maintenance(db, config, now=t0 + 7 * DAY)
    assert due["vacuumed"] is True and due["vacuum_error"] is None
    assert due["last_vacuum_at"] == t0 + 7 * DAY and due["next_vacuum_at"] == t0 + 14 * DAY
    assert (await run_maintenance(db, config, now=t0 + 7 * DAY + 3600))["vacuumed"] is False
    assert (await run_maintenance(db, config, now=t0 + 14 * DAY))["vacuumed"] is True
    forced = await run_maintenance(db, config, now=t0 + 15 * DAY, vacuum_due=True)
    assert forced["vacuumed"] is True and forced["next_vacuum_at"] == t0 + 22 * DAY
    skipped = await run_maintenance(db, config, now=t0 + 30 * DAY, vacuum_due=False)
    assert skipped["vacuumed"] is False and skipped["next_vacuum_at"] == t0 + 22 * DAY


async def test_failed_vacuum_keeps_deletes_and_retries_next_tick(
    db: Database, store: MemoryStore, clock: Clock, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def broken(_db: Database) -> None:
        raise RuntimeError("database is locked")

    t0 = clock.now
    await run_maintenance(db, MemoryConfig(), now=t0)
    await store.add("a", "expiring", ttl_days=1)
    monkeypatch.setattr(maintenance, "vacuum", broken)
    due = t0 + VACUUM_INTERVAL_S
    summary = await run_maintenance(db, MemoryConfig(), now=due)
    assert summary["deleted"]["expired"] == 1 and summary["after"]["items"] == 0
    assert summary["vacuumed"] is False and "database is locked" in summary["vacuum_error"]
    assert summary["next_vacuum_at"] == due and summary["last_vacuum_at"] is None
    monkeypatch.undo()
    later = await run_maintenance(db, MemoryConfig(), now=due + 300)
    assert later["vacuumed"] is True and later["vacuum_error"] is None
    assert later["next_vacuum_at"] == due + 300 + VACUUM_INTERVAL_S
