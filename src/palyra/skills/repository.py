"""Skill records and trusted publisher keys in the database."""

from __future__ import annotations

import base64
import builtins
from dataclasses import dataclass
from typing import Any

import orjson
from sqlalchemy import and_, delete, insert, select, update
from sqlalchemy.exc import IntegrityError

from palyra.skills.errors import SkillConflict
from palyra.skills.tables import skill_publishers, skills
from palyra.storage.db import Database

ACTIVE = "active"
QUARANTINED = "quarantined"


@dataclass(frozen=True, slots=True)
class SkillRecord:
    skill_id: str
    version: str
    publisher: str
    key_id: str
    description: str
    capabilities: dict[str, Any]
    path: str
    files: dict[str, str]
    size_bytes: int
    installed_at: float
    status: str
    quarantine_reasons: list[str]
    quarantined_at: float | None
    last_audit_at: float | None
    current: bool

    @property
    def ref(self) -> str:
        return f"{self.skill_id}@{self.version}"

    def public(self, *, with_files: bool = False) -> dict[str, Any]:
        view: dict[str, Any] = {
            "skill_id": self.skill_id,
            "version": self.version,
            "publisher": self.publisher,
            "key_id": self.key_id,
            "description": self.description,
            "capabilities": self.capabilities,
            "path": self.path,
            "file_count": len(self.files),
            "size_bytes": self.size_bytes,
            "installed_at": self.installed_at,
            "status": self.status,
            "quarantine_reasons": self.quarantine_reasons,
            "quarantined_at": self.quarantined_at,
            "last_audit_at": self.last_audit_at,
            "current": self.current,
        }
        if with_files:
            view["files"] = dict(sorted(self.files.items()))
        return view


@dataclass(frozen=True, slots=True)
class PublisherKey:
    publisher: str
    key_id: str
    public_key: str  # base64 of the raw 32 bytes
    added_at: float

    def public(self) -> dict[str, Any]:
        return {
            "publisher": self.publisher,
            "key_id": self.key_id,
            "public_key": self.public_key,
            "added_at": self.added_at,
        }


def _record(row: Any) -> SkillRecord:
    m = row._mapping
    return SkillRecord(
        skill_id=m["skill_id"],
        version=m["version"],
        publisher=m["publisher"],
        key_id=m["key_id"],
        description=m["description"],
        capabilities=orjson.loads(m["capabilities"]),
        path=m["path"],
        files=orjson.loads(m["files"]),
        size_bytes=m["size_bytes"],
        installed_at=m["installed_at"],
        status=m["status"],
        quarantine_reasons=orjson.loads(m["quarantine_reasons"]) if m["quarantine_reasons"] else [],
        quarantined_at=m["quarantined_at"],
        last_audit_at=m["last_audit_at"],
        current=bool(m["current"]),
    )


class SkillRepository:
    def __init__(self, db: Database) -> None:
        self._db = db

    async def get(self, skill_id: str, version: str | None = None) -> SkillRecord | None:
        """The given version, or the current one when ``version`` is None."""
        query = select(skills).where(skills.c.skill_id == skill_id)
        query = query.where(skills.c.version == version if version else skills.c.current.is_(True))
        async with self._db.engine.connect() as conn:
            row = (await conn.execute(query)).first()
        return _record(row) if row is not None else None

    async def list(
        self, *, current_only: bool = False, skill_id: str | None = None
    ) -> builtins.list[SkillRecord]:
        query = select(skills).order_by(skills.c.skill_id, skills.c.installed_at.desc())
        if current_only:
            query = query.where(skills.c.current.is_(True))
        if skill_id is not None:
            query = query.where(skills.c.skill_id == skill_id)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [_record(r) for r in rows]

    async def install(self, record: SkillRecord, *, replace: bool) -> None:
        """Insert ``record`` as the current version; ``replace`` drops an existing row of that version."""
        key = and_(skills.c.skill_id == record.skill_id, skills.c.version == record.version)
        try:
            async with self._db.engine.begin() as conn:
                if replace:
                    await conn.execute(delete(skills).where(key))
                await conn.execute(
                    update(skills).where(skills.c.skill_id == record.skill_id).values(current=False)
                )
                await conn.execute(
                    insert(skills).values(
                        skill_id=record.skill_id,
                        version=record.version,
                        publisher=record.publisher,
                        key_id=record.key_id,
                        description=record.description,
                        capabilities=orjson.dumps(record.capabilities).decode(),
                        path=record.path,
                        files=orjson.dumps(record.files, option=orjson.OPT_SORT_KEYS).decode(),
                        size_bytes=record.size_bytes,
                        installed_at=record.installed_at,
                        status=record.status,
                        quarantine_reasons=None,
                        quarantined_at=None,
                        last_audit_at=record.installed_at,
                        current=True,
                    )
                )
        except IntegrityError:
            raise SkillConflict(
                f"skill {record.ref} is already installed; pass --force to replace it"
            ) from None

    async def quarantine(self, skill_id: str, version: str, reasons: builtins.list[str], at: float) -> bool:
        """Quarantine an active version. False when it already was: only one caller reports it."""
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(skills)
                .where(
                    skills.c.skill_id == skill_id,
                    skills.c.version == version,
                    skills.c.status == ACTIVE,
                )
                .values(
                    status=QUARANTINED,
                    quarantine_reasons=orjson.dumps(reasons).decode(),
                    quarantined_at=at,
                    last_audit_at=at,
                )
            )
        return bool(result.rowcount)

    async def release(self, skill_id: str, version: str, at: float) -> bool:
        async with self._db.engine.begin() as conn:
            result = await conn.execute(
                update(skills)
                .where(
                    skills.c.skill_id == skill_id,
                    skills.c.version == version,
                    skills.c.status == QUARANTINED,
                )
                .values(status=ACTIVE, quarantine_reasons=None, quarantined_at=None, last_audit_at=at)
            )
        return bool(result.rowcount)

    async def mark_audited(self, skill_id: str, version: str, at: float) -> None:
        async with self._db.engine.begin() as conn:
            await conn.execute(
                update(skills)
                .where(skills.c.skill_id == skill_id, skills.c.version == version)
                .values(last_audit_at=at)
            )


class TrustStore:
    """Publisher keys trusted to sign skills."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def add(
        self, publisher: str, key_id: str, public_raw: bytes, at: float
    ) -> tuple[PublisherKey, bool]:
        """Trust a key; returns (key, added). Adding a key that is already trusted changes nothing."""
        encoded = base64.b64encode(public_raw).decode()
        for existing in await self.list(publisher):
            if existing.key_id == key_id:
                return existing, False
        try:
            async with self._db.engine.begin() as conn:
                await conn.execute(
                    insert(skill_publishers).values(
                        publisher=publisher, key_id=key_id, public_key=encoded, added_at=at
                    )
                )
        except IntegrityError:  # a concurrent add of the same key
            return PublisherKey(publisher, key_id, encoded, at), False
        return PublisherKey(publisher, key_id, encoded, at), True

    async def list(self, publisher: str | None = None) -> builtins.list[PublisherKey]:
        query = select(skill_publishers).order_by(skill_publishers.c.publisher, skill_publishers.c.added_at)
        if publisher is not None:
            query = query.where(skill_publishers.c.publisher == publisher)
        async with self._db.engine.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [PublisherKey(r.publisher, r.key_id, r.public_key, r.added_at) for r in rows]

    async def remove(self, publisher: str, key_id: str | None = None) -> int:
        query = delete(skill_publishers).where(skill_publishers.c.publisher == publisher)
        if key_id is not None:
            query = query.where(skill_publishers.c.key_id == key_id)
        async with self._db.engine.begin() as conn:
            result = await conn.execute(query)
        return int(result.rowcount or 0)

    async def keys(self) -> dict[tuple[str, str], bytes]:
        return {(k.publisher, k.key_id): base64.b64decode(k.public_key) for k in await self.list()}
