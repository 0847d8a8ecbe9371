"""Agent memory: items embedded through the gateway, cosine search, retention and the backfill.

``palyra.memory.cli`` (the `palyra memory` commands) is not imported here: it needs ``palyra.cli``.
"""

from palyra.memory.backfill import EmbeddingMismatch, run_backfill
from palyra.memory.maintenance import run_maintenance
from palyra.memory.store import SYSTEM_AGENT, Embedder, EmbedOutcome, MemoryItem, MemoryStore, TargetModel
from palyra.memory.tables import memory_items, memory_state

__all__ = [
    "SYSTEM_AGENT",
    "EmbedOutcome",
    "Embedder",
    "EmbeddingMismatch",
    "MemoryItem",
    "MemoryStore",
    "TargetModel",
    "memory_items",
    "memory_state",
    "run_backfill",
    "run_maintenance",
]
