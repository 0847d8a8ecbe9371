"""Pure pieces: entry names, archive bombs, the manifest and its policy, the signed payload, keys."""

from __future__ import annotations

import base64
import io
import json
import struct
import tarfile
import zipfile
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from skillkit import MANIFEST

from palyra.skills import (
    ManifestError,
    PackageLimits,
    SkillPolicy,
    UnsafePackage,
    canonical_payload,
    load_private_key,
    load_public_key,
    parse_manifest,
)
from palyra.skills.manifest import policy_findings
from palyra.skills.package import safe_relpath, stage_package
from palyra.skills.signing import (
    SignatureFormatError,
    key_id_of,
    parse_signature,
    private_pem,
    public_pem,
    public_raw_of,
)

LIMITS = PackageLimits()


@pytest.mark.parametrize(
    ("name", "normal"),
    [("main.py", "main.py"), ("./lib//util.py", "lib/util.py"), ("a/./b", "a/b"), ("dir/", "dir")],
)
def test_safe_relpath_normalises(name: str, normal: str) -> None:
    assert safe_relpath(name, LIMITS) == normal


@pytest.mark.parametrize(
    "name",
    ["", "/abs", "../x", "a/../../x", "a/..", "..", "C:evil", "a\\b", "a\x00b", "a\nb", ".", "./", "x" * 600],
)
def test_safe_relpath_refuses(name: str) -> None:
    with pytest.raises(UnsafePackage) as info:
        safe_relpath(name, LIMITS)
    assert info.value.code == "unsafe_path"


def test_safe_relpath_refuses_deep_nesting() -> None:
    with pytest.raises(UnsafePackage, match="nested deeper"):
        safe_relpath("/".join(["d"] * 17) + "/f", LIMITS)


def test_zip_bomb_ratio_is_refused_before_reading(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("zeros.bin", b"\0" * (4 * 1024 * 1024))
    with pytest.raises(UnsafePackage, match="expands more than 100x"):
        stage_package(archive, tmp_path / "out", LIMITS)
    assert list((tmp_path / "out").iterdir()) == []


def test_tar_gz_bomb_is_refused(tmp_path: Path) -> None:
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("zeros.bin")
        info.size = 4 * 1024 * 1024
        tf.addfile(info, io.BytesIO(b"\0" * info.size))
    with pytest.raises(UnsafePackage, match="expands more than 100x"):
        stage_package(archive, tmp_path / "out", LIMITS)


def test_tar_declared_size_over_limit_is_refused_before_reading(tmp_path: Path) -> None:
    archive = tmp_path / "huge.tar.gz"
    with tarfile.open(archive, "w:gz") as tf:
        info = tarfile.TarInfo("big.bin")
        info.size = 9 * 1024 * 1024
        tf.addfile(info, io.BytesIO(b"a" * info.size))
    with pytest.raises(UnsafePackage, match=r"big\.bin is larger than 8388608 bytes"):
        stage_package(archive, tmp_path / "out", LIMITS)


def test_zip_that_lies_about_its_size_is_refused(tmp_path: Path) -> None:
    """The central directory claims 5 bytes; the stream holds more. Never trust the header."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr("a.txt", b"0123456789")
    data = bytearray(buf.getvalue())
    central = data.rfind(b"PK\x01\x02")
    struct.pack_into("<I", data, central + 24, 5)  # uncompressed size in the central directory
    archive = tmp_path / "liar.zip"
    archive.write_bytes(bytes(data))
    with pytest.raises(UnsafePackage) as info:
        stage_package(archive, tmp_path / "out", LIMITS)
    assert info.value.code == "corrupt_archive"


def test_total_limit_counts_real_bytes_in_tar(tmp_path: Path) -> None:
    archive = tmp_path / "many.tar"
    with tarfile.open(archive, "w") as tf:
        for i in range(4):
            info = tarfile.TarInfo(f"f{i}")
            info.size = 1000
            tf.addfile(info, io.BytesIO(bytes(range(256)) * 3 + b"x" * 232))
    with pytest.raises(UnsafePackage, match="files total more than 3000 bytes"):
        stage_package(archive, tmp_path / "out", PackageLimits(max_total_bytes=3000))


def manifest(**overrides: str) -> bytes:
    values = {"skill_id": "lookup", "version": "1.0.0", "publisher": "acme", "network": '["api.example.com"]'}
    return MANIFEST.format(**{**values, **overrides}).encode()


def test_manifest_parses() -> None:
    m = parse_manifest(manifest())
    assert (m.skill_id, m.version, m.publisher) == ("lookup", "1.0.0", "acme")
    assert m.capabilities.as_dict() == {
        "network": ["api.example.com"],
        "filesystem": ["data"],
        "max_memory_mb": 128,
        "max_runtime_s": 10,
        "env": ["LOOKUP_API_KEY"],
    }
    assert policy_findings(m, SkillPolicy()) == []


@pytest.mark.parametrize(
    ("data", "match"),
    [
        (manifest(skill_id="Bad Id"), "skill.id"),
        (manifest(skill_id="trust"), "reserved"),
        (manifest(version="latest"), "skill.version"),
        (manifest(version="1.0.0/../../x"), "skill.version"),
        (manifest(publisher="ACME"), "skill.publisher"),
        (manifest(network='"api.example.com"'), "capabilities.network must be a list"),
        (manifest() + b"\n[hooks]\npre = 'x'\n", "unknown table"),
        (manifest().replace(b"max_memory_mb = 128", b"max_memory_mb = true"), "max_memory_mb"),
        (manifest().replace(b"description =", b"author = 'x'\ndescription ="), "skill.author"),
        (b"not toml [", "not valid"),
    ],
)
def test_manifest_errors(data: bytes, match: str) -> None:
    with pytest.raises(ManifestError, match=match):
        parse_manifest(data)


@pytest.mark.parametrize(
    ("network", "ok"),
    [
        ('["api.example.com", "*.example.com", "localhost"]', True),
        ('["*"]', False),
        ('["*.*"]', False),
        ('["*.com"]', False),
        ('["https://api.example.com"]', False),
        ('["api.example.com:443"]', False),
        ('["API.example.com"]', False),
    ],
)
def test_network_policy(network: str, ok: bool) -> None:
    assert (policy_findings(parse_manifest(manifest(network=network)), SkillPolicy()) == []) is ok


def test_policy_limits_and_filesystem() -> None:
    text = manifest().replace(b"max_memory_mb = 128", b"max_memory_mb = 999999")
    text = text.replace(b'filesystem = ["data"]', b'filesystem = ["/etc", "../up", "ok/sub"]')
    found = policy_findings(parse_manifest(text), SkillPolicy())
    assert found == [
        "capabilities.filesystem '/etc' must be a relative path",
        "capabilities.filesystem '../up' must stay inside the skill's sandbox (no '..')",
        "capabilities.max_memory_mb = 999999 is outside 1..4096",
    ]


def test_canonical_payload_is_stable() -> None:
    files = {"main.py": "b" * 64, "skill.toml": "a" * 64}
    payload = canonical_payload(dict(reversed(files.items())))
    assert payload == canonical_payload(files)
    assert json.loads(payload) == {"manifest_sha256": "a" * 64, "files": files}
    assert b" " not in payload


def test_keys_round_trip_pem_and_base64() -> None:
    key = Ed25519PrivateKey.generate()
    raw = public_raw_of(key)
    assert load_public_key(public_pem(raw)) == raw
    assert load_public_key(base64.b64encode(raw).decode()) == raw
    assert load_public_key(base64.urlsafe_b64encode(raw).decode().rstrip("=")) == raw
    seed = key.private_bytes_raw()
    assert public_raw_of(load_private_key(private_pem(key))) == raw
    assert public_raw_of(load_private_key(base64.b64encode(seed))) == raw
    assert len(key_id_of(raw)) == 16
    for bad in ("", "abc", base64.b64encode(b"x" * 31).decode(), "-----BEGIN PUBLIC KEY-----\nAAAA\n"):
        with pytest.raises(ValueError):
            load_public_key(bad)


@pytest.mark.parametrize(
    "doc",
    [
        {},
        {"algorithm": "rsa"},
        {"algorithm": "ed25519", "publisher": "acme", "key_id": "xyz", "files": {}, "signature": ""},
        {
            "algorithm": "ed25519",
            "publisher": "acme",
            "key_id": "0" * 16,
            "files": {"a": "not-a-hash"},
            "signature": base64.b64encode(b"s" * 64).decode(),
        },
        {
            "algorithm": "ed25519",
            "publisher": "acme",
            "key_id": "0" * 16,
            "files": {},
            "signature": "short",
        },
    ],
)
def test_signature_file_shape(doc: dict[str, object]) -> None:
    with pytest.raises(SignatureFormatError):
        parse_signature(json.dumps(doc).encode())
