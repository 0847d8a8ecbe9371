"""The provider registry: one adapter and its protection (breaker, concurrency limit, health) per
configured provider, capabilities per model, and the ordered candidates for a request.

Candidates: the requested model (or the role's default) if it can do what the request needs, then its
``fallback_model_ids`` that can, then — with ``failover_enabled`` — other capable models of the same
role on other providers, cheapest and fastest first. The deterministic provider is never an automatic
failover target: an echo in place of a real answer would surprise; list it explicitly if wanted.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from palyra.config.models import ModelConfig, ModelProviderConfig, ProviderConfig
from palyra.errors import ConfigError, InvalidRequest, ModelNotFound
from palyra.providers.anthropic import AnthropicProvider
from palyra.providers.base import Capabilities, ModelTarget, Provider
from palyra.providers.credentials import CredentialSource, EnvCredential, NoCredential
from palyra.providers.deterministic import DeterministicProvider
from palyra.providers.health import ProviderHealth
from palyra.providers.openai_compat import OpenAICompatibleProvider
from palyra.providers.resilience import ConcurrencyLimit
from palyra.shared.breaker import AsyncCircuitBreaker, InProcessCircuitBreaker
from palyra.shared.limits import ProviderConcurrencyLimit

ROLE_ENDPOINT = {
    "chat": "chat completions",
    "embeddings": "embeddings",
    "audio_transcription": "transcriptions",
}
_COST_RANK = {"low": 0, "standard": 1, "premium": 2}
_LATENCY_RANK = {"low": 0, "standard": 1, "high": 2}

# (kind, role) -> (tools, vision, json_mode, streaming, max_context_tokens, cost_tier, latency_tier)
_DEFAULTS: dict[tuple[str, str], tuple[bool, bool, bool, bool, int | None, str, str]] = {
    ("deterministic", "chat"): (True, True, True, True, 128_000, "low", "low"),
    ("openai_compatible", "chat"): (True, True, True, True, 128_000, "standard", "standard"),
    ("anthropic", "chat"): (True, True, True, True, 200_000, "premium", "standard"),
}
_ROLE_DEFAULT = (False, False, False, False, None, "low", "low")

ProviderFactory = Callable[[ProviderConfig, CredentialSource], Provider]
# (provider id, failure threshold, cooldown seconds) -> breaker; (provider id, limit, wait seconds) -> limit
BreakerFactory = Callable[[str, int, float], AsyncCircuitBreaker]
LimitFactory = Callable[[str, int, float], ProviderConcurrencyLimit]


def in_process_breaker(provider_id: str, failure_threshold: int, cooldown_s: float) -> AsyncCircuitBreaker:
    return InProcessCircuitBreaker(provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s)


@dataclass(frozen=True, slots=True)
class Needs:
    """What a request asks of a chat model."""

    vision: bool = False
    tools: bool = False
    json_mode: bool = False
    streaming: bool = False

    def missing(self, caps: Capabilities) -> list[str]:
        out = []
        if self.vision and not caps.vision:
            out.append("vision")
        if self.tools and not caps.tools:
            out.append("tools")
        if self.json_mode and not caps.json_mode:
            out.append("json_mode")
        if self.streaming and not caps.streaming:
            out.append("streaming")
        return out


_NEED_ERRORS = {
    "vision": ("model_not_vision_capable", "messages", "does not accept images; use a model with vision"),
    "tools": ("model_not_tool_capable", "tools", "does not support tools; use a model with tool support"),
    "json_mode": ("model_not_json_capable", "response_format", "does not support JSON output"),
    "streaming": ("model_not_stream_capable", "stream", "does not support streaming; send stream: false"),
}


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    config: ModelConfig
    target: ModelTarget
    provider_kind: str
    cost_tier: str
    latency_tier: str


@dataclass
class ProviderRuntime:
    provider: Provider
    config: ProviderConfig
    breaker: AsyncCircuitBreaker
    limit: ProviderConcurrencyLimit
    health: ProviderHealth
    credential: CredentialSource


DEFAULT_FACTORIES: dict[str, ProviderFactory] = {
    "deterministic": lambda cfg, _cred: DeterministicProvider(cfg.provider_id),
    "openai_compatible": OpenAICompatibleProvider,
    "anthropic": AnthropicProvider,
}


def credential_for(config: ProviderConfig) -> CredentialSource:
    if config.api_key_env:
        return EnvCredential(config.api_key_env)
    return NoCredential()


class ProviderRegistry:
    def __init__(
        self,
        config: ModelProviderConfig,
        factories: dict[str, ProviderFactory] | None = None,
        credentials: Callable[[ProviderConfig], CredentialSource] = credential_for,
        breakers: BreakerFactory = in_process_breaker,
        limits: LimitFactory = ConcurrencyLimit,
    ) -> None:
        self.config = config
        factories = DEFAULT_FACTORIES if factories is None else factories
        self.runtimes: dict[str, ProviderRuntime] = {}
        for i, p in enumerate(config.providers):
            if not p.enabled:
                continue
            factory = factories.get(p.kind)
            if factory is None:
                raise ConfigError(
                    f"model_provider.providers[{i}].kind: kind {p.kind!r} has no adapter in this build; "
                    f"use one of: {', '.join(sorted(factories))}"
                )
            credential = credentials(p)
            self.runtimes[p.provider_id] = ProviderRuntime(
                provider=factory(p, credential),
                config=p,
                breaker=breakers(
                    p.provider_id,
                    p.circuit_breaker.failure_threshold,
                    p.circuit_breaker.cooldown_ms / 1000.0,
                ),
                limit=limits(p.provider_id, p.max_concurrency, p.concurrency_wait_ms / 1000.0),
                health=ProviderHealth(p.provider_id),
                credential=credential,
            )
        self.models: dict[str, RegisteredModel] = {}
        kinds = {p.provider_id: p.kind for p in config.providers}
        for m in config.models:
            if not m.enabled or m.provider_id not in self.runtimes:
                continue
            self.models[m.model_id] = _register(m, kinds[m.provider_id])
        self.defaults = {
            "chat": config.default_chat_model_id,
            "embeddings": config.default_embeddings_model_id,
            "audio_transcription": config.default_audio_transcription_model_id,
        }

    @property
    def providers(self) -> dict[str, Provider]:
        return {pid: rt.provider for pid, rt in self.runtimes.items()}

    def resolve(self, model_id: str | None, role: str) -> RegisteredModel:
        """The model a request names (or the role's default)."""
        if not model_id:
            model_id = self.defaults.get(role)
            if not model_id:
                raise InvalidRequest(
                    f"no model given and no default {role} model is configured",
                    code="model_required",
                    param="model",
                )
        entry = self.models.get(model_id)
        if entry is None:
            raise ModelNotFound(
                f"the model '{model_id}' does not exist or is not enabled; list models with GET /v1/models",
                param="model",
            )
        if entry.config.role != role:
            raise InvalidRequest(
                f"the model '{model_id}' is a {entry.config.role} model and cannot serve "
                f"{ROLE_ENDPOINT[role]}",
                code="model_role_mismatch",
                param="model",
            )
        return entry

    def candidates(
        self, model_id: str | None, role: str, needs: Needs | None = None
    ) -> list[RegisteredModel]:
        primary = self.resolve(model_id, role)
        needs = needs or Needs()
        explicit = [
            self.models[fb]
            for fb in primary.config.fallback_model_ids
            if fb in self.models and not needs.missing(self.models[fb].target.capabilities)
        ]
        missing = needs.missing(primary.target.capabilities)
        if missing:
            if explicit:
                return explicit
            code, param, why = _NEED_ERRORS[missing[0]]
            raise InvalidRequest(f"model '{primary.config.model_id}' {why}", code=code, param=param)
        ordered = [primary, *(m for m in explicit if m is not primary)]
        if self.config.failover_enabled:
            seen = {m.config.model_id for m in ordered}
            others = [
                m
                for m in self.models.values()
                if m.config.role == role
                and m.config.model_id not in seen
                and m.config.provider_id != primary.config.provider_id
                and m.provider_kind != "deterministic"
                and not needs.missing(m.target.capabilities)
            ]
            others.sort(
                key=lambda m: (
                    _COST_RANK.get(m.cost_tier, 3),
                    _LATENCY_RANK.get(m.latency_tier, 3),
                    m.config.model_id,
                )
            )
            ordered += others
        return ordered

    async def close(self) -> None:
        for runtime in self.runtimes.values():
            await runtime.provider.close()


def _register(m: ModelConfig, kind: str) -> RegisteredModel:
    tools, vision, json_mode, streaming, ctx, cost, latency = _DEFAULTS.get((kind, m.role), _ROLE_DEFAULT)
    caps = m.capabilities
    capabilities = Capabilities(
        tools=tools if caps.tools is None else caps.tools,
        vision=vision if caps.vision is None else caps.vision,
        json_mode=json_mode if caps.json_mode is None else caps.json_mode,
        streaming=streaming if caps.streaming is None else caps.streaming,
        max_context_tokens=ctx if caps.max_context_tokens is None else caps.max_context_tokens,
    )
    target = ModelTarget(
        model_id=m.model_id,
        provider_id=m.provider_id,
        upstream_model=m.upstream_model or m.model_id,
        role=m.role,
        capabilities=capabilities,
        max_output_tokens=m.max_output_tokens,
        dimensions=m.dimensions,
    )
    return RegisteredModel(
        config=m,
        target=target,
        provider_kind=kind,
        cost_tier=m.cost_tier or cost,
        latency_tier=m.latency_tier or latency,
    )
