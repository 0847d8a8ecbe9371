"""Table definitions (SQLAlchemy Core). Alembic migrations create them; code reads them from here.

Times are Unix seconds as double precision: comparable across SQLite and PostgreSQL, cheap to index.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    Index,
    Integer,
    MetaData,
    String,
    Table,
    Text,
)

metadata = MetaData()

api_tokens = Table(
    "api_tokens",
    metadata,
    Column("token_id", String(64), primary_key=True),
    Column("name", String(200), nullable=False),
    Column("token_hash", String(64), nullable=False, unique=True),
    Column("display_prefix", String(32), nullable=False),
    Column("scopes", String(200), nullable=False),
    Column("agent_id", String(128), nullable=True),
    Column("rate_limit_per_minute", Integer, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("expires_at", Float, nullable=True),
    Column("revoked_at", Float, nullable=True),
    Column("last_used_at", Float, nullable=True),
)

runs = Table(
    "runs",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("created_at", Float, nullable=False),
    Column("finished_at", Float, nullable=False),
    Column("token_id", String(64), nullable=True),
    Column("agent_id", String(128), nullable=True),
    Column("session_id", String(128), nullable=True),
    Column("endpoint", String(64), nullable=False),
    Column("requested_model", String(256), nullable=True),
    Column("model_id", String(256), nullable=True),
    Column("provider_id", String(128), nullable=True),
    Column("upstream_model", String(256), nullable=True),
    Column("stream", Boolean, nullable=False, default=False),
    Column("status", String(16), nullable=False),
    Column("http_status", Integer, nullable=False),
    Column("error_class", String(64), nullable=True),
    Column("error_message", Text, nullable=True),
    Column("prompt_tokens", Integer, nullable=False, default=0),
    Column("completion_tokens", Integer, nullable=False, default=0),
    Column("cached_tokens", Integer, nullable=False, default=0),
    Column("cache_write_tokens", Integer, nullable=False, default=0),
    Column("total_tokens", Integer, nullable=False, default=0),
    Column("usage_source", String(16), nullable=True),
    Column("latency_ms", Float, nullable=False),
    Column("overhead_ms", Float, nullable=True),
    Column("cost_usd", Float, nullable=True),
    Column("pricing_missing", Boolean, nullable=False, default=False),
    Column("routing_mode", String(16), nullable=True),
    Column("routing_recommended_model", String(256), nullable=True),
    Column("attempts", Integer, nullable=False, default=0),
)
Index("ix_runs_created_at", runs.c.created_at)
Index("ix_runs_agent_created", runs.c.agent_id, runs.c.created_at)
Index("ix_runs_token_created", runs.c.token_id, runs.c.created_at)
