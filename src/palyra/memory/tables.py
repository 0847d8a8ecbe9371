"""The memory store's tables. Migration 0006 creates them; code reads them from here.

Times are Unix seconds (double precision), like every other table. A vector is the unit-length
embedding as little-endian float32 bytes, with the model, dims and version that produced it, so the
backfill can tell stale vectors from current ones without decoding them.
"""

from __future__ import annotations

from sqlalchemy import Column, Float, Index, Integer, LargeBinary, String, Table, Text

from palyra.storage.schema import metadata

memory_items = Table(
    "memory_items",
    metadata,
    Column("item_id", String(64), primary_key=True),
    Column("agent_id", String(128), nullable=False),
    Column("text", Text, nullable=False),
    Column("tags_json", Text, nullable=False),
    Column("metadata_json", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    # text + tags + metadata + vector bytes; kept on the row so the byte cap is one SUM.
    Column("size_bytes", Integer, nullable=False),
    Column("vector", LargeBinary, nullable=True),
    Column("embedding_model", String(256), nullable=True),
    Column("embedding_dims", Integer, nullable=True),
    Column("embedding_version", Integer, nullable=True),
    Column("embedded_at", Float, nullable=True),
    # Why the current target cannot embed this item (e.g. longer than the model's context); it stays
    # without a vector, and out of the backfill's way, until the target model or version changes.
    Column("embedding_error", String(300), nullable=True),
)
Index("ix_memory_items_agent_created", memory_items.c.agent_id, memory_items.c.created_at)
Index("ix_memory_items_created", memory_items.c.created_at)
Index("ix_memory_items_expires", memory_items.c.expires_at)

# One JSON document per job ("maintenance", "backfill"): last run, counts, next vacuum.
memory_state = Table(
    "memory_state",
    metadata,
    Column("key", String(64), primary_key=True),
    Column("value_json", Text, nullable=False),
    Column("updated_at", Float, nullable=False),
)

MEMORY_TABLES = (memory_items, memory_state)
