"""Budgets and prices set through the admin API: stored in the database, so every replica loads them.

Kept apart from the admin API's routes (``palyra.surface.admin_governance``) so the daemon can sync
them without loading the admin API, which is built on its first request.
"""

from __future__ import annotations

import orjson
from sqlalchemy import select

from palyra.config.models import BudgetConfig, PricingConfig
from palyra.governance.budgets import BudgetLedger, Policy
from palyra.governance.pricing import Price, PriceTable, price_from_config
from palyra.storage.db import Database
from palyra.storage.schema import budget_policies, price_overrides


async def load_admin_policies(db: Database) -> list[Policy]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(budget_policies))).all()
    return [
        Policy.from_config(BudgetConfig.model_validate(orjson.loads(r.definition)), "admin") for r in rows
    ]


async def load_admin_prices(db: Database) -> list[Price]:
    async with db.engine.connect() as conn:
        rows = (await conn.execute(select(price_overrides))).all()
    return [
        price_from_config(PricingConfig.model_validate(orjson.loads(r.definition)), source="admin")
        for r in rows
    ]


async def sync_admin_governance(db: Database, ledger: BudgetLedger, prices: PriceTable) -> None:
    """Make this replica's admin-set budgets and prices those in the database: at start, and
    periodically, since another replica may have changed them."""
    stored = {p.policy_id: p for p in await load_admin_policies(db)}
    for policy in ledger.policies:
        if policy.source == "admin" and policy.policy_id not in stored:
            ledger.remove_policy(policy.policy_id)
    current = {p.policy_id: p for p in ledger.policies}
    for policy_id, policy in stored.items():
        if current.get(policy_id) != policy:
            ledger.set_policy(policy)
    prices.replace_layer("admin", await load_admin_prices(db))
