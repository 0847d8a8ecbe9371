"""Envelope encryption as pure functions: AAD binding, tamper detection, re-wrap, master key format."""

from __future__ import annotations

import base64
import dataclasses
import secrets
import subprocess
import sys

import pytest

from palyra.vault import crypto
from palyra.vault.crypto import Envelope, aad_for, derive_kek, kek_id, open_, rewrap, seal
from palyra.vault.errors import GENERATE_KEY_COMMAND, InvalidMasterKey, VaultTampered

MASTER = bytes(range(32))
KEK = derive_kek(MASTER)
AAD = aad_for("global", "openai_api_key")


def flip(data: bytes, at: int = 0) -> bytes:
    return data[:at] + bytes([data[at] ^ 0x01]) + data[at + 1 :]


def test_round_trip_and_fresh_randomness() -> None:
    env = seal(KEK, AAD, b"sk-secret")
    assert open_(KEK, AAD, env) == b"sk-secret"
    assert len(env.value_nonce) == len(env.dek_nonce) == 12
    assert len(env.wrapped_dek) == 32 + 16 and len(env.value_ct) == len(b"sk-secret") + 16
    again = seal(KEK, AAD, b"sk-secret")
    assert again.value_ct != env.value_ct and again.wrapped_dek != env.wrapped_dek
    assert b"sk-secret" not in env.value_ct + env.wrapped_dek


def test_kek_derivation_and_id() -> None:
    assert derive_kek(MASTER) == derive_kek(bytes(range(32))) and len(KEK) == 32
    assert derive_kek(MASTER) != derive_kek(bytes(32))
    assert kek_id(MASTER) == kek_id(bytes(range(32))) and len(kek_id(MASTER)) == 16
    assert kek_id(MASTER) != kek_id(bytes(32))
    int(kek_id(MASTER), 16)
    # The id is not the KEK or a prefix of it.
    assert kek_id(MASTER) not in KEK.hex()


def test_aad_binds_scope_and_key() -> None:
    env = seal(KEK, AAD, b"v")
    for other in (aad_for("global", "other"), aad_for("agent:a1", "openai_api_key")):
        with pytest.raises(VaultTampered):
            open_(KEK, other, env)
    assert aad_for("agent:a1", "k") == b"palyra.vault.v1|agent:a1|k"


@pytest.mark.parametrize("field", ["value_nonce", "value_ct", "dek_nonce", "wrapped_dek"])
@pytest.mark.parametrize("at", [0, -1])
def test_any_flipped_byte_is_tampering(field: str, at: int) -> None:
    env = seal(KEK, AAD, b"value")
    data = getattr(env, field)
    changed = dataclasses.replace(env, **{field: flip(data, at % len(data))})
    with pytest.raises(VaultTampered):
        open_(KEK, AAD, changed)


@pytest.mark.parametrize("field", ["value_nonce", "value_ct", "dek_nonce", "wrapped_dek"])
def test_truncated_or_empty_fields_are_tampering(field: str) -> None:
    env = seal(KEK, AAD, b"value")
    for cut in (getattr(env, field)[:-1], b""):
        with pytest.raises(VaultTampered):
            open_(KEK, AAD, dataclasses.replace(env, **{field: cut}))


def test_wrong_kek_fails() -> None:
    env = seal(KEK, AAD, b"value")
    with pytest.raises(VaultTampered):
        open_(derive_kek(bytes(32)), AAD, env)


def test_rewrap_touches_only_the_data_key() -> None:
    env = seal(KEK, AAD, b"value")
    new_kek = derive_kek(bytes(32))
    moved = rewrap(KEK, new_kek, AAD, env)
    assert (moved.value_nonce, moved.value_ct) == (env.value_nonce, env.value_ct)
    assert moved.wrapped_dek != env.wrapped_dek and moved.dek_nonce != env.dek_nonce
    assert open_(new_kek, AAD, moved) == b"value"
    with pytest.raises(VaultTampered):
        open_(KEK, AAD, moved)


def test_rewrap_refuses_a_tampered_value() -> None:
    env = seal(KEK, AAD, b"value")
    with pytest.raises(VaultTampered):
        rewrap(KEK, derive_kek(bytes(32)), AAD, dataclasses.replace(env, value_ct=flip(env.value_ct)))
    with pytest.raises(VaultTampered):
        rewrap(KEK, derive_kek(bytes(32)), aad_for("global", "x"), env)


def test_master_key_format() -> None:
    master = crypto.generate_master_key()
    text = crypto.encode_master_key(master)
    assert len(master) == 32 and len(text) == 43 and "=" not in text
    assert crypto.decode_master_key(text, source="X") == master
    assert crypto.decode_master_key(f"  {text}=\n", source="X") == master  # padding and whitespace ok
    assert crypto.decode_master_key(base64.urlsafe_b64encode(master).decode(), source="X") == master


@pytest.mark.parametrize(
    ("text", "got"),
    [
        (base64.urlsafe_b64encode(bytes(16)).decode(), "22 characters (16 bytes)"),
        (base64.urlsafe_b64encode(bytes(33)).decode(), "44 characters (33 bytes)"),
        ("not a key!", "characters outside the base64url alphabet"),
        ("", "nothing"),
    ],
)
def test_bad_master_key_says_why_and_how_to_fix(text: str, got: str) -> None:
    with pytest.raises(InvalidMasterKey) as exc:
        crypto.decode_master_key(text, source="PALYRA_VAULT_KEY")
    message = str(exc.value)
    assert message.startswith("PALYRA_VAULT_KEY must be 32 random bytes encoded as base64url")
    assert got in message
    assert GENERATE_KEY_COMMAND in message and "palyra vault rotate-key" in message


def test_the_suggested_command_makes_a_valid_key() -> None:
    code = GENERATE_KEY_COMMAND.removeprefix('python -c "').removesuffix('"')
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert len(crypto.decode_master_key(out, source="X")) == 32


def test_envelope_is_a_value() -> None:
    env = Envelope(b"1" * 12, b"c", b"2" * 12, b"w")
    assert env == Envelope(b"1" * 12, b"c", b"2" * 12, b"w")


@pytest.mark.parametrize("info", [b"envelope:kek", b"palyra.vault.kek-id.v1", b""])
def test_the_standard_library_hkdf_matches_cryptography(info: bytes) -> None:
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.kdf.hkdf import HKDF

    for _ in range(20):
        master = secrets.token_bytes(32)
        expected = HKDF(algorithm=hashes.SHA256(), length=32, salt=crypto._KDF_SALT, info=info).derive(master)
        assert crypto._hkdf(master, info) == expected
