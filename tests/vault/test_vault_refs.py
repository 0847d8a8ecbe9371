"""Vault refs, scopes and keys: parsing, canonical form, and the exact error messages."""

from __future__ import annotations

import pytest

from palyra.vault.errors import InvalidRef, VaultError
from palyra.vault.refs import VaultRef, normalize_key, normalize_scope

SHAPE = "vault ref must have shape '<scope>/<key>' (for example 'global/openai_api_key')"
KEY_CHARS = "secret key can only contain lowercase letters, digits, '.', '_' or '-'"


def test_parse_and_canonical_form() -> None:
    ref = VaultRef.parse("global/openai_api_key")
    assert (ref.scope, ref.key) == ("global", "openai_api_key")
    assert str(ref) == "global/openai_api_key"
    assert VaultRef.parse(" GLOBAL/ k.1-x_y ") == VaultRef("global", "k.1-x_y")
    assert str(VaultRef.parse("agent:ops@team.a:b-1/token")) == "agent:ops@team.a:b-1/token"
    assert VaultRef.of("global/a") == VaultRef.of(VaultRef("global", "a"))


def test_split_at_first_slash() -> None:
    with pytest.raises(InvalidRef) as exc:
        VaultRef.parse("global/a/b")
    assert str(exc.value) == KEY_CHARS


@pytest.mark.parametrize("text", ["global", "", "/", "global/", "/key", "  /  "])
def test_shape_error_is_exact(text: str) -> None:
    with pytest.raises(InvalidRef) as exc:
        VaultRef.parse(text)
    assert str(exc.value) == SHAPE
    assert isinstance(exc.value, VaultError)


@pytest.mark.parametrize("key", ["OpenAI", "a b", "ключ", "a/b", "a+b"])
def test_key_characters(key: str) -> None:
    with pytest.raises(InvalidRef) as exc:
        normalize_key(key)
    assert str(exc.value) == KEY_CHARS


def test_key_length_and_emptiness() -> None:
    assert normalize_key("k" * 128) == "k" * 128
    with pytest.raises(InvalidRef, match=r"secret key exceeds max bytes \(129 > 128\)"):
        normalize_key("k" * 129)
    with pytest.raises(InvalidRef, match="secret key cannot be empty"):
        VaultRef("global", "   ")


def test_scopes() -> None:
    assert normalize_scope("Global") == "global"
    assert normalize_scope(" agent:a1 ") == "agent:a1"
    assert normalize_scope("agent:" + "a" * 128) == "agent:" + "a" * 128
    for bad in ("agent:", "agent:" + "a" * 129, "agent:a/b", "agent:a b", "agent:ä"):
        with pytest.raises(InvalidRef, match="agent id in vault scope"):
            normalize_scope(bad)
    for bad in ("principal:x", "skill:y", "Agent:x", "", "globals"):
        with pytest.raises(InvalidRef, match=r"vault scope must be 'global' or 'agent:<id>'"):
            normalize_scope(bad)


def test_refs_are_immutable_and_hashable() -> None:
    ref = VaultRef("global", "a")
    with pytest.raises(AttributeError):
        ref.key = "b"  # type: ignore[misc]
    assert {ref, VaultRef.parse("global/a")} == {ref}
