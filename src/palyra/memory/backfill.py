"""`embeddings_backfill`: embed items that have no vector, or one from another model, dims or version.

Oldest first, one embedding call per batch, each batch committed on its own: a run that stops halfway
(daemon restart, provider outage) loses nothing and the next run carries on where it stopped. The
target is read from the store on every run, so changing the default embeddings model makes every
item pending and the following runs re-embed them all. Calls are attributed to ``system:memory``.

An item the model refuses on its own (too long for its context, a content policy) would otherwise
fail its batch on every run and block everything behind it. When a batch is refused, its items are
retried one by one; those refused alone get ``embedding_error`` and leave the queue until the target
changes. If none of them embeds, the fault is not the items' (a misconfigured model, say): the run
fails and nothing is marked.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import orjson
from sqlalchemy import func, select, update

from palyra.errors import InvalidRequest, RequestTooLarge
from palyra.memory.maintenance import purge_expired
from palyra.memory.state import BACKFILL, save_state
from palyra.memory.store import SYSTEM_AGENT, MemoryStore, item_size, live, vectors_of
from palyra.memory.tables import memory_items
from palyra.memory.vectors import InvalidVector

MAX_BATCH = 2048
_ITEM_REFUSED = (InvalidRequest, RequestTooLarge, InvalidVector)


class EmbeddingMismatch(RuntimeError):
    """The embedder answered with another model or dims than the target; storing that would loop."""


async def run_backfill(store: MemoryStore, batch_size: int, *, max_batches: int = 1) -> dict[str, Any]:
    """Embed up to ``max_batches`` batches of pending items; the summary is also saved as state.

    ``scanned``: pending items taken; ``updated``: vectors stored; ``failed``: items marked as refused
    by the model; ``pending``: what is left after the run.
    """
    batch_size = max(1, min(batch_size, MAX_BATCH))
    db = store.db
    now = store.clock()
    purged, _ = await purge_expired(db, now)
    try:
        model, dims = store.target_model()
    except InvalidRequest as exc:  # no embeddings model configured: nothing to do, not a failure
        return {"skipped": exc.message, "purged": purged}
    pending_filter = store.pending_filter(model, dims)
    c = memory_items.c
    oldest_pending = (
        select(c.item_id, c.text, c.tags_json, c.metadata_json)
        .where(pending_filter, live(now))
        .order_by(c.created_at, c.item_id)
        .limit(batch_size)
    )
    scanned = updated = failed = 0
    for _ in range(max(1, max_batches)):
        async with db.engine.connect() as conn:
            rows = (await conn.execute(oldest_pending)).all()
        if not rows:
            break
        scanned += len(rows)
        # No transaction is open while the provider works.
        results = await _embed(store, rows, model, dims)
        embedded_at = store.clock()
        async with db.engine.begin() as conn:
            for row, (vector, got_dims, error) in zip(rows, results, strict=True):
                tags = [str(t) for t in _json_list(row.tags_json)]
                result = await conn.execute(
                    update(memory_items)
                    # Only if still pending: a concurrent run may have embedded it already.
                    .where(c.item_id == row.item_id, pending_filter)
                    .values(
                        vector=vector,
                        embedding_model=model,
                        embedding_dims=got_dims,
                        embedding_version=store.version,
                        embedded_at=embedded_at if vector is not None else None,
                        embedding_error=error,
                        size_bytes=item_size(row.text, tags, row.metadata_json, vector),
                    )
                )
                if vector is not None:
                    updated += result.rowcount
                else:
                    failed += result.rowcount
        if len(rows) < batch_size:
            break
    async with db.engine.connect() as conn:
        count = select(func.count()).select_from(memory_items).where(pending_filter, live(now))
        pending = int((await conn.execute(count)).scalar_one())
    summary: dict[str, Any] = {
        "ran_at": now,
        "batch_size": batch_size,
        "purged": purged,
        "scanned": scanned,
        "updated": updated,
        "failed": failed,
        "pending": pending,
        "target_model": model,
        "target_dims": dims,
        "target_version": store.version,
    }
    await save_state(db, BACKFILL, summary, now)
    return summary


Result = tuple[bytes | None, int | None, str | None]  # vector, its dims, or the reason there is none


async def _embed(store: MemoryStore, rows: Sequence[Any], model: str, dims: int | None) -> list[Result]:
    try:
        return await _embed_together(store, [r.text for r in rows], model, dims)
    except _ITEM_REFUSED:
        if len(rows) == 1:
            raise
    # Refused as a batch: find out which items the model refuses on their own.
    first_refusal: Exception | None = None
    results: list[Result] = []
    for row in rows:
        try:
            results.extend(await _embed_together(store, [row.text], model, dims))
        except _ITEM_REFUSED as exc:
            first_refusal = first_refusal or exc
            results.append((None, dims, f"{type(exc).__name__}: {exc}"[:300]))
    if first_refusal is not None and all(vector is None for vector, _, _ in results):
        raise first_refusal
    return results


async def _embed_together(store: MemoryStore, texts: list[str], model: str, dims: int | None) -> list[Result]:
    outcome = await store.embedder(texts, SYSTEM_AGENT)
    if outcome.model_id != model or (dims is not None and outcome.dims != dims):
        raise EmbeddingMismatch(
            f"the embedder answered with {outcome.model_id}/{outcome.dims} dims, "
            f"but the target is {model}/{dims if dims is not None else 'any'} dims"
        )
    return [(vector, outcome.dims, None) for vector in vectors_of(outcome, len(texts))]


def _json_list(value: str) -> list[Any]:
    loaded = orjson.loads(value)
    return loaded if isinstance(loaded, list) else []
