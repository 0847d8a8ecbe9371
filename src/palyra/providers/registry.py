"""The provider registry: builds one adapter per configured provider and resolves model ids.

Capability defaults depend on the provider kind and the model's role; a model entry's
``capabilities`` table overrides them field by field.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from palyra.config.models import ModelConfig, ModelProviderConfig, ProviderConfig
from palyra.errors import ConfigError, InvalidRequest, ModelNotFound
from palyra.providers.base import Capabilities, ModelTarget, Provider
from palyra.providers.deterministic import DeterministicProvider

ROLE_ENDPOINT = {
    "chat": "chat completions",
    "embeddings": "embeddings",
    "audio_transcription": "transcriptions",
}

# (kind, role) -> (tools, vision, json_mode, streaming, max_context_tokens, cost_tier, latency_tier)
_DEFAULTS: dict[tuple[str, str], tuple[bool, bool, bool, bool, int | None, str, str]] = {
    ("deterministic", "chat"): (True, True, True, True, 128_000, "low", "low"),
    ("openai_compatible", "chat"): (True, True, True, True, 128_000, "standard", "standard"),
    ("anthropic", "chat"): (True, True, True, True, 200_000, "premium", "standard"),
}
_ROLE_DEFAULT = (False, False, False, False, None, "low", "low")

ProviderFactory = Callable[[ProviderConfig], Provider]


@dataclass(frozen=True, slots=True)
class RegisteredModel:
    config: ModelConfig
    target: ModelTarget
    provider_kind: str
    cost_tier: str
    latency_tier: str


def _deterministic(config: ProviderConfig) -> Provider:
    return DeterministicProvider(config.provider_id)


DEFAULT_FACTORIES: dict[str, ProviderFactory] = {"deterministic": _deterministic}


class ProviderRegistry:
    def __init__(
        self, config: ModelProviderConfig, factories: dict[str, ProviderFactory] | None = None
    ) -> None:
        self.config = config
        factories = DEFAULT_FACTORIES if factories is None else factories
        self.providers: dict[str, Provider] = {}
        self.provider_configs: dict[str, ProviderConfig] = {}
        for i, p in enumerate(config.providers):
            if not p.enabled:
                continue
            factory = factories.get(p.kind)
            if factory is None:
                raise ConfigError(
                    f"model_provider.providers[{i}].kind: kind {p.kind!r} has no adapter in this build; "
                    f"use one of: {', '.join(sorted(factories))}"
                )
            self.providers[p.provider_id] = factory(p)
            self.provider_configs[p.provider_id] = p
        self.models: dict[str, RegisteredModel] = {}
        kinds = {p.provider_id: p.kind for p in config.providers}
        for m in config.models:
            if not m.enabled or m.provider_id not in self.providers:
                continue
            self.models[m.model_id] = _register(m, kinds[m.provider_id])
        self.defaults = {
            "chat": config.default_chat_model_id,
            "embeddings": config.default_embeddings_model_id,
            "audio_transcription": config.default_audio_transcription_model_id,
        }

    def resolve(self, model_id: str | None, role: str) -> tuple[RegisteredModel, Provider]:
        """The model a request names (or the role's default) and the adapter that serves it."""
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
        return entry, self.providers[entry.config.provider_id]

    async def close(self) -> None:
        for provider in self.providers.values():
            await provider.close()


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
