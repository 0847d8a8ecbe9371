"""Admin API for governance and usage: budgets, alerts, prices, routing decisions, timeline, export."""

from __future__ import annotations

import csv
import io
import time
from typing import Annotated, Any, Literal

import orjson
from fastapi import APIRouter, Query
from fastapi.responses import Response
from pydantic import BaseModel, Field
from sqlalchemy import delete, insert

from palyra.callers.tokens import parse_duration
from palyra.config.models import BudgetConfig, PricingConfig
from palyra.errors import InvalidRequest, NotFound
from palyra.governance.alerts import AlertLog
from palyra.governance.budgets import BudgetLedger, Policy
from palyra.governance.pricing import PriceTable, price_from_config
from palyra.storage.db import Database
from palyra.storage.runs import GROUP_COLUMNS, RunRepository
from palyra.storage.schema import budget_policies, price_overrides

_FORMULA_PREFIXES = ("=", "+", "-", "@", "\t", "\r")


def neutralize_csv_cell(value: Any) -> Any:
    """Spreadsheets run cells starting with = + - @ as formulas; a leading quote keeps them text."""
    if isinstance(value, str) and value.startswith(_FORMULA_PREFIXES):
        return "'" + value
    return value


class BudgetIn(BaseModel):
    policy_id: Annotated[str, Field(min_length=1, max_length=128)]
    scope: str = "global"
    metric: Literal["usd", "tokens"] = "usd"
    window: Literal["day", "week", "month", "total", "rolling_24h", "rolling_7d", "rolling_30d"] = "month"
    soft_limit: float | None = None
    hard_limit: float | None = None
    webhook_url: str | None = None


def _since(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return time.time() - parse_duration(text)
    except ValueError:
        raise InvalidRequest(
            f"{text} is not a duration like 7d or 24h", code="invalid_value", param="since"
        ) from None


def policy_view(policy: Policy, ledger: BudgetLedger) -> dict[str, Any]:
    return {
        "policy_id": policy.policy_id,
        "scope": policy.scope,
        "metric": policy.metric,
        "window": policy.window,
        "soft_limit": policy.soft_limit,
        "hard_limit": policy.hard_limit,
        "webhook_configured": bool(policy.webhook_url),
        "source": policy.source,
        **ledger.status(policy),
    }


def build_governance_router(
    *,
    db: Database,
    ledger: BudgetLedger,
    alerts: AlertLog,
    prices: PriceTable,
    runs: RunRepository,
    admin: list[Any],
) -> APIRouter:
    router = APIRouter(dependencies=admin)

    @router.get("/budgets")
    async def list_budgets() -> dict[str, Any]:
        await ledger.load_all()
        return {"object": "list", "data": [policy_view(p, ledger) for p in ledger.policies]}

    @router.post("/budgets", status_code=201)
    async def put_budget(body: BudgetIn) -> dict[str, Any]:
        try:
            config = BudgetConfig.model_validate(body.model_dump())
        except ValueError as exc:
            raise InvalidRequest(str(exc).splitlines()[-1], code="invalid_value") from None
        existing = next((p for p in ledger.policies if p.policy_id == config.policy_id), None)
        if existing is not None and existing.source == "config":
            raise InvalidRequest(
                f"budget '{config.policy_id}' is defined in the config file; change it there",
                code="read_only_policy",
            )
        async with db.engine.begin() as conn:
            await conn.execute(delete(budget_policies).where(budget_policies.c.policy_id == config.policy_id))
            await conn.execute(
                insert(budget_policies).values(
                    policy_id=config.policy_id, definition=config.model_dump_json(), created_at=time.time()
                )
            )
        policy = Policy.from_config(config, "admin")
        ledger.set_policy(policy)
        await ledger.load_all()
        return policy_view(policy, ledger)

    @router.delete("/budgets/{policy_id}")
    async def delete_budget(policy_id: str) -> dict[str, Any]:
        existing = next((p for p in ledger.policies if p.policy_id == policy_id), None)
        if existing is None:
            raise NotFound(f"no budget '{policy_id}'", code="budget_not_found")
        if existing.source == "config":
            raise InvalidRequest(
                f"budget '{policy_id}' is defined in the config file", code="read_only_policy"
            )
        async with db.engine.begin() as conn:
            await conn.execute(delete(budget_policies).where(budget_policies.c.policy_id == policy_id))
        ledger.remove_policy(policy_id)
        return {"policy_id": policy_id, "deleted": True}

    @router.get("/alerts")
    async def list_alerts(
        limit: Annotated[int, Query(ge=1, le=500)] = 100, kind: str | None = None
    ) -> dict[str, Any]:
        return {"object": "list", "data": await alerts.list(limit=limit, kind=kind)}

    @router.get("/pricing")
    async def list_pricing() -> dict[str, Any]:
        return {"object": "list", "data": [p.public() for p in prices.all()]}

    @router.post("/pricing", status_code=201)
    async def put_price(body: PricingConfig) -> dict[str, Any]:
        try:
            price = price_from_config(body, source="admin")
        except ValueError as exc:  # what the model cannot say: finite amounts, a readable date
            raise InvalidRequest(str(exc), code="invalid_value") from None
        async with db.engine.begin() as conn:
            await conn.execute(
                delete(price_overrides).where(
                    price_overrides.c.model_id == body.model_id,
                    price_overrides.c.effective_from == (body.effective_from or ""),
                )
            )
            await conn.execute(
                insert(price_overrides).values(
                    model_id=body.model_id,
                    effective_from=body.effective_from or "",
                    definition=body.model_dump_json(),
                    created_at=time.time(),
                )
            )
        prices.set(price)
        return price.public()

    @router.get("/routing/decisions")
    async def decisions(
        limit: Annotated[int, Query(ge=1, le=1000)] = 50, since: str | None = None
    ) -> dict[str, Any]:
        start = _since(since)
        rows = await runs.decisions(limit=limit, since=start)
        for row in rows:
            for key in ("reason_codes", "features", "candidates"):
                row[key] = orjson.loads(row[key]) if row[key] else None
        return {"object": "list", "data": rows, "totals": await runs.decision_totals(since=start)}

    @router.get("/usage/timeline")
    async def timeline(
        since: str = "7d", bucket: Literal["hour", "day"] = "day", by: str | None = None
    ) -> dict[str, Any]:
        if by is not None and by not in GROUP_COLUMNS:
            raise InvalidRequest(
                f"by must be one of {', '.join(GROUP_COLUMNS)}", code="invalid_value", param="by"
            )
        start = _since(since) or 0.0
        rows = await runs.timeline(since=start, bucket_s=3600 if bucket == "hour" else 86400, by=by)
        return {"object": "list", "bucket": bucket, "since": start, "data": rows}

    @router.get(
        "/usage/export",
        response_model=None,
        responses={
            200: {
                "description": "The runs, as CSV (the default) or as a JSON array",
                "content": {
                    "text/csv": {"schema": {"type": "string"}},
                    "application/json": {"schema": {"type": "array", "items": {"type": "object"}}},
                },
            }
        },
    )
    async def export(
        format: Literal["csv", "json"] = "csv",
        since: str = "30d",
        limit: Annotated[int, Query(ge=1, le=100_000)] = 10_000,
    ) -> Response:
        rows = await runs.recent(since=_since(since), limit=limit)
        if format == "json":
            return Response(orjson.dumps(rows), media_type="application/json")
        buf = io.StringIO()
        if rows:
            writer = csv.DictWriter(buf, fieldnames=list(rows[0]))
            writer.writeheader()
            for row in rows:
                writer.writerow({k: neutralize_csv_cell(v) for k, v in row.items()})
        return Response(
            buf.getvalue(),
            media_type="text/csv; charset=utf-8",
            headers={"content-disposition": 'attachment; filename="palyra-usage.csv"'},
        )

    return router
