"""Package signatures: ``signature.json``, its canonical payload, ed25519 keys, and signing a folder."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from palyra.skills.manifest import MANIFEST_FILE, PUBLISHER_ID, ManifestError, parse_manifest
from palyra.skills.package import PackageLimits, scan_tree, sha256_file

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

# cryptography (~7 MB resident) is imported by the functions that sign or verify, so a daemon with no
# skills to check does not load it at start.

SIGNATURE_FILE = "signature.json"
ALGORITHM = "ed25519"
MAX_SIGNATURE_BYTES = 2 * 1024 * 1024
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_KEY_ID = re.compile(r"^[0-9a-f]{16}$")


class SignatureFormatError(ValueError):
    """``signature.json`` is not in the expected shape."""


class KeyFormatError(ValueError):
    """A key is neither PEM nor base64 of raw ed25519 bytes."""


@dataclass(frozen=True, slots=True)
class PackageSignature:
    publisher: str
    key_id: str
    files: dict[str, str]
    signature: bytes

    @property
    def manifest_sha256(self) -> str:
        return self.files.get(MANIFEST_FILE, "")

    def to_json(self) -> dict[str, Any]:
        return {
            "publisher": self.publisher,
            "key_id": self.key_id,
            "algorithm": ALGORITHM,
            "files": dict(sorted(self.files.items())),
            "signature": base64.b64encode(self.signature).decode(),
        }


def canonical_payload(files: Mapping[str, str]) -> bytes:
    """What is signed: the manifest's hash and every file's hash, as sorted compact ASCII JSON."""
    body = {"manifest_sha256": files.get(MANIFEST_FILE, ""), "files": dict(sorted(files.items()))}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def key_id_of(public_raw: bytes) -> str:
    return hashlib.sha256(public_raw).hexdigest()[:16]


def parse_signature(data: bytes) -> PackageSignature:
    if len(data) > MAX_SIGNATURE_BYTES:
        raise SignatureFormatError(f"{SIGNATURE_FILE} is larger than {MAX_SIGNATURE_BYTES} bytes")
    try:
        raw = json.loads(data)
    except (UnicodeDecodeError, ValueError):
        raise SignatureFormatError(f"{SIGNATURE_FILE} is not JSON") from None
    if not isinstance(raw, dict):
        raise SignatureFormatError(f"{SIGNATURE_FILE} must be a JSON object")
    if raw.get("algorithm") != ALGORITHM:
        raise SignatureFormatError(f"{SIGNATURE_FILE}: algorithm must be {ALGORITHM!r}")
    publisher, key_id, files, signature = (raw.get(k) for k in ("publisher", "key_id", "files", "signature"))
    if not isinstance(publisher, str) or not PUBLISHER_ID.match(publisher):
        raise SignatureFormatError(f"{SIGNATURE_FILE}: publisher must be a publisher id")
    if not isinstance(key_id, str) or not _KEY_ID.match(key_id):
        raise SignatureFormatError(f"{SIGNATURE_FILE}: key_id must be 16 lowercase hex characters")
    if not isinstance(files, dict) or not all(
        isinstance(k, str) and isinstance(v, str) and _HEX64.match(v) for k, v in files.items()
    ):
        raise SignatureFormatError(f"{SIGNATURE_FILE}: files must map paths to sha256 hex digests")
    try:
        sig = base64.b64decode(signature if isinstance(signature, str) else "", validate=True)
    except binascii.Error:
        sig = b""
    if len(sig) != 64:
        raise SignatureFormatError(f"{SIGNATURE_FILE}: signature must be a base64 ed25519 signature")
    return PackageSignature(publisher=publisher, key_id=key_id, files=dict(files), signature=sig)


def signature_valid(sig: PackageSignature, public_raw: bytes) -> bool:
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    try:
        Ed25519PublicKey.from_public_bytes(public_raw).verify(sig.signature, canonical_payload(sig.files))
    except (InvalidSignature, ValueError):
        return False
    return True


def load_public_key(text: str | bytes) -> bytes:
    """Raw 32 public-key bytes from a PEM public key or base64 of the raw key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    data = text.encode() if isinstance(text, str) else text
    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_public_key(data)
        except ValueError:
            raise KeyFormatError("the PEM block is not a public key") from None
        if not isinstance(key, Ed25519PublicKey):
            raise KeyFormatError("the key is not an ed25519 key")
        return key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    raw = _b64(data)
    if raw is None or len(raw) != 32:
        raise KeyFormatError("expected a PEM public key or base64 of the 32-byte ed25519 public key")
    try:
        Ed25519PublicKey.from_public_bytes(raw)
    except ValueError:
        raise KeyFormatError("not a valid ed25519 public key") from None
    return raw


def load_private_key(data: bytes) -> Ed25519PrivateKey:
    """A PEM (PKCS#8, unencrypted) private key or base64 of the raw 32-byte seed."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    data = data.strip()
    if data.startswith(b"-----BEGIN"):
        try:
            key = serialization.load_pem_private_key(data, password=None)
        except (ValueError, TypeError):
            raise KeyFormatError("the PEM block is not an unencrypted private key") from None
        if not isinstance(key, Ed25519PrivateKey):
            raise KeyFormatError("the key is not an ed25519 key")
        return key
    raw = _b64(data)
    if raw is None or len(raw) != 32:
        raise KeyFormatError("expected a PEM private key or base64 of the 32-byte ed25519 seed")
    return Ed25519PrivateKey.from_private_bytes(raw)


def public_raw_of(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def private_pem(private_key: Ed25519PrivateKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

    return private_key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def public_pem(public_raw: bytes) -> bytes:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    return Ed25519PublicKey.from_public_bytes(public_raw).public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )


def sign_package(
    folder: Path, private_key: Ed25519PrivateKey, publisher: str, limits: PackageLimits | None = None
) -> PackageSignature:
    """Hash every file of ``folder`` (but ``signature.json``), sign, and write ``signature.json``.

    Only the manifest's shape is checked here, not the capability policy: the installer decides that.
    """
    files = scan_tree(folder, limits or PackageLimits())
    files.pop(SIGNATURE_FILE, None)
    if MANIFEST_FILE not in files:
        raise ManifestError(f"{folder} has no {MANIFEST_FILE}")
    manifest = parse_manifest(files[MANIFEST_FILE].read_bytes())
    if manifest.publisher != publisher:
        raise ManifestError(f"{MANIFEST_FILE} names publisher {manifest.publisher!r}, not {publisher!r}")
    hashes = {rel: sha256_file(path) for rel, path in files.items()}
    sig = PackageSignature(
        publisher=publisher,
        key_id=key_id_of(public_raw_of(private_key)),
        files=hashes,
        signature=private_key.sign(canonical_payload(hashes)),
    )
    (folder / SIGNATURE_FILE).write_text(json.dumps(sig.to_json(), indent=2) + "\n", encoding="utf-8")
    return sig


def _b64(data: bytes) -> bytes | None:
    text = data.replace(b"-", b"+").replace(b"_", b"/")
    text += b"=" * (-len(text) % 4)
    try:
        return base64.b64decode(text, validate=True)
    except binascii.Error:
        return None
