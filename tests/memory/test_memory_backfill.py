"""embeddings_backfill on SQLite and PostgreSQL: batches, resumption, model changes, provenance."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from palyra.errors import InvalidRequest, UpstreamFailed
from palyra.memory.backfill import EmbeddingMismatch, run_backfill
from palyra.memory.state import BACKFILL, load_state
from palyra.memory.store import SYSTEM_AGENT, MemoryStore
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


async def _add_unembedded(store: MemoryStore, embedder: FakeEmbedder, clock: Clock, n: int) -> list[str]:
    embedder.fail = True
    texts = []
    for i in range(n):
        clock.advance(1)
        texts.append(f"memory number {i:03d}")
        await store.add("a", texts[-1])
    embedder.fail = False
    return texts


async def test_resumes_across_batches_oldest_first(
    db: Database, store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    texts = await _add_unembedded(store, embedder, clock, 150)
    progress = []
    for _ in range(4):
        s = await run_backfill(store, 64)
        progress.append((s["scanned"], s["updated"], s["pending"]))
    assert progress == [(64, 64, 86), (64, 64, 22), (22, 22, 0), (0, 0, 0)]
    assert [agent for _, agent in embedder.calls] == [SYSTEM_AGENT] * 3
    assert [len(batch) for batch, _ in embedder.calls] == [64, 64, 22]
    assert [t for batch, _ in embedder.calls for t in batch] == texts
    state = await load_state(db, BACKFILL)
    assert state is not None and state["pending"] == 0
    assert state["target_model"] == "hash-embedding-v1" and state["target_dims"] == 64
    assert state["target_version"] == 1
    items = await store.list("a", limit=200)
    assert all(i.embedding_model == "hash-embedding-v1" and i.size_bytes > 256 for i in items)


async def test_several_batches_in_one_run(store: MemoryStore, embedder: FakeEmbedder, clock: Clock) -> None:
    await _add_unembedded(store, embedder, clock, 10)
    summary = await run_backfill(store, 4, max_batches=10)
    assert (summary["scanned"], summary["updated"], summary["pending"]) == (10, 10, 0)
    assert [len(b) for b, _ in embedder.calls] == [4, 4, 2]


async def test_model_change_reembeds_everything(
    store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    for i in range(100):
        clock.advance(1)
        await store.add("a", f"item {i} about topic {i % 7}")
    assert (await run_backfill(store, 64))["pending"] == 0
    embedder.model, embedder.dims = "text-embedding-3-small", 32
    first = await run_backfill(store, 64)
    assert (first["updated"], first["pending"]) == (64, 36)
    assert first["target_model"] == "text-embedding-3-small" and first["target_dims"] == 32
    # Mid-migration, search only sees items already re-embedded with the new model.
    assert len(await store.search("a", "topic 3", k=100)) == 64
    second = await run_backfill(store, 64)
    assert (second["updated"], second["pending"]) == (36, 0)
    items = await store.list("a", limit=200)
    assert {(i.embedding_model, i.embedding_dims) for i in items} == {("text-embedding-3-small", 32)}
    assert all(i.size_bytes == len(i.text) + 32 * 4 for i in items)
    assert len(await store.search("a", "topic 3", k=100)) == 100


async def test_version_change_reembeds(
    db: Database, store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    for i in range(5):
        await store.add("a", f"note {i}")
    v2 = MemoryStore(db, embedder, target_model=embedder.target, version=2, clock=clock)
    summary = await run_backfill(v2, 64)
    assert (summary["updated"], summary["pending"], summary["target_version"]) == (5, 0, 2)
    # Back to version 1: all five are stale again and get re-embedded.
    assert (await run_backfill(store, 64))["updated"] == 5


async def test_failure_midway_keeps_committed_batches(
    store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    await _add_unembedded(store, embedder, clock, 10)
    embedder.fail_after = 1
    with pytest.raises(UpstreamFailed):
        await run_backfill(store, 4, max_batches=10)
    embedder.fail_after = None
    summary = await run_backfill(store, 4, max_batches=10)
    assert (summary["scanned"], summary["pending"]) == (6, 0)


async def test_mismatched_embedder_answer_stores_nothing(
    db: Database, embedder: FakeEmbedder, clock: Clock
) -> None:
    store = MemoryStore(db, embedder, target_model=lambda: ("configured-model", 64), clock=clock)
    await store.add("a", "stored with whatever the embedder used")
    with pytest.raises(EmbeddingMismatch):
        await run_backfill(store, 64)
    item = (await store.list("a"))[0]
    assert item.embedding_model == "hash-embedding-v1"


async def test_expired_items_are_purged_not_embedded(
    store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    embedder.fail = True
    await store.add("a", "short lived", ttl_days=1)
    await store.add("a", "long lived")
    embedder.fail = False
    clock.advance(2 * DAY)
    summary = await run_backfill(store, 64)
    assert (summary["purged"], summary["updated"], summary["pending"]) == (1, 1, 0)
    assert embedder.calls == [(["long lived"], SYSTEM_AGENT)]


async def test_target_without_fixed_dims_accepts_the_models_own(
    db: Database, embedder: FakeEmbedder, clock: Clock
) -> None:
    store = MemoryStore(db, embedder, target_model=lambda: (embedder.model, None), clock=clock)
    await _add_unembedded(store, embedder, clock, 3)
    await store.add("a", "embedded on add")
    summary = await run_backfill(store, 64)
    assert (summary["updated"], summary["pending"], summary["target_dims"]) == (3, 0, None)
    assert {i.embedding_dims for i in await store.list("a")} == {64}
    embedder.model = "another-model"
    assert (await run_backfill(store, 64))["updated"] == 4


async def test_an_item_the_model_refuses_does_not_block_the_rest(
    store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    embedder.fail = True
    for text in ("first", "POISON far too long", "third", "fourth"):
        clock.advance(1)
        await store.add("a", text)
    embedder.fail = False
    summary = await run_backfill(store, 64)
    assert (summary["scanned"], summary["updated"], summary["failed"], summary["pending"]) == (4, 3, 1, 0)
    items = {i.text: i for i in await store.list("a")}
    refused = items["POISON far too long"]
    assert refused.public()["embedded"] is False and refused.embedding_model == "hash-embedding-v1"
    assert refused.embedding_error is not None and "context length" in refused.embedding_error
    assert all(
        items[t].embedding_error is None and items[t].embedded_at for t in ("first", "third", "fourth")
    )
    # Settled for this target: later runs leave it alone.
    assert (await run_backfill(store, 64))["scanned"] == 0
    # A new target gives it another chance.
    embedder.model = "bigger-context-model"
    embedder.refuse = "never matches"
    again = await run_backfill(store, 64)
    assert (again["updated"], again["failed"], again["pending"]) == (4, 0, 0)
    fixed = await store.get(refused.item_id)
    assert fixed is not None and fixed.embedding_error is None and fixed.embedded_at is not None


async def test_when_nothing_embeds_the_run_fails_and_marks_nothing(
    store: MemoryStore, embedder: FakeEmbedder, clock: Clock
) -> None:
    embedder.fail = True
    for i in range(3):
        await store.add("a", f"POISON {i}")
    embedder.fail = False
    with pytest.raises(InvalidRequest):
        await run_backfill(store, 64)
    assert all(i.embedding_error is None for i in await store.list("a"))
    embedder.refuse = "never matches"
    assert (await run_backfill(store, 64))["updated"] == 3


async def test_no_embeddings_model_configured_is_a_quiet_skip(
    db: Database, embedder: FakeEmbedder, clock: Clock
) -> None:
    def unconfigured() -> tuple[str, int | None]:
        raise InvalidRequest("no default embeddings model is configured", code="embeddings_unavailable")

    store = MemoryStore(db, embedder, target_model=unconfigured, clock=clock)
    summary = await run_backfill(store, 64)
    assert summary["skipped"].startswith("no default embeddings model") and summary["purged"] == 0
    assert embedder.calls == []
