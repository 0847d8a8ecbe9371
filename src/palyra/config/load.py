"""Reading the configuration: TOML file, environment overrides, embedded default, cross-checks.

Every failure is a ``ConfigError`` whose message names the key (``model_provider.models[1].provider_id``)
and says how to fix it.
"""

from __future__ import annotations

import os
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from palyra.config.models import ModelConfig, PalyraConfig, ProviderConfig
from palyra.errors import ConfigError

DETERMINISTIC_PROVIDER_ID = "deterministic"
DEFAULT_CHAT_MODEL = "deterministic"
DEFAULT_EMBEDDINGS_MODEL = "hash-embedding-v1"
DEFAULT_TRANSCRIBE_MODEL = "deterministic-transcribe"

# Environment variable -> (section, key). Applied over the file, before validation.
ENV_OVERRIDES: dict[str, tuple[str, str]] = {
    "PALYRA_HOST": ("server", "host"),
    "PALYRA_PORT": ("server", "port"),
    "PALYRA_STATE_DIR": ("server", "state_dir"),
    "PALYRA_DATABASE_URL": ("server", "database_url"),
    "PALYRA_DATABASE_SCHEMA": ("server", "database_schema"),
    "PALYRA_REDIS_URL": ("server", "redis_url"),
    "PALYRA_LOG_LEVEL": ("server", "log_level"),
    "PALYRA_ROUTING_MODE": ("routing", "mode"),
}


def config_path_from_env(
    explicit: str | os.PathLike[str] | None, environ: Mapping[str, str] | None = None
) -> Path | None:
    if explicit:
        return Path(explicit)
    named = (os.environ if environ is None else environ).get("PALYRA_CONFIG", "").strip()
    return Path(named) if named else None


def load_config(
    path: str | os.PathLike[str] | None = None,
    *,
    environ: Mapping[str, str] | None = None,
    overrides: Mapping[str, Mapping[str, Any]] | None = None,
) -> PalyraConfig:
    """Load, override, validate. ``path`` None means ``PALYRA_CONFIG`` or the embedded default."""
    env = os.environ if environ is None else environ
    cfg_path = config_path_from_env(path, env)
    raw: dict[str, Any] = {}
    source = "embedded default"
    if cfg_path is not None:
        source = str(cfg_path)
        try:
            text = cfg_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise ConfigError(
                f"config file {cfg_path} does not exist; create one with `palyra init` "
                "or unset PALYRA_CONFIG to use the embedded default"
            ) from None
        except OSError as exc:
            raise ConfigError(f"config file {cfg_path} cannot be read: {exc.strerror}") from None
        try:
            raw = tomllib.loads(text)
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{cfg_path}: not valid TOML: {exc}") from None
    for var, (section, key) in ENV_OVERRIDES.items():
        value = env.get(var)
        if value is not None and value != "":
            raw.setdefault(section, {})
            if not isinstance(raw[section], dict):
                raise ConfigError(f"{source}: `{section}` must be a table ([{section}])")
            raw[section][key] = value
    for section, values in (overrides or {}).items():
        raw.setdefault(section, {}).update({k: v for k, v in values.items() if v is not None})
    try:
        config = PalyraConfig.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(_format_validation_error(source, exc, raw)) from None
    config = _with_embedded_default(config)
    problems = reference_problems(config)
    if problems:
        raise ConfigError(f"{source}: " + "\n".join(problems))
    return config


def _with_embedded_default(config: PalyraConfig) -> PalyraConfig:
    """With no providers configured, serve the deterministic provider's three models."""
    mp = config.model_provider
    if mp.providers or mp.models:
        return _with_default_model_ids(config)
    provider = ProviderConfig(provider_id=DETERMINISTIC_PROVIDER_ID, kind="deterministic")
    models = (
        ModelConfig(model_id=DEFAULT_CHAT_MODEL, provider_id=DETERMINISTIC_PROVIDER_ID, role="chat"),
        ModelConfig(
            model_id=DEFAULT_EMBEDDINGS_MODEL, provider_id=DETERMINISTIC_PROVIDER_ID, role="embeddings"
        ),
        ModelConfig(
            model_id=DEFAULT_TRANSCRIBE_MODEL,
            provider_id=DETERMINISTIC_PROVIDER_ID,
            role="audio_transcription",
        ),
    )
    mp = mp.model_copy(
        update={
            "providers": (provider,),
            "models": models,
            "default_chat_model_id": mp.default_chat_model_id or DEFAULT_CHAT_MODEL,
            "default_embeddings_model_id": mp.default_embeddings_model_id or DEFAULT_EMBEDDINGS_MODEL,
            "default_audio_transcription_model_id": mp.default_audio_transcription_model_id
            or DEFAULT_TRANSCRIBE_MODEL,
        }
    )
    return config.model_copy(update={"model_provider": mp})


def _with_default_model_ids(config: PalyraConfig) -> PalyraConfig:
    """An unset default is the first enabled model of that role, so a one-model config just works."""
    mp = config.model_provider
    update: dict[str, str] = {}
    for field, role in (
        ("default_chat_model_id", "chat"),
        ("default_embeddings_model_id", "embeddings"),
        ("default_audio_transcription_model_id", "audio_transcription"),
    ):
        if getattr(mp, field) is None:
            first = next((m.model_id for m in mp.models if m.role == role and m.enabled), None)
            if first is not None:
                update[field] = first
    if not update:
        return config
    return config.model_copy(update={"model_provider": mp.model_copy(update=update)})


def reference_problems(config: PalyraConfig) -> list[str]:
    """Dangling or duplicate references, each as one line naming the key and the fix."""
    problems: list[str] = []
    mp = config.model_provider
    provider_ids: dict[str, int] = {}
    for i, p in enumerate(mp.providers):
        if p.provider_id in provider_ids:
            problems.append(
                f"model_provider.providers[{i}].provider_id: {p.provider_id!r} is already used by "
                f"providers[{provider_ids[p.provider_id]}]; give each provider a unique id"
            )
        provider_ids.setdefault(p.provider_id, i)
        if p.kind != "deterministic" and not p.base_url and p.kind == "openai_compatible":
            problems.append(
                f'model_provider.providers[{i}].base_url: required for kind = "openai_compatible"; '
                'set e.g. base_url = "https://api.openai.com/v1"'
            )
    known = ", ".join(sorted(provider_ids)) or "none defined"
    models: dict[str, ModelConfig] = {}
    for i, m in enumerate(mp.models):
        if m.model_id in models:
            problems.append(
                f"model_provider.models[{i}].model_id: {m.model_id!r} is defined twice; model ids must be "
                "unique across providers"
            )
        models.setdefault(m.model_id, m)
        if m.provider_id not in provider_ids:
            problems.append(
                f"model_provider.models[{i}].provider_id: no provider {m.provider_id!r} (known: {known}); "
                f'add a [[model_provider.providers]] entry with provider_id = "{m.provider_id}" '
                "or fix the reference"
            )
    for i, m in enumerate(mp.models):
        for j, fb in enumerate(m.fallback_model_ids):
            target = models.get(fb)
            if target is None:
                problems.append(
                    f"model_provider.models[{i}].fallback_model_ids[{j}]: no model {fb!r}; "
                    "list only model_ids defined in [[model_provider.models]]"
                )
            elif target.role != m.role:
                problems.append(
                    f"model_provider.models[{i}].fallback_model_ids[{j}]: {fb!r} has role {target.role}, "
                    f"not {m.role}; a fallback must serve the same role"
                )
    for field, role in (
        ("default_chat_model_id", "chat"),
        ("default_embeddings_model_id", "embeddings"),
        ("default_audio_transcription_model_id", "audio_transcription"),
    ):
        wanted = getattr(mp, field)
        if wanted is None:
            continue
        target = models.get(wanted)
        if target is None:
            choices = ", ".join(k for k, v in models.items() if v.role == role) or "none defined"
            problems.append(
                f"model_provider.{field}: no model {wanted!r} (models with role {role}: {choices}); "
                "define it in [[model_provider.models]] or change the default"
            )
        elif target.role != role:
            problems.append(
                f"model_provider.{field}: model {wanted!r} has role {target.role}; pick a model with "
                f'role = "{role}"'
            )
    policy_ids: set[str] = set()
    for i, b in enumerate(config.budgets):
        if b.policy_id in policy_ids:
            problems.append(f"budgets[{i}].policy_id: {b.policy_id!r} is used twice; make it unique")
        policy_ids.add(b.policy_id)
    return problems


def _loc(loc: tuple[int | str, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + part
    return out


def _format_validation_error(source: str, exc: ValidationError, raw: dict[str, Any]) -> str:
    lines = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        key = _loc(loc) or "(top level)"
        kind = err["type"]
        if kind == "extra_forbidden":
            lines.append(f"{key}: unknown key; remove it or check its spelling (see docs/CONFIG.md)")
        elif kind == "missing":
            lines.append(f"{key}: required key is missing; add it")
        elif kind in {"literal_error", "enum"}:
            lines.append(f"{key}: {err['msg'].lower()}; got {err.get('input')!r}")
        else:
            msg = err["msg"]
            if msg.startswith("Value error, "):
                msg = msg[len("Value error, ") :]
            lines.append(f"{key}: {msg} (got {_short(err.get('input'))})")
    return f"{source}: invalid configuration:\n  " + "\n  ".join(lines)


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
