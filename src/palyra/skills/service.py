"""The skill service: install verified packages, re-audit what is on disk, quarantine, serve artifacts.

Installed skills live in ``<root>/<skill_id>/<version>/`` (root is ``<state_dir>/skills``); the
database holds the verified file hashes, status and trust store. File work runs in a thread.
"""

from __future__ import annotations

import asyncio
import builtins
import hashlib
import io
import os
import secrets
import shutil
import stat
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from palyra.auth.audit import AuditLog
from palyra.errors import InvalidRequest, NotFound
from palyra.governance.alerts import AlertLog
from palyra.skills.errors import SkillConflict, SkillNotFound, SkillQuarantined, SkillRejected
from palyra.skills.manifest import MANIFEST_FILE, PUBLISHER_ID, SkillPolicy
from palyra.skills.package import PackageLimits, UnsafePackage, stage_package
from palyra.skills.repository import (
    ACTIVE,
    QUARANTINED,
    PublisherKey,
    SkillRecord,
    SkillRepository,
    TrustStore,
)
from palyra.skills.signing import (
    MAX_SIGNATURE_BYTES,
    SIGNATURE_FILE,
    KeyFormatError,
    key_id_of,
    load_public_key,
)
from palyra.skills.verify import Finding, TrustedKeys, VerifiedPackage, verify_tree
from palyra.storage.db import Database

ALERT_KIND = "skill_quarantined"
_STAGING = ".staging"
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)


@dataclass(frozen=True, slots=True)
class AuditResult:
    skill_id: str
    version: str
    ok: bool
    reasons: list[str]
    status: str
    # passed | quarantined (by this audit) | already_quarantined (skipped: a quarantine is never lifted here)
    action: str

    def public(self) -> dict[str, Any]:
        return {
            "skill_id": self.skill_id,
            "version": self.version,
            "ok": self.ok,
            "reasons": self.reasons,
            "status": self.status,
            "action": self.action,
        }


@dataclass(frozen=True, slots=True)
class SkillArtifact:
    skill_id: str
    version: str
    data: bytes = field(repr=False)

    @property
    def sha256(self) -> str:
        return hashlib.sha256(self.data).hexdigest()

    @property
    def filename(self) -> str:
        return f"{self.skill_id}-{self.version}.zip"


class SkillService:
    def __init__(
        self,
        db: Database,
        root: Path,
        audit: AuditLog,
        alerts: AlertLog,
        *,
        policy: SkillPolicy | None = None,
        limits: PackageLimits | None = None,
        alert_webhook_url: str | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.root = root
        self.repo = SkillRepository(db)
        self.trust = TrustStore(db)
        self.audit_log = audit
        self.alerts = alerts
        self.policy = policy or SkillPolicy()
        self.limits = limits or PackageLimits()
        self._webhook = alert_webhook_url
        self._clock = clock
        self._install_lock = asyncio.Lock()

    # -- trust store ----------------------------------------------------------------------------

    async def trust_add(
        self, publisher: str, public_key: str | bytes, *, actor: str = "admin"
    ) -> PublisherKey:
        """Trust ``public_key`` (PEM or base64 of the raw ed25519 key) to sign ``publisher``'s skills."""
        if not PUBLISHER_ID.match(publisher):
            raise InvalidRequest(
                "publisher must be a lowercase identifier like 'acme'",
                code="invalid_value",
                param="publisher",
            )
        try:
            raw = load_public_key(public_key)
        except KeyFormatError as exc:
            raise InvalidRequest(str(exc), code="invalid_public_key", param="public_key") from None
        key, added = await self.trust.add(publisher, key_id_of(raw), raw, self._clock())
        if added:
            await self.audit_log.record("skill.trust.added", target=publisher, actor=actor, key_id=key.key_id)
        return key

    async def trust_list(self) -> builtins.list[PublisherKey]:
        return await self.trust.list()

    async def trust_remove(self, publisher: str, key_id: str | None = None, *, actor: str = "admin") -> int:
        """Stop trusting a publisher (or one of its keys). Their skills fail the next audit."""
        removed = await self.trust.remove(publisher, key_id)
        if not removed:
            raise NotFound(f"publisher {publisher!r} has no trusted key{' ' + key_id if key_id else ''}")
        await self.audit_log.record(
            "skill.trust.removed", target=publisher, actor=actor, key_id=key_id, removed=removed
        )
        return removed

    # -- install --------------------------------------------------------------------------------

    async def install(self, source: Path, *, force: bool = False, actor: str = "admin") -> SkillRecord:
        """Verify and install a package; the new version becomes current. ``force`` replaces the same
        version (and so lifts its quarantine)."""
        source = Path(source).expanduser()
        if not source.exists():
            raise SkillRejected(f"{source} does not exist", code="skill_not_readable")
        trusted = await self.trust.keys()
        async with self._install_lock:
            staging = self._scratch()
            try:
                package, tree = await asyncio.to_thread(self._stage_and_verify, source, staging, trusted)
                m = package.manifest
                existing = await self.repo.get(m.skill_id, m.version)
                if existing is not None and not force:
                    raise SkillConflict(
                        f"skill {existing.ref} is already installed; pass --force to replace it"
                    )
                target = self.root / m.skill_id / m.version
                displaced = await asyncio.to_thread(self._move_into_place, tree, target)
                record = SkillRecord(
                    skill_id=m.skill_id,
                    version=m.version,
                    publisher=m.publisher,
                    key_id=package.signature.key_id,
                    description=m.description,
                    capabilities=m.capabilities.as_dict(),
                    path=str(target),
                    files=package.files,
                    size_bytes=package.total_bytes,
                    installed_at=self._clock(),
                    status=ACTIVE,
                    quarantine_reasons=[],
                    quarantined_at=None,
                    last_audit_at=None,
                    current=True,
                )
                try:
                    await self.repo.install(record, replace=existing is not None)
                except BaseException:
                    await asyncio.to_thread(_restore, target, displaced)
                    raise
                if displaced is not None:
                    await asyncio.to_thread(shutil.rmtree, displaced, ignore_errors=True)
            finally:
                await asyncio.to_thread(shutil.rmtree, staging, ignore_errors=True)
        await self.audit_log.record(
            "skill.installed",
            target=record.ref,
            actor=actor,
            skill_id=record.skill_id,
            version=record.version,
            publisher=record.publisher,
            key_id=record.key_id,
            replaced=existing is not None,
        )
        return await self.get(record.skill_id, record.version)

    def _scratch(self) -> Path:
        parent = self.root / _STAGING
        parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        return parent / secrets.token_hex(8)

    def _stage_and_verify(
        self, source: Path, staging: Path, trusted: TrustedKeys
    ) -> tuple[VerifiedPackage, Path]:
        """The verified package and the staged folder holding it."""
        try:
            stage_package(source, staging, self.limits)
        except UnsafePackage as exc:
            raise SkillRejected(f"skill package refused: {exc}", reasons=[str(exc)]) from None
        except OSError as exc:
            raise SkillRejected(
                f"skill package refused: {source} cannot be read: {exc.strerror}", code="skill_not_readable"
            ) from None
        tree = _package_root(staging)
        package, findings = verify_tree(tree, trusted, self.policy, self.limits)
        if package is None:
            reasons = [str(f) for f in findings]
            raise SkillRejected("skill package refused: " + "; ".join(reasons), reasons=reasons)
        return package, tree

    def _move_into_place(self, tree: Path, target: Path) -> Path | None:
        """Rename the verified staged folder to ``target``; returns where a previous copy was moved."""
        for dirpath, _dirs, files in os.walk(tree):
            for name in files:
                os.chmod(os.path.join(dirpath, name), 0o444)  # installed files are never edited in place
        target.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        displaced = None
        if target.exists() or target.is_symlink():
            displaced = self._scratch()
            os.rename(target, displaced)
        os.rename(tree, target)
        return displaced

    # -- read -----------------------------------------------------------------------------------

    async def list(self) -> builtins.list[SkillRecord]:
        return await self.repo.list()

    async def get(self, skill_id: str, version: str | None = None) -> SkillRecord:
        record = await self.repo.get(skill_id, version)
        if record is None:
            raise SkillNotFound(f"no installed skill {skill_id}{'@' + version if version else ''}")
        return record

    async def versions(self, skill_id: str) -> builtins.list[SkillRecord]:
        return await self.repo.list(skill_id=skill_id)

    # -- audit ----------------------------------------------------------------------------------

    async def audit(self, skill_id: str | None = None, *, actor: str = "admin") -> builtins.list[AuditResult]:
        """Re-verify the current version of one skill (or all) on disk; quarantine what fails.

        A quarantined skill is reported, not re-checked: only a re-install or ``release`` lifts it.
        """
        targets = (
            [await self.get(skill_id)] if skill_id is not None else await self.repo.list(current_only=True)
        )
        trusted = await self.trust.keys()
        results = []
        for record in targets:
            if record.status == QUARANTINED:
                results.append(
                    AuditResult(
                        record.skill_id,
                        record.version,
                        False,
                        record.quarantine_reasons,
                        QUARANTINED,
                        "already_quarantined",
                    )
                )
                continue
            findings = await asyncio.to_thread(self._check_installed, record, trusted)
            if findings:
                reasons = [str(f) for f in findings]
                await self._quarantine(record, reasons, actor=actor)
                results.append(
                    AuditResult(record.skill_id, record.version, False, reasons, QUARANTINED, "quarantined")
                )
            else:
                await self.repo.mark_audited(record.skill_id, record.version, self._clock())
                results.append(AuditResult(record.skill_id, record.version, True, [], ACTIVE, "passed"))
        return results

    def _check_installed(self, record: SkillRecord, trusted: TrustedKeys) -> builtins.list[Finding]:
        folder = self.root / record.skill_id / record.version
        if folder.is_symlink() or not folder.is_dir():
            return [Finding("missing", f"the installed folder {folder} is gone")]
        _package, findings = verify_tree(
            folder, trusted, self.policy, self.limits, expected_files=record.files
        )
        return findings

    async def _quarantine(self, record: SkillRecord, reasons: builtins.list[str], *, actor: str) -> None:
        now = self._clock()
        if not await self.repo.quarantine(record.skill_id, record.version, reasons, now):
            return  # another audit (another replica, the CLI) got there first and reported it
        await self.audit_log.record(
            "skill.quarantined",
            target=record.ref,
            actor=actor,
            skill_id=record.skill_id,
            version=record.version,
            publisher=record.publisher,
            reasons=reasons,
        )
        more = f" (+{len(reasons) - 1} more)" if len(reasons) > 1 else ""
        self.alerts.raise_soon(
            ALERT_KIND,
            record.ref,
            str(int(now)),
            f"skill {record.ref} quarantined: {reasons[0]}{more}",
            webhook_url=self._webhook,
            skill_id=record.skill_id,
            version=record.version,
            publisher=record.publisher,
            reasons=reasons,
        )

    async def release(
        self, skill_id: str, version: str | None = None, *, actor: str = "admin"
    ) -> SkillRecord:
        """Lift a quarantine, but only if the installed copy verifies again now."""
        record = await self.get(skill_id, version)
        if record.status != QUARANTINED:
            return record
        findings = await asyncio.to_thread(self._check_installed, record, await self.trust.keys())
        if findings:
            reasons = [str(f) for f in findings]
            raise SkillRejected(
                f"skill {record.ref} still fails verification: " + "; ".join(reasons),
                code="skill_still_failing",
                reasons=reasons,
            )
        if await self.repo.release(record.skill_id, record.version, self._clock()):
            await self.audit_log.record(
                "skill.released",
                target=record.ref,
                actor=actor,
                skill_id=record.skill_id,
                version=record.version,
                previous_reasons=record.quarantine_reasons,
            )
        return await self.get(record.skill_id, record.version)

    # -- artifact -------------------------------------------------------------------------------

    async def artifact(self, skill_id: str) -> SkillArtifact:
        """A zip of the current version's verified files. Refused (423) while quarantined; a file that
        no longer matches its installed hash quarantines the skill on the spot instead of being served."""
        record = await self.get(skill_id)
        if record.status == QUARANTINED:
            raise _quarantined(record, record.quarantine_reasons)
        data, findings = await asyncio.to_thread(self._zip_installed, record)
        if findings:
            reasons = [str(f) for f in findings]
            await self._quarantine(record, reasons, actor="system:artifact")
            raise _quarantined(record, reasons)
        return SkillArtifact(record.skill_id, record.version, data)

    def _zip_installed(self, record: SkillRecord) -> tuple[bytes, builtins.list[Finding]]:
        folder = self.root / record.skill_id / record.version
        findings: builtins.list[Finding] = []
        buf = io.BytesIO()
        with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
            for rel in [*sorted(record.files), SIGNATURE_FILE]:
                limit = MAX_SIGNATURE_BYTES if rel == SIGNATURE_FILE else self.limits.max_file_bytes
                content = _read_regular(folder / rel, limit)
                if content is None:
                    findings.append(Finding("missing_file", f"{rel} is installed but not a readable file"))
                    continue
                if rel != SIGNATURE_FILE and hashlib.sha256(content).hexdigest() != record.files[rel]:
                    findings.append(Finding("modified", f"{rel} does not match its installed sha256"))
                    continue
                info = zipfile.ZipInfo(rel, date_time=_ZIP_DATE)
                info.external_attr = (stat.S_IFREG | 0o644) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, content)
        return buf.getvalue(), findings


async def run_reaudit(service: SkillService) -> dict[str, Any]:
    """The ``skill_reaudit`` job (every ``cron.skill_reaudit_interval_s``, 6 h by default)."""
    return summarize(await service.audit(actor="system:skill_reaudit"))


def summarize(results: list[AuditResult]) -> dict[str, Any]:
    return {
        "audited": sum(1 for r in results if r.action != "already_quarantined"),
        "ok": sum(1 for r in results if r.ok),
        "quarantined": [f"{r.skill_id}@{r.version}" for r in results if r.action == "quarantined"],
        "already_quarantined": [
            f"{r.skill_id}@{r.version}" for r in results if r.action == "already_quarantined"
        ],
    }


def _quarantined(record: SkillRecord, reasons: list[str]) -> SkillQuarantined:
    first = reasons[0] if reasons else "failed an audit"
    return SkillQuarantined(
        f"skill {record.ref} is quarantined ({first}); re-install it or run `palyra skills release "
        f"{record.skill_id}` once the cause is fixed"
    )


def _read_regular(path: Path, limit: int) -> bytes | None:
    """The bytes of a regular file of at most ``limit`` bytes (never through a symlink), or None."""
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
    except OSError:
        return None
    with os.fdopen(fd, "rb") as fh:
        if not stat.S_ISREG(os.fstat(fh.fileno()).st_mode):
            return None
        data = fh.read(limit + 1)
    return None if len(data) > limit else data


def _package_root(staging: Path) -> Path:
    """The staged folder with ``skill.toml``: the archive root, or its one top-level folder
    (archives made with ``zip -r lookup.zip lookup/`` wrap everything in one)."""
    if (staging / MANIFEST_FILE).exists():
        return staging
    entries = list(staging.iterdir())
    if len(entries) == 1 and entries[0].is_dir() and not entries[0].is_symlink():
        return entries[0]
    return staging


def _restore(target: Path, displaced: Path | None) -> None:
    shutil.rmtree(target, ignore_errors=True)
    if displaced is not None:
        os.rename(displaced, target)
