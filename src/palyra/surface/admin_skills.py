"""Admin API for skills: installed skills, audits, artifacts and the publisher trust store.

Mounted under /api/v1 by ``admin_api``; errors are ``PalyraError``s rendered by its one handler
(a quarantined skill's artifact is 423 ``skill_quarantined``).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter
from fastapi.responses import Response
from pydantic import BaseModel, Field

from palyra.skills.service import SkillService, summarize


class TrustKeyIn(BaseModel):
    publisher: Annotated[str, Field(min_length=1, max_length=64)]
    public_key: Annotated[str, Field(min_length=1, max_length=4096, description="PEM, or base64 raw key")]


def build_skills_router(*, service: SkillService, admin: list[Any]) -> APIRouter:
    router = APIRouter(dependencies=admin)

    # /skills/trust and /skills/audit before /skills/{skill_id}: those ids are reserved for this reason.
    @router.get("/skills/trust")
    async def list_trusted() -> dict[str, Any]:
        return {"object": "list", "data": [k.public() for k in await service.trust_list()]}

    @router.post("/skills/trust", status_code=201)
    async def add_trusted(body: TrustKeyIn) -> dict[str, Any]:
        return (await service.trust_add(body.publisher, body.public_key)).public()

    @router.delete("/skills/trust/{publisher}")
    async def remove_trusted(publisher: str, key_id: str | None = None) -> dict[str, Any]:
        removed = await service.trust_remove(publisher, key_id)
        return {"publisher": publisher, "key_id": key_id, "removed": removed}

    @router.post("/skills/audit")
    async def audit_all() -> dict[str, Any]:
        results = await service.audit()
        return {**summarize(results), "data": [r.public() for r in results]}

    @router.get("/skills")
    async def list_skills() -> dict[str, Any]:
        return {"object": "list", "data": [r.public() for r in await service.list()]}

    @router.get("/skills/{skill_id}")
    async def get_skill(skill_id: str) -> dict[str, Any]:
        record = await service.get(skill_id)
        return {
            **record.public(with_files=True),
            "versions": [v.public() for v in await service.versions(skill_id)],
        }

    @router.post("/skills/{skill_id}/audit")
    async def audit_one(skill_id: str) -> dict[str, Any]:
        (result,) = await service.audit(skill_id)
        return result.public()

    @router.post("/skills/{skill_id}/release")
    async def release(skill_id: str) -> dict[str, Any]:
        return (await service.release(skill_id)).public()

    @router.get("/skills/{skill_id}/artifact")
    async def artifact(skill_id: str) -> Response:
        art = await service.artifact(skill_id)
        return Response(
            art.data,
            media_type="application/zip",
            headers={
                "content-disposition": f'attachment; filename="{art.filename}"',
                "x-palyra-skill-version": art.version,
                "x-palyra-skill-sha256": art.sha256,
            },
        )

    return router
