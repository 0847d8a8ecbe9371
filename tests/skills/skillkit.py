"""Helpers for the skill tests: build and sign packages, open a database with the skill tables."""

from __future__ import annotations

import base64
import io
import tarfile
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from palyra.auth.audit import AuditLog
from palyra.governance.alerts import AlertLog
from palyra.skills import PackageLimits, SkillService, sign_package
from palyra.skills.signing import public_raw_of
from palyra.skills.tables import skill_publishers, skills
from palyra.storage.db import Database, database_url_for
from palyra.storage.schema import metadata

from conftest import PG_URL

MANIFEST = """\
[skill]
id = "{skill_id}"
version = "{version}"
publisher = "{publisher}"
description = "Looks things up"

[capabilities]
network = {network}
filesystem = ["data"]
max_memory_mb = 128
max_runtime_s = 10
env = ["LOOKUP_API_KEY"]
"""


def write_skill(
    folder: Path,
    *,
    skill_id: str = "lookup",
    version: str = "1.0.0",
    publisher: str = "acme",
    network: list[str] | None = None,
    files: dict[str, bytes] | None = None,
) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    hosts = ", ".join(f'"{h}"' for h in (network if network is not None else ["api.example.com"]))
    (folder / "skill.toml").write_text(
        MANIFEST.format(skill_id=skill_id, version=version, publisher=publisher, network=f"[{hosts}]")
    )
    contents = files if files is not None else {"main.py": b"print('hello')\n", "lib/util.py": b"X = 1\n"}
    for rel, data in contents.items():
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(data)
    return folder


def signed_skill(folder: Path, key: Ed25519PrivateKey, **kwargs: Any) -> Path:
    write_skill(folder, **kwargs)
    sign_package(folder, key, kwargs.get("publisher", "acme"), PackageLimits(max_files=5000))
    return folder


def public_b64(key: Ed25519PrivateKey) -> str:
    return base64.b64encode(public_raw_of(key)).decode()


def zip_folder(
    folder: Path, dest: Path, extra: list[tuple[zipfile.ZipInfo | str, bytes]] | None = None
) -> Path:
    with zipfile.ZipFile(dest, "w", zipfile.ZIP_DEFLATED) as zf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                zf.write(path, path.relative_to(folder).as_posix())
        for info, data in extra or []:
            zf.writestr(info, data)
    return dest


def tar_folder(folder: Path, dest: Path, extra: list[tuple[tarfile.TarInfo, bytes]] | None = None) -> Path:
    with tarfile.open(dest, "w:gz") as tf:
        for path in sorted(folder.rglob("*")):
            if path.is_file():
                tf.add(path, path.relative_to(folder).as_posix())
        for info, data in extra or []:
            tf.addfile(info, io.BytesIO(data) if info.isreg() else None)
    return dest


def make_tarinfo(name: str, data: bytes = b"", **attrs: Any) -> tuple[tarfile.TarInfo, bytes]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    for key, value in attrs.items():
        setattr(info, key, value)
    if not info.isreg():
        info.size = 0
    return info, data


@asynccontextmanager
async def skill_db(kind: str, tmp_path: Path, pg_schema: str | None = None) -> AsyncIterator[Database]:
    if kind == "sqlite":
        db = Database(database_url_for("", tmp_path))
    else:
        db = Database(database_url_for(PG_URL, tmp_path), schema=pg_schema or "")
    await db.start()
    # Migration 0007 creates these in a deployed database; create_all is a no-op once it has.
    async with db.engine.begin() as conn:
        await conn.run_sync(metadata.create_all, tables=[skills, skill_publishers])
    try:
        yield db
    finally:
        await db.close()


def make_service(db: Database, root: Path, **kwargs: Any) -> tuple[SkillService, AuditLog, AlertLog]:
    audit, alerts = AuditLog(db), AlertLog(db)
    return SkillService(db, root, audit, alerts, **kwargs), audit, alerts
