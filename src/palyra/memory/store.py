"""The memory store: short texts per agent, embedded through the gateway, searched by cosine similarity.

Embedding is injected (``Embedder``) so adds, searches and the backfill go through the gateway's
normal path (journal, cost, budgets) without this module knowing about it. An add never loses its
item: when embedding fails the item is stored without a vector and the backfill embeds it later.
"""

from __future__ import annotations

import asyncio
import builtins
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import ColumnElement, and_, delete, insert, or_, select

from palyra.callers.tokens import validate_agent_id
from palyra.errors import InvalidRequest, RequestTooLarge
from palyra.memory.tables import memory_items
from palyra.memory.vectors import encode, top_k
from palyra.storage.db import Database

log = logging.getLogger("palyra.memory")

MAX_TEXT_BYTES = 32 * 1024
MAX_TAGS = 32
MAX_TAG_CHARS = 64
MAX_METADATA_BYTES = 16 * 1024
MAX_TTL_DAYS = 36_500
MAX_K = 100
DAY_S = 86_400.0
SYSTEM_AGENT = "system:memory"
# Past this many candidate vectors the scoring runs in a worker thread so the event loop keeps serving.
_THREAD_SCORING_FROM = 1000


@dataclass(frozen=True, slots=True)
class EmbedOutcome:
    """What an embedder returns: one vector per input, and the model and dims that made them."""

    vectors: list[list[float]]
    model_id: str
    dims: int


# (texts, agent to attribute the run to) -> vectors from the current default embeddings model.
Embedder = Callable[[list[str], str | None], Awaitable[EmbedOutcome]]
# The current default embeddings model id and its dims (None: whatever that model returns, when the
# configuration does not fix them); read on every use so a config change applies.
TargetModel = Callable[[], tuple[str, int | None]]


@dataclass(frozen=True, slots=True)
class MemoryItem:
    item_id: str
    agent_id: str
    text: str
    tags: tuple[str, ...]
    metadata: dict[str, Any] | None
    created_at: float
    expires_at: float | None
    size_bytes: int
    embedding_model: str | None
    embedding_dims: int | None
    embedding_version: int | None
    embedded_at: float | None
    embedding_error: str | None = None

    def public(self) -> dict[str, Any]:
        return {
            "object": "memory.item",
            "item_id": self.item_id,
            "agent_id": self.agent_id,
            "text": self.text,
            "tags": list(self.tags),
            "metadata": self.metadata,
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "size_bytes": self.size_bytes,
            "embedded": self.embedded_at is not None,
            "embedding_model": self.embedding_model,
            "embedding_dims": self.embedding_dims,
            "embedding_version": self.embedding_version,
            "embedded_at": self.embedded_at,
            "embedding_error": self.embedding_error,
        }


def item_size(text: str, tags: Iterable[str], metadata_json: str | None, vector: bytes | None) -> int:
    """What an item counts against ``memory.max_bytes``: UTF-8 text + tags + metadata JSON + vector."""
    size = len(text.encode("utf-8")) + sum(len(t.encode("utf-8")) for t in tags)
    size += len(metadata_json.encode("utf-8")) if metadata_json else 0
    size += len(vector) if vector else 0
    return max(1, size)


def validate_text(text: str, param: str = "text") -> str:
    if not text.strip():
        raise InvalidRequest(f"{param} must not be empty", code="invalid_value", param=param)
    if len(text.encode("utf-8")) > MAX_TEXT_BYTES:
        raise RequestTooLarge(f"{param} is larger than {MAX_TEXT_BYTES} bytes (UTF-8)", param=param)
    return text


def validate_tags(tags: Iterable[str] | None) -> tuple[str, ...]:
    """At most 32 distinct tags of 1-64 printable characters; order kept, duplicates dropped."""
    out: list[str] = []
    for raw in tags or ():
        tag = raw.strip()
        if not tag or len(tag) > MAX_TAG_CHARS or not tag.isprintable():
            raise InvalidRequest(
                f"each tag must be 1-{MAX_TAG_CHARS} printable characters", code="invalid_value", param="tags"
            )
        if tag not in out:
            out.append(tag)
    if len(out) > MAX_TAGS:
        raise InvalidRequest(f"at most {MAX_TAGS} tags per item", code="invalid_value", param="tags")
    return tuple(out)


def validate_metadata(metadata: Mapping[str, Any] | None) -> str | None:
    """The metadata as compact JSON (an object of at most 16 KiB), or None."""
    if metadata is None:
        return None
    if not isinstance(metadata, Mapping):
        raise InvalidRequest("metadata must be a JSON object", code="invalid_value", param="metadata")
    try:
        encoded = orjson.dumps(dict(metadata))
    except TypeError as exc:
        raise InvalidRequest(f"metadata is not JSON: {exc}", code="invalid_value", param="metadata") from None
    if len(encoded) > MAX_METADATA_BYTES:
        raise RequestTooLarge(f"metadata is larger than {MAX_METADATA_BYTES} bytes as JSON", param="metadata")
    return encoded.decode("utf-8")


def validate_ttl_days(ttl_days: float | None) -> float | None:
    if ttl_days is None:
        return None
    if not 0 < ttl_days <= MAX_TTL_DAYS:
        raise InvalidRequest(
            f"ttl_days must be greater than 0 and at most {MAX_TTL_DAYS}",
            code="invalid_value",
            param="ttl_days",
        )
    return float(ttl_days)


def live(now: float) -> ColumnElement[bool]:
    """Items not past their own expiry (expired ones are invisible until maintenance deletes them)."""
    return or_(memory_items.c.expires_at.is_(None), memory_items.c.expires_at > now)


def _item(m: Mapping[Any, Any]) -> MemoryItem:
    return MemoryItem(
        item_id=m["item_id"],
        agent_id=m["agent_id"],
        text=m["text"],
        tags=tuple(orjson.loads(m["tags_json"])),
        metadata=orjson.loads(m["metadata_json"]) if m["metadata_json"] else None,
        created_at=m["created_at"],
        expires_at=m["expires_at"],
        size_bytes=m["size_bytes"],
        embedding_model=m["embedding_model"],
        embedding_dims=m["embedding_dims"],
        embedding_version=m["embedding_version"],
        embedded_at=m["embedded_at"],
        embedding_error=m["embedding_error"],
    )


# Every column but the vector: listing and fetching never need to move the vector bytes.
_ITEM_COLUMNS = [c for c in memory_items.c if c.name != "vector"]


def vectors_of(outcome: EmbedOutcome, expected: int) -> builtins.list[bytes]:
    """The outcome's vectors, normalised and packed; raises ValueError on a malformed outcome."""
    if len(outcome.vectors) != expected:
        raise ValueError(f"the embedder returned {len(outcome.vectors)} vectors for {expected} inputs")
    return [encode(v, outcome.dims) for v in outcome.vectors]


class MemoryStore:
    def __init__(
        self,
        db: Database,
        embedder: Embedder,
        *,
        target_model: TargetModel,
        version: int = 1,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.db = db
        self.embedder = embedder
        self.target_model = target_model
        self.version = version
        self.clock = clock

    async def add(
        self,
        agent_id: str,
        text: str,
        *,
        tags: Iterable[str] | None = None,
        metadata: Mapping[str, Any] | None = None,
        ttl_days: float | None = None,
    ) -> MemoryItem:
        validate_agent_id(agent_id)
        validate_text(text)
        clean_tags = validate_tags(tags)
        metadata_json = validate_metadata(metadata)
        ttl = validate_ttl_days(ttl_days)
        vector: bytes | None = None
        model: str | None = None
        dims: int | None = None
        try:
            outcome = await self.embedder([text], agent_id)
            vector = vectors_of(outcome, 1)[0]
            model, dims = outcome.model_id, outcome.dims
        except Exception:
            # Broad on purpose: whatever went wrong upstream, the item is kept and backfilled later.
            log.warning(
                "memory item for agent %s stored without a vector; the backfill will embed it",
                agent_id,
                exc_info=True,
            )
        now = self.clock()
        row = {
            "item_id": "mem_" + secrets.token_hex(12),
            "agent_id": agent_id,
            "text": text,
            "tags_json": orjson.dumps(list(clean_tags)).decode("utf-8"),
            "metadata_json": metadata_json,
            "created_at": now,
            "expires_at": now + ttl * DAY_S if ttl is not None else None,
            "size_bytes": item_size(text, clean_tags, metadata_json, vector),
            "vector": vector,
            "embedding_model": model,
            "embedding_dims": dims,
            "embedding_version": self.version if vector is not None else None,
            "embedded_at": now if vector is not None else None,
            "embedding_error": None,
        }
        async with self.db.engine.begin() as conn:
            await conn.execute(insert(memory_items).values(**row))
        return _item(row)

    async def get(self, item_id: str, *, agent_id: str | None = None) -> MemoryItem | None:
        query = select(*_ITEM_COLUMNS).where(memory_items.c.item_id == item_id, live(self.clock()))
        if agent_id is not None:
            query = query.where(memory_items.c.agent_id == agent_id)
        async with self.db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _item(row._mapping) if row is not None else None

    async def list(
        self, agent_id: str, *, limit: int = 50, before: float | None = None
    ) -> builtins.list[MemoryItem]:
        """The agent's items, newest first; ``before`` (a created_at) pages back."""
        validate_agent_id(agent_id)
        query = select(*_ITEM_COLUMNS).where(memory_items.c.agent_id == agent_id, live(self.clock()))
        if before is not None:
            query = query.where(memory_items.c.created_at < before)
        query = query.order_by(memory_items.c.created_at.desc(), memory_items.c.item_id.desc())
        query = query.limit(max(1, limit))
        async with self.db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_item(r._mapping) for r in rows]

    async def delete(self, item_id: str, *, agent_id: str | None = None) -> bool:
        """Delete one item; with ``agent_id`` only if it belongs to that agent."""
        statement = delete(memory_items).where(memory_items.c.item_id == item_id)
        if agent_id is not None:
            statement = statement.where(memory_items.c.agent_id == agent_id)
        async with self.db.engine.begin() as conn:
            result = await conn.execute(statement)
        return bool(result.rowcount)

    async def search(self, agent_id: str, query: str, k: int = 10) -> builtins.list[tuple[MemoryItem, float]]:
        """The agent's k items nearest the query (cosine), best first.

        The query is embedded by the same embedder as the items, and only items whose vector came from
        the model, dims and version the query was embedded with are compared; items still waiting for
        the backfill (no vector, or one from an older model) are not found until it reaches them.
        """
        validate_agent_id(agent_id)
        validate_text(query, "query")
        if k < 1:
            raise InvalidRequest("k must be at least 1", code="invalid_value", param="k")
        k = min(k, MAX_K)
        outcome = await self.embedder([query], agent_id)
        query_vector = vectors_of(outcome, 1)[0]
        candidates = (
            select(memory_items.c.item_id, memory_items.c.vector)
            .where(
                memory_items.c.agent_id == agent_id,
                memory_items.c.vector.is_not(None),
                memory_items.c.embedding_model == outcome.model_id,
                memory_items.c.embedding_dims == outcome.dims,
                memory_items.c.embedding_version == self.version,
                live(self.clock()),
            )
            .order_by(memory_items.c.created_at.desc(), memory_items.c.item_id.desc())
        )
        async with self.db.engine.connect() as conn:
            rows: Sequence[tuple[str, bytes]] = [(r[0], r[1]) for r in await conn.execute(candidates)]
        if len(rows) >= _THREAD_SCORING_FROM:
            ranked = await asyncio.to_thread(top_k, query_vector, rows, k)
        else:
            ranked = top_k(query_vector, rows, k)
        if not ranked:
            return []
        ids = [item_id for item_id, _ in ranked]
        async with self.db.engine.connect() as conn:
            found = await conn.execute(select(*_ITEM_COLUMNS).where(memory_items.c.item_id.in_(ids)))
            by_id = {item.item_id: item for item in (_item(r._mapping) for r in found)}
        return [(by_id[item_id], score) for item_id, score in ranked if item_id in by_id]

    def pending_filter(self, model: str, dims: int | None) -> ColumnElement[bool]:
        """Items the backfill still has to embed for this target (``dims`` None: any dims).

        Settled: a vector, or a recorded embedding error, from this model, dims and version."""
        c = memory_items.c
        # NULL != x is not true in SQL, hence the explicit IS NULL arms.
        arms = [
            c.embedding_model.is_(None),
            c.embedding_version.is_(None),
            c.embedding_model != model,
            c.embedding_version != self.version,
            and_(c.vector.is_(None), c.embedding_error.is_(None)),
        ]
        if dims is not None:
            arms += [c.embedding_dims.is_(None), c.embedding_dims != dims]
        return or_(*arms)
