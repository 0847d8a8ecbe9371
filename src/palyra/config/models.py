"""The configuration file's shape (INTERFACE §2) as immutable pydantic models.

Every model forbids unknown keys, so a typo is an error naming the key rather than a silently ignored
setting. Cross-references (a model naming a provider, a default naming a model) are checked in
``PalyraConfig`` once the whole document is known. Keep docs/CONFIG.md in step with this file.
"""

from __future__ import annotations

import re
from typing import Annotated, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator, model_validator

from palyra.netguard import UnsafeUrl, validate_base_url

IDENT = re.compile(r"^[a-z0-9][a-z0-9_.:-]{0,127}$")
ENV_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")


class Frozen(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, strict=False)


class ServerConfig(Frozen):
    host: str = "127.0.0.1"
    port: Annotated[int, Field(ge=0, le=65535)] = 8080
    state_dir: str = ".palyra"
    database_url: str = ""
    database_schema: str = ""
    redis_url: str = ""
    # Every Redis key starts with palyra:{<prefix>}:; replicas of one gateway share it.
    redis_key_prefix: Annotated[str, Field(pattern=r"^[A-Za-z0-9_.-]{1,64}$")] = "gw"
    # Connections to Redis per process; past it calls wait for a free one.
    redis_max_connections: Annotated[int, Field(ge=1, le=10_000)] = 64
    # With Redis: how often each replica re-reads budget policies and prices set through the admin API.
    policy_sync_interval_s: Annotated[float, Field(gt=0, le=3600)] = 5.0
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    access_log: bool = True
    max_json_body_bytes: Annotated[int, Field(gt=0)] = 8 * 1024 * 1024
    max_audio_body_bytes: Annotated[int, Field(gt=0)] = 25 * 1024 * 1024
    journal_flush_interval_ms: Annotated[int, Field(gt=0, le=60_000)] = 200
    journal_batch_size: Annotated[int, Field(gt=0, le=10_000)] = 500
    token_cache_ttl_s: Annotated[float, Field(ge=0, le=300)] = 5.0
    # Prompt tokens for reservations and routing: the cl100k BPE (~25 MiB once loaded) or 4 chars/token.
    token_counting: Literal["bpe", "estimate"] = "bpe"
    default_token_rate_limit_per_minute: Annotated[int, Field(ge=0)] = 0
    # Refused credentials per client address and minute before every authentication from it gets 429.
    auth_failure_limit_per_minute: Annotated[int, Field(ge=0)] = 60
    # Shape limits on /v1 JSON bodies (surface/openai_requests.py RequestLimits); the parser itself
    # stops near 200 levels, so max_json_depth cannot go past 128.
    max_json_depth: Annotated[int, Field(ge=8, le=128)] = 64
    max_messages: Annotated[int, Field(ge=1, le=100_000)] = 2048
    max_tools: Annotated[int, Field(ge=1, le=10_000)] = 256
    graceful_shutdown_s: Annotated[float, Field(gt=0, le=600)] = 30.0
    # The address users reach Palyra at (behind a proxy); OAuth callbacks are built from it.
    public_base_url: str = ""
    # Worker processes sharing the port (SO_REUSEPORT); more than one needs redis_url.
    workers: Annotated[int, Field(ge=1, le=64)] = 1

    @field_validator("database_url")
    @classmethod
    def _database_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("sqlite", "postgresql", "postgres://")):
            raise ValueError(
                "must be empty (SQLite in state_dir), sqlite:///PATH or postgresql://user@host/db"
            )
        return v

    @field_validator("workers")
    @classmethod
    def _workers(cls, v: int, info: ValidationInfo) -> int:
        if v > 1 and not info.data.get("redis_url"):
            raise ValueError(
                "more than one worker needs server.redis_url: rate limits, budgets, breakers and provider "
                "slots must be shared between the workers (or set workers = 1)"
            )
        return v

    @field_validator("redis_url")
    @classmethod
    def _redis_url(cls, v: str) -> str:
        v = v.strip()
        if v and not v.startswith(("redis://", "rediss://", "unix://")):
            raise ValueError("must be empty (in-process state) or redis://host:port/db")
        return v

    @field_validator("database_schema")
    @classmethod
    def _schema(cls, v: str) -> str:
        if v and not re.fullmatch(r"[a-z_][a-z0-9_]{0,62}", v):
            raise ValueError("must be a lowercase SQL identifier (letters, digits, underscore)")
        return v


class CircuitBreakerConfig(Frozen):
    failure_threshold: Annotated[int, Field(gt=0)] = 3
    cooldown_ms: Annotated[int, Field(gt=0)] = 30_000


ProviderKind = Literal["deterministic", "openai_compatible", "anthropic"]


class ProviderConfig(Frozen):
    provider_id: str
    kind: ProviderKind
    display_name: str | None = None
    enabled: bool = True
    base_url: str | None = None
    auth_profile_id: str | None = None
    api_key_env: str | None = None
    allow_private_base_url: bool = False
    request_timeout_ms: Annotated[int, Field(gt=0)] = 60_000
    connect_timeout_ms: Annotated[int, Field(gt=0)] = 10_000
    max_retries: Annotated[int, Field(ge=0, le=10)] = 2
    retry_backoff_ms: Annotated[int, Field(gt=0)] = 150
    max_concurrency: Annotated[int, Field(gt=0)] = 64
    concurrency_wait_ms: Annotated[int, Field(ge=0)] = 1_000
    circuit_breaker: CircuitBreakerConfig = CircuitBreakerConfig()

    @field_validator("provider_id")
    @classmethod
    def _provider_id(cls, v: str) -> str:
        v = v.strip().lower()
        if not IDENT.match(v):
            raise ValueError("must be 1-128 characters of a-z, 0-9, '_', '.', ':' or '-'")
        return v

    @field_validator("api_key_env")
    @classmethod
    def _api_key_env(cls, v: str | None) -> str | None:
        if v is not None and not ENV_NAME.match(v):
            raise ValueError(
                "must be the NAME of an environment variable that holds the key, not the key itself"
            )
        return v

    @model_validator(mode="after")
    def _credentials(self) -> ProviderConfig:
        if self.auth_profile_id and self.api_key_env:
            raise ValueError("set either auth_profile_id or api_key_env, not both")
        if self.base_url is not None:
            try:
                normalised = validate_base_url(self.base_url, allow_private=self.allow_private_base_url)
            except UnsafeUrl as exc:
                raise ValueError(str(exc)) from None
            object.__setattr__(self, "base_url", normalised)
        return self


class CapabilitiesConfig(Frozen):
    tools: bool | None = None
    vision: bool | None = None
    json_mode: bool | None = None
    streaming: bool | None = None
    max_context_tokens: Annotated[int, Field(gt=0)] | None = None


ModelRole = Literal["chat", "embeddings", "audio_transcription"]
CostTier = Literal["low", "standard", "premium"]
LatencyTier = Literal["low", "standard", "high"]


class ModelConfig(Frozen):
    model_id: str
    provider_id: str
    upstream_model: str | None = None
    role: ModelRole = "chat"
    enabled: bool = True
    capabilities: CapabilitiesConfig = CapabilitiesConfig()
    cost_tier: CostTier | None = None
    latency_tier: LatencyTier | None = None
    metadata_source: Literal["static", "discovery", "operator_override"] = "static"
    fallback_model_ids: tuple[str, ...] = ()
    max_output_tokens: Annotated[int, Field(gt=0)] = 4096
    dimensions: Annotated[int, Field(gt=0, le=65_536)] | None = None

    @field_validator("model_id")
    @classmethod
    def _model_id(cls, v: str) -> str:
        v = v.strip()
        if not v or len(v) > 256 or "\x00" in v:
            raise ValueError("must be 1-256 characters")
        return v

    @field_validator("provider_id")
    @classmethod
    def _provider_ref(cls, v: str) -> str:
        return v.strip().lower()


class ModelProviderConfig(Frozen):
    default_chat_model_id: str | None = None
    default_embeddings_model_id: str | None = None
    default_audio_transcription_model_id: str | None = None
    failover_enabled: bool = True
    providers: tuple[ProviderConfig, ...] = ()
    models: tuple[ModelConfig, ...] = ()


class RoutingConfig(Frozen):
    mode: Literal["off", "suggest", "dry_run", "enforced"] = "suggest"


BudgetWindow = Literal["day", "week", "month", "total", "rolling_24h", "rolling_7d", "rolling_30d"]


class BudgetConfig(Frozen):
    policy_id: str
    scope: str = "global"
    metric: Literal["usd", "tokens"] = "usd"
    window: BudgetWindow = "month"
    soft_limit: Annotated[float, Field(ge=0)] | None = None
    hard_limit: Annotated[float, Field(ge=0)] | None = None
    webhook_url: str | None = None

    @field_validator("scope")
    @classmethod
    def _scope(cls, v: str) -> str:
        if v == "global" or re.fullmatch(r"(agent|session|token):[A-Za-z0-9_.:@-]{1,128}", v):
            return v
        raise ValueError("must be global, agent:<id>, session:<id> or token:<id>")

    @model_validator(mode="after")
    def _limits(self) -> BudgetConfig:
        if self.soft_limit is None and self.hard_limit is None:
            raise ValueError("set soft_limit, hard_limit or both")
        if self.soft_limit is not None and self.hard_limit is not None and self.soft_limit > self.hard_limit:
            raise ValueError("soft_limit must not exceed hard_limit")
        return self


class PricingConfig(Frozen):
    model_id: Annotated[str, Field(min_length=1, max_length=256)]
    input_per_million_usd: Annotated[float, Field(ge=0)]
    output_per_million_usd: Annotated[float, Field(ge=0)]
    cached_input_per_million_usd: Annotated[float, Field(ge=0)] | None = None
    cache_write_per_million_usd: Annotated[float, Field(ge=0)] | None = None
    effective_from: str | None = None


class CronConfig(Frozen):
    memory_maintenance_interval_s: Annotated[int, Field(gt=0)] = 300
    embeddings_backfill_interval_s: Annotated[int, Field(gt=0)] = 600
    embeddings_backfill_batch_size: Annotated[int, Field(gt=0, le=2048)] = 64
    skill_reaudit_interval_s: Annotated[int, Field(gt=0)] = 21_600


class MemoryConfig(Frozen):
    ttl_days: Annotated[int, Field(ge=0)] = 0
    max_entries: Annotated[int, Field(ge=0)] = 0
    max_bytes: Annotated[int, Field(ge=0)] = 0


class OAuthEndpointsConfig(Frozen):
    """Where a provider's OAuth authorization server lives (defaults: OpenAI's)."""

    authorize_url: str = "https://auth.openai.com/authorize"
    token_url: str = "https://auth0.openai.com/oauth/token"
    revoke_url: str | None = "https://auth0.openai.com/oauth/revoke"
    audience: str | None = "https://api.openai.com/v1"
    allow_private: bool = False

    @model_validator(mode="after")
    def _urls(self) -> OAuthEndpointsConfig:
        for name in ("authorize_url", "token_url", "revoke_url"):
            value = getattr(self, name)
            if value is None:
                continue
            try:
                object.__setattr__(
                    self, name, validate_base_url(value, allow_private=self.allow_private, field=name)
                )
            except UnsafeUrl as exc:
                raise ValueError(str(exc)) from None
        return self


class AuthConfig(Frozen):
    # Keyed by auth provider (openai today). Only providers listed here, or openai with its defaults,
    # can be connected with OAuth.
    oauth: dict[str, OAuthEndpointsConfig] = Field(default_factory=lambda: {"openai": OAuthEndpointsConfig()})
    profile_cache_ttl_s: Annotated[float, Field(ge=0, le=300)] = 5.0


class PalyraConfig(Frozen):
    server: ServerConfig = ServerConfig()
    model_provider: ModelProviderConfig = ModelProviderConfig()
    routing: RoutingConfig = RoutingConfig()
    budgets: tuple[BudgetConfig, ...] = ()
    pricing: tuple[PricingConfig, ...] = ()
    cron: CronConfig = CronConfig()
    memory: MemoryConfig = MemoryConfig()
    auth: AuthConfig = AuthConfig()
