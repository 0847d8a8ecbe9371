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
    LargeBinary,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
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
    Column("routing_mode", String(16), nullable=True),
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

auth_profiles = Table(
    "auth_profiles",
    metadata,
    Column("profile_id", String(128), primary_key=True),
    Column("provider", String(32), nullable=False),
    Column("custom_name", String(64), nullable=True),
    Column("profile_name", String(256), nullable=False),
    Column("agent_id", String(128), nullable=True),
    Column("credential_type", String(16), nullable=False),
    Column("api_key_ref", String(300), nullable=True),
    Column("access_token_ref", String(300), nullable=True),
    Column("refresh_token_ref", String(300), nullable=True),
    Column("client_secret_ref", String(300), nullable=True),
    Column("client_id", String(256), nullable=True),
    Column("token_url", String(1000), nullable=True),
    Column("revoke_url", String(1000), nullable=True),
    Column("scopes", String(1000), nullable=True),
    Column("expires_at", Float, nullable=True),
    Column("refresh_failures", Integer, nullable=False, default=0, server_default="0"),
    Column("refresh_last_error", String(200), nullable=True),
    Column("refresh_last_attempt", Float, nullable=True),
    Column("refresh_last_success", Float, nullable=True),
    Column("refresh_next_allowed", Float, nullable=True),
    Column("failure_count", Integer, nullable=False, default=0, server_default="0"),
    Column("last_failure_kind", String(32), nullable=True),
    Column("last_failure_at", Float, nullable=True),
    Column("cooldown_until", Float, nullable=True),
    Column("last_success_at", Float, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_auth_profiles_provider_agent", auth_profiles.c.provider, auth_profiles.c.agent_id)

audit_events = Table(
    "audit_events",
    metadata,
    Column("event_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("action", String(64), nullable=False),
    Column("actor", String(128), nullable=False),
    Column("target", String(300), nullable=True),
    Column("details", Text, nullable=True),
)
Index("ix_audit_events_at", audit_events.c.at)

# Envelope-encrypted secrets (palyra.vault). Never plaintext: kek_id names the master key that seals
# wrapped_dek; the GCM tag is the tail of each ciphertext.
vault_secrets = Table(
    "vault_secrets",
    metadata,
    Column("scope", String(160), primary_key=True),
    Column("key", String(128), primary_key=True),
    Column("kek_id", String(16), nullable=False),
    Column("value_nonce", LargeBinary, nullable=False),
    Column("value_ciphertext", LargeBinary, nullable=False),
    Column("dek_nonce", LargeBinary, nullable=False),
    Column("wrapped_dek", LargeBinary, nullable=False),
    Column("value_bytes", Integer, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)

alerts = Table(
    "alerts",
    metadata,
    Column("alert_id", Integer, primary_key=True, autoincrement=True),
    Column("at", Float, nullable=False),
    Column("kind", String(32), nullable=False),
    Column("subject", String(256), nullable=False),
    Column("window_key", String(32), nullable=False),
    Column("message", Text, nullable=False),
    Column("details", Text, nullable=True),
    Column("webhook_status", String(32), nullable=True),
    UniqueConstraint("kind", "subject", "window_key", name="uq_alerts_dedup"),
)
Index("ix_alerts_at", alerts.c.at)

budget_policies = Table(
    "budget_policies",
    metadata,
    Column("policy_id", String(128), primary_key=True),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

price_overrides = Table(
    "price_overrides",
    metadata,
    Column("model_id", String(256), primary_key=True),
    Column("effective_from", String(32), primary_key=True),
    Column("definition", Text, nullable=False),
    Column("created_at", Float, nullable=False),
)

routing_decisions = Table(
    "routing_decisions",
    metadata,
    Column("request_id", String(64), primary_key=True),
    Column("at", Float, nullable=False),
    Column("mode", String(16), nullable=False),
    Column("requested_model", String(256), nullable=True),
    Column("recommended_model", String(256), nullable=True),
    Column("served_model", String(256), nullable=True),
    Column("score", Float, nullable=True),
    Column("tier", String(16), nullable=True),
    Column("reason_codes", Text, nullable=True),
    Column("features", Text, nullable=True),
    Column("candidates", Text, nullable=True),
    Column("actual_cost_usd", Float, nullable=True),
    Column("requested_cost_usd", Float, nullable=True),
    Column("recommended_cost_usd", Float, nullable=True),
    Column("saving_usd", Float, nullable=True),
)
Index("ix_routing_decisions_at", routing_decisions.c.at)
