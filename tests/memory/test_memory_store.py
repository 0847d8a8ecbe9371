"""MemoryStore against SQLite and PostgreSQL: add, list, get, delete, search, TTL, limits."""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palyra.errors import InvalidRequest, RequestTooLarge
from palyra.memory.backfill import run_backfill
from palyra.memory.store import MAX_K, MemoryStore, item_size
from palyra.memory.vectors import InvalidVector, decode, encode, top_k
from palyra.storage.db import Database

from memory_fakes import BACKENDS, DAY, Clock, FakeEmbedder, memory_db


@pytest.fixture(params=BACKENDS)
async def db(request: pytest.FixtureRequest, tmp_path: Path) -> AsyncIterator[Database]:
    async with memory_db(request, tmp_path) as database:
        yield database


@pytest.fixture
def embedder() -> FakeEmbedder:
    return FakeEmbedder()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def store(db: Database, embedder: FakeEmbedder, clock: Clock) -> MemoryStore:
    return MemoryStore(db, embedder, target_model=embedder.target, clock=clock)


async def test_add_get_list_delete(store: MemoryStore, embedder: FakeEmbedder, clock: Clock) -> None:
    item = await store.add(
        "agent-a",
        "Paris is the capital of France",
        tags=["geo", "geo", " fact "],
        metadata={"source": "wiki", "n": 1},
    )
    assert item.item_id.startswith("mem_")
    assert item.tags == ("geo", "fact") and item.metadata == {"source": "wiki", "n": 1}
    assert item.embedding_model == "hash-embedding-v1" and item.embedding_dims == 64
    assert item.embedding_version == 1 and item.expires_at is None
    metadata_json = '{"source":"wiki","n":1}'
    assert (
        item.size_bytes
        == len("Paris is the capital of France") + len("geofact") + len(metadata_json) + 64 * 4
    )
    assert embedder.calls == [(["Paris is the capital of France"], "agent-a")]

    assert await store.get(item.item_id) == item
    assert await store.get(item.item_id, agent_id="agent-b") is None
    clock.advance(1)
    second = await store.add("agent-a", "second")
    clock.advance(1)
    third = await store.add("agent-a", "third")
    await store.add("agent-b", "someone else's")
    assert [i.item_id for i in await store.list("agent-a")] == [third.item_id, second.item_id, item.item_id]
    assert [i.item_id for i in await store.list("agent-a", limit=1, before=third.created_at)] == [
        second.item_id
    ]
    public = item.public()
    assert public["object"] == "memory.item" and public["embedded"] is True and "vector" not in public

    assert await store.delete(item.item_id, agent_id="agent-b") is False
    assert await store.delete(item.item_id, agent_id="agent-a") is True
    assert await store.delete(item.item_id) is False
    assert await store.get(item.item_id) is None


async def test_search_ranks_shared_words_first(store: MemoryStore, embedder: FakeEmbedder) -> None:
    cat = await store.add("a", "the cat sat on the warm mat by the door")
    await store.add("a", "quantum physics lecture notes about entanglement")
    await store.add("a", "grocery list: apples, bananas, oat milk")
    await store.add("b", "the cat sat on the warm mat by the door")
    hits = await store.search("a", "where did the cat sit? on the mat", k=3)
    assert hits[0][0].item_id == cat.item_id
    scores = [s for _, s in hits]
    assert scores == sorted(scores, reverse=True) and len(hits) == 3
    assert 0.3 < scores[0] <= 1.0 + 1e-6
    assert all(item.agent_id == "a" for item, _ in hits)
    # The query was embedded for (and attributed to) the searching agent.
    assert embedder.calls[-1] == (["where did the cat sit? on the mat"], "a")
    exact = await store.search("a", "the cat sat on the warm mat by the door", k=1)
    assert exact[0][0].item_id == cat.item_id and exact[0][1] == pytest.approx(1.0, abs=1e-5)


async def test_search_only_compares_vectors_of_the_query_model(
    db: Database, store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    old = await store.add("a", "alpha beta gamma")
    embedder.model, embedder.dims = "text-embedding-3-small", 32
    new = await store.add("a", "alpha beta gamma delta")
    hits = await store.search("a", "alpha beta gamma", k=10)
    assert [h[0].item_id for h in hits] == [new.item_id]
    assert old.item_id not in {h[0].item_id for h in hits}
    # Another vector version is also ignored until the backfill re-embeds it.
    v2 = MemoryStore(db, embedder, target_model=embedder.target, version=2, clock=clock)
    assert await v2.search("a", "alpha beta gamma", k=10) == []


async def test_k_is_capped_and_validated(store: MemoryStore) -> None:
    for i in range(MAX_K + 5):
        await store.add("a", f"note number {i}")
    assert len(await store.search("a", "note", k=1000)) == MAX_K
    with pytest.raises(InvalidRequest):
        await store.search("a", "note", k=0)
    assert await store.search("nobody", "note", k=5) == []


async def test_item_ttl_hides_then_maintenance_deletes(store: MemoryStore, clock: Clock) -> None:
    short = await store.add("a", "short lived fact", ttl_days=1)
    keep = await store.add("a", "long lived fact")
    assert short.expires_at == pytest.approx(clock.now + DAY)
    clock.advance(DAY + 1)
    assert await store.get(short.item_id) is None
    assert [i.item_id for i in await store.list("a")] == [keep.item_id]
    assert [h[0].item_id for h in await store.search("a", "short lived fact", k=5)] == [keep.item_id]


async def test_add_survives_embedding_failure_and_backfill_embeds_it(
    store: MemoryStore, embedder: FakeEmbedder
) -> None:
    embedder.fail = True
    item = await store.add("a", "remember the milk", tags=["todo"])
    assert item.embedding_model is None and item.public()["embedded"] is False
    assert item.size_bytes == len("remember the milk") + len("todo")
    stored = await store.get(item.item_id)
    assert stored is not None and stored.text == "remember the milk"
    embedder.fail = False
    assert await store.search("a", "remember the milk", k=5) == []
    summary = await run_backfill(store, 64)
    assert summary["updated"] == 1 and summary["pending"] == 0
    assert embedder.calls[-1] == (["remember the milk"], "system:memory")
    hits = await store.search("a", "remember the milk", k=5)
    assert [h[0].item_id for h in hits] == [item.item_id]
    assert hits[0][0].size_bytes == item.size_bytes + 64 * 4


@pytest.mark.parametrize(
    ("kwargs", "error", "param"),
    [
        ({"text": "   "}, InvalidRequest, "text"),
        ({"text": "x" * (32 * 1024 + 1)}, RequestTooLarge, "text"),
        ({"text": "é" * (16 * 1024 + 1)}, RequestTooLarge, "text"),
        ({"tags": [f"t{i}" for i in range(33)]}, InvalidRequest, "tags"),
        ({"tags": ["x" * 65]}, InvalidRequest, "tags"),
        ({"tags": ["bad\ntag"]}, InvalidRequest, "tags"),
        ({"metadata": {"blob": "x" * 16 * 1024}}, RequestTooLarge, "metadata"),
        ({"ttl_days": 0}, InvalidRequest, "ttl_days"),
        ({"agent_id": "no spaces allowed"}, InvalidRequest, "agent_id"),
    ],
)
async def test_limits(
    store: MemoryStore, kwargs: dict[str, object], error: type[Exception], param: str
) -> None:
    args: dict[str, object] = {"agent_id": "a", "text": "fine", **kwargs}
    with pytest.raises(error) as caught:
        await store.add(
            str(args.pop("agent_id")),
            str(args.pop("text")),
            **args,  # type: ignore[arg-type]
        )
    assert getattr(caught.value, "param", None) == param
    assert await store.list("a") == []


async def test_limits_at_the_edge_are_accepted(store: MemoryStore) -> None:
    item = await store.add(
        "a",
        "x" * 32 * 1024,
        tags=[f"t{i:02d}" for i in range(32)],
        metadata={"b": "y" * 16_000},
        ttl_days=36_500,
    )
    assert len(item.tags) == 32


def test_vectors_are_unit_little_endian_float32() -> None:
    blob = encode([3.0, 4.0], 2)
    assert blob == struct.pack("<2f", 0.6, 0.8)
    assert list(decode(blob)) == pytest.approx([0.6, 0.8])
    assert encode([0.0, 0.0], 2) == struct.pack("<2f", 0.0, 0.0)
    with pytest.raises(InvalidVector):
        encode([1.0], 2)
    with pytest.raises(InvalidVector):
        encode([float("nan"), 1.0], 2)
    q = encode([1.0, 0.0], 2)
    ranked = top_k(
        q, [("x", encode([0.0, 1.0], 2)), ("y", encode([1.0, 1.0], 2)), ("z", encode([1, 2, 3], 3))], 5
    )
    assert [r[0] for r in ranked] == ["y", "x"]
    assert ranked[0][1] == pytest.approx(2**-0.5, abs=1e-6)


def test_item_size_counts_at_least_one_byte() -> None:
    assert item_size("", (), None, None) == 1
    assert item_size("ab", ("c",), '{"d":1}', b"\0" * 8) == 2 + 1 + 7 + 8
