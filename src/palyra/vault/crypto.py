"""Envelope encryption, pure functions: no I/O, no clock, no database.

Each secret gets a fresh random data key (DEK). The value is sealed with the DEK; the DEK is sealed with
the key encryption key (KEK) derived from the master key. Both seals are AES-256-GCM and authenticate
the same associated data, ``palyra.vault.v1|<scope>|<key>``, so a ciphertext copied to another scope
or key fails to open instead of decrypting under the wrong name. Rotating the master key re-seals only
the DEKs; value ciphertexts never change.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from typing import TYPE_CHECKING

from palyra.vault.errors import GENERATE_KEY_COMMAND, InvalidMasterKey, VaultTampered

MASTER_KEY_BYTES = 32
DEK_BYTES = 32
NONCE_BYTES = 12
_KDF_SALT = b"palyra.vault.kek.v1"
_KEK_INFO = b"envelope:kek"
_KEK_ID_INFO = b"palyra.vault.kek-id.v1"
_BASE64URL = re.compile(r"[A-Za-z0-9_-]+=*")


@dataclass(frozen=True, slots=True)
class Envelope:
    """What is stored for one secret (besides its name). GCM tags are appended to the ciphertexts."""

    value_nonce: bytes
    value_ct: bytes
    dek_nonce: bytes
    wrapped_dek: bytes


if TYPE_CHECKING:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM


def _aesgcm(key: bytes) -> AESGCM:
    # cryptography (~7 MB resident) is loaded when a secret is first sealed or opened, not at start:
    # a gateway whose providers read their keys from the environment never needs it.
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    return AESGCM(key)


def _hkdf(master: bytes, info: bytes) -> bytes:
    """HKDF-SHA256 (RFC 5869) with a 32-byte output, which is the first expand block alone. The
    standard library's HMAC gives the same bytes as ``cryptography``'s HKDF (a test holds them equal)
    without loading it for the key fingerprint every start computes."""
    prk = hmac.digest(_KDF_SALT, master, "sha256")
    return hmac.digest(prk, info + b"\x01", "sha256")


def derive_kek(master: bytes) -> bytes:
    return _hkdf(master, _KEK_INFO)


def kek_id(master: bytes) -> str:
    """A public fingerprint of the master key, stored beside each secret to name the key it needs."""
    return hashlib.sha256(_hkdf(master, _KEK_ID_INFO)).hexdigest()[:16]


def aad_for(scope: str, key: str) -> bytes:
    return f"palyra.vault.v1|{scope}|{key}".encode()


def seal(kek: bytes, aad: bytes, plaintext: bytes) -> Envelope:
    dek = secrets.token_bytes(DEK_BYTES)
    value_nonce = secrets.token_bytes(NONCE_BYTES)
    dek_nonce = secrets.token_bytes(NONCE_BYTES)
    return Envelope(
        value_nonce=value_nonce,
        value_ct=_aesgcm(dek).encrypt(value_nonce, plaintext, aad),
        dek_nonce=dek_nonce,
        wrapped_dek=_aesgcm(kek).encrypt(dek_nonce, dek, aad),
    )


def _unwrap_dek(kek: bytes, aad: bytes, env: Envelope) -> bytes:
    dek = _decrypt(kek, env.dek_nonce, env.wrapped_dek, aad)
    if len(dek) != DEK_BYTES:
        raise VaultTampered("data key has the wrong length")
    return dek


def _decrypt(key: bytes, nonce: bytes, ciphertext: bytes, aad: bytes) -> bytes:
    if len(nonce) != NONCE_BYTES:
        raise VaultTampered("nonce has the wrong length")
    from cryptography.exceptions import InvalidTag

    try:
        return _aesgcm(key).decrypt(nonce, ciphertext, aad)
    except InvalidTag:
        raise VaultTampered("ciphertext failed authentication") from None


def open_(kek: bytes, aad: bytes, env: Envelope) -> bytes:
    """The plaintext, or VaultTampered when any part of the envelope or its name was changed."""
    return _decrypt(_unwrap_dek(kek, aad, env), env.value_nonce, env.value_ct, aad)


def rewrap(old_kek: bytes, new_kek: bytes, aad: bytes, env: Envelope) -> Envelope:
    """The same envelope with its DEK sealed under ``new_kek``. The value is neither decrypted nor
    re-encrypted; the value ciphertext is authenticated first, so a tampered row is never re-blessed."""
    dek = _unwrap_dek(old_kek, aad, env)
    _decrypt(dek, env.value_nonce, env.value_ct, aad)
    dek_nonce = secrets.token_bytes(NONCE_BYTES)
    return Envelope(
        value_nonce=env.value_nonce,
        value_ct=env.value_ct,
        dek_nonce=dek_nonce,
        wrapped_dek=_aesgcm(new_kek).encrypt(dek_nonce, dek, aad),
    )


def generate_master_key() -> bytes:
    return secrets.token_bytes(MASTER_KEY_BYTES)


def encode_master_key(master: bytes) -> str:
    """32 bytes as base64url without padding: 43 characters."""
    return base64.urlsafe_b64encode(master).rstrip(b"=").decode("ascii")


def decode_master_key(text: str, *, source: str) -> bytes:
    """Decode a master key; ``source`` names where it came from in the error message."""
    raw = text.strip()
    try:
        master = base64.urlsafe_b64decode(raw + "=" * (-len(raw) % 4))
    except (binascii.Error, ValueError):
        master = b""
    if len(master) == MASTER_KEY_BYTES and encode_master_key(master) == raw.rstrip("="):
        return master
    if not raw:
        got = "nothing"
    elif not _BASE64URL.fullmatch(raw):
        got = "characters outside the base64url alphabet"
    else:
        chars = len(raw.rstrip("="))
        got = f"{chars} characters ({len(master)} bytes)" if master else f"{chars} characters"
    raise InvalidMasterKey(
        f"{source} must be {MASTER_KEY_BYTES} random bytes encoded as base64url without padding "
        f"(43 characters), but it holds {got}; generate a key with {GENERATE_KEY_COMMAND} "
        "(to move an existing vault to a new key, use `palyra vault rotate-key`)"
    )
