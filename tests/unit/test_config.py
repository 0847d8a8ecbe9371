"""Configuration: the embedded default, env overrides, and errors that name the key and the fix."""

from __future__ import annotations

from pathlib import Path

import pytest

from palyra.config import load_config
from palyra.errors import ConfigError


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "palyra.toml"
    path.write_text(text)
    return path


def test_embedded_default() -> None:
    cfg = load_config(None, environ={})
    assert cfg.server.host == "127.0.0.1" and cfg.server.port == 8080
    mp = cfg.model_provider
    assert [p.kind for p in mp.providers] == ["deterministic"]
    assert {m.model_id: m.role for m in mp.models} == {
        "deterministic": "chat",
        "hash-embedding-v1": "embeddings",
        "deterministic-transcribe": "audio_transcription",
    }
    assert mp.default_chat_model_id == "deterministic"


def test_config_is_immutable() -> None:
    cfg = load_config(None, environ={})
    with pytest.raises(Exception, match="frozen"):
        cfg.server.port = 1  # type: ignore[misc]


def test_env_overrides_file(tmp_path: Path) -> None:
    path = write(tmp_path, '[server]\nport = 9000\n[routing]\nmode = "off"\n')
    cfg = load_config(
        path,
        environ={
            "PALYRA_PORT": "9100",
            "PALYRA_ROUTING_MODE": "enforced",
            "PALYRA_DATABASE_URL": "postgresql://u@h/db",
        },
    )
    assert cfg.server.port == 9100 and cfg.routing.mode == "enforced"
    assert cfg.server.database_url == "postgresql://u@h/db"


def test_palyra_config_env_names_the_file(tmp_path: Path) -> None:
    path = write(tmp_path, "[server]\nport = 9001\n")
    assert load_config(None, environ={"PALYRA_CONFIG": str(path)}).server.port == 9001


def test_interface_example_without_its_models_names_the_dangling_defaults(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "INTERFACE.md").read_text()
    example = text.split("```toml", 1)[1].split("```", 1)[0]
    with pytest.raises(ConfigError, match="default_embeddings_model_id: no model 'text-embedding-3-small'"):
        load_config(write(tmp_path, example), environ={})


def test_interface_example_validates(tmp_path: Path) -> None:
    text = (Path(__file__).resolve().parents[2].parent / "shared" / "spec" / "INTERFACE.md").read_text()
    example = text.split("```toml", 1)[1].split("```", 1)[0]
    # The example names default embeddings and audio models it does not define; with them defined,
    # the documented shape loads as written.
    example += (
        '\n[[model_provider.models]]\nmodel_id = "text-embedding-3-small"\nprovider_id = "openai"\n'
        'role = "embeddings"\n\n[[model_provider.models]]\nmodel_id = "whisper-1"\nprovider_id = "openai"\n'
        'role = "audio_transcription"\n'
    )
    cfg = load_config(write(tmp_path, example), environ={})
    assert cfg.model_provider.default_chat_model_id == "gpt-4o-mini"
    assert cfg.budgets[0].hard_limit == 100.0 and cfg.pricing[0].model_id == "gpt-4o-mini"
    assert cfg.model_provider.providers[0].circuit_breaker.failure_threshold == 3


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("[server]\nprot = 1\n", ["server.prot", "unknown key"]),
        ('[server]\nport = "eighty"\n', ["server.port", "integer"]),
        ("[server]\nport = 70000\n", ["server.port"]),
        ('[routing]\nmode = "sometimes"\n', ["routing.mode", "sometimes"]),
        ("[model_provider]\nfoo = 1\n", ["model_provider.foo", "unknown key"]),
        (
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "deterministic"\n'
            '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "b"\n',
            ["model_provider.models[0].provider_id", "no provider 'b'", "known: a"],
        ),
        (
            '[model_provider]\ndefault_chat_model_id = "ghost"\n'
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "deterministic"\n'
            '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "a"\n',
            ["model_provider.default_chat_model_id", "no model 'ghost'"],
        ),
        (
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "deterministic"\n'
            '[[model_provider.models]]\nmodel_id = "m"\nprovider_id = "a"\nfallback_model_ids = ["x"]\n',
            ["model_provider.models[0].fallback_model_ids[0]", "no model 'x'"],
        ),
        (
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "openai_compatible"\n'
            'base_url = "https://x/v1"\napi_key_env = "sk-abc123"\n',
            ["api_key_env", "NAME of an environment variable"],
        ),
        (
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "openai_compatible"\n',
            ["model_provider.providers[0].base_url", "required"],
        ),
        (
            '[[model_provider.providers]]\nprovider_id = "a"\nkind = "carrier-pigeon"\n',
            ["model_provider.providers[0].kind"],
        ),
        (
            '[[budgets]]\npolicy_id = "p"\nscope = "team:x"\nhard_limit = 1\n',
            ["budgets[0].scope", "agent:<id>"],
        ),
        ('[[budgets]]\npolicy_id = "p"\nsoft_limit = 5\nhard_limit = 1\n', ["budgets[0]", "soft_limit"]),
        ("not toml at all = = =", ["not valid TOML"]),
    ],
)
def test_errors_name_the_key(tmp_path: Path, text: str, expected: list[str]) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(write(tmp_path, text), environ={})
    for fragment in expected:
        assert fragment in str(info.value), (fragment, str(info.value))


def test_missing_file_says_how_to_fix(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="palyra init"):
        load_config(tmp_path / "absent.toml", environ={})


def test_first_model_of_a_role_is_the_default(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        '[[model_provider.providers]]\nprovider_id = "a"\nkind = "deterministic"\n'
        '[[model_provider.models]]\nmodel_id = "e"\nprovider_id = "a"\nrole = "embeddings"\n'
        '[[model_provider.models]]\nmodel_id = "c"\nprovider_id = "a"\n',
    )
    mp = load_config(path, environ={}).model_provider
    assert mp.default_chat_model_id == "c" and mp.default_embeddings_model_id == "e"
    assert mp.default_audio_transcription_model_id is None
