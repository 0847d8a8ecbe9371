"""Governance on the request path: the routing decision, the budget reservation before the upstream
call, and cost plus settlement after it. The gateway calls it; it never calls back into the gateway."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson

from palyra.governance.alerts import AlertLog
from palyra.governance.budgets import Attribution, BudgetLedger, Estimate, Policy, Reservation
from palyra.governance.pricing import PriceTable
from palyra.governance.routing import AUTO_MODEL, Decision, RoutingMode, decide
from palyra.journal import RunRecord
from palyra.metrics import Metrics
from palyra.providers.registry import Needs, ProviderRegistry, RegisteredModel
from palyra.providers.resilience import CircuitState
from palyra.providers.types import ChatRequest, Usage

log = logging.getLogger("palyra.governance")


@dataclass
class Admission:
    """What the gateway carries from admission to settlement for one request."""

    reservation: Reservation | None
    decision: Decision | None
    requested_model: str
    settled: bool = False


class Governance:
    def __init__(
        self,
        *,
        prices: PriceTable,
        ledger: BudgetLedger,
        alerts: AlertLog,
        registry: ProviderRegistry,
        routing_mode: str,
        metrics: Metrics,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.prices = prices
        self.ledger = ledger
        self.alerts = alerts
        self.registry = registry
        self.routing_mode = RoutingMode(routing_mode)
        self._metrics = metrics
        self._clock = clock

    # --- routing -------------------------------------------------------------------------------

    def route(
        self, request: ChatRequest, needs: Needs, prompt_tokens: int, mode_override: str | None
    ) -> Decision | None:
        mode = RoutingMode(mode_override) if mode_override else self.routing_mode
        if mode is RoutingMode.OFF and request.model != AUTO_MODEL:
            return None
        requested = None if request.model == AUTO_MODEL else self.registry.resolve(request.model, "chat")
        unavailable = {
            pid for pid, rt in self.registry.runtimes.items() if rt.breaker.state is CircuitState.OPEN
        }
        return decide(
            request,
            requested,
            self.registry.models.values(),
            mode,
            needs=needs,
            context_tokens=prompt_tokens,
            unavailable_providers=unavailable,
            token_count=prompt_tokens,
        )

    # --- budgets -------------------------------------------------------------------------------

    def estimate(self, model: RegisteredModel, prompt_tokens: int, completion_tokens: int) -> Estimate:
        usd = self.prices.estimate_for(
            model.config.model_id,
            model.target.upstream_model,
            model.provider_kind,
            prompt_tokens,
            completion_tokens,
            datetime.now(UTC),
        )
        return Estimate(usd=usd, tokens=prompt_tokens + completion_tokens)

    async def admit(self, record: RunRecord, estimate: Estimate) -> Reservation:
        who = Attribution(record.agent_id, record.session_id, record.token_id)
        try:
            return await self.ledger.reserve(who, estimate)
        except Exception:
            self._metrics.budget_blocks.inc()
            raise

    # --- settlement ----------------------------------------------------------------------------

    def settle(
        self, record: RunRecord, admission: Admission, model: RegisteredModel | None, usage: Usage | None
    ) -> None:
        """Price the run from its real usage, release the reservation, and complete the decision row."""
        at = datetime.now(UTC)
        cost: float | None = None
        if model is not None and usage is not None:
            audio = record.extra.get("audio_seconds")
            costing = self.prices.cost_for(
                model.config.model_id,
                model.target.upstream_model,
                model.provider_kind,
                usage,
                at,
                audio_seconds=float(audio) if audio is not None else None,
            )
            cost = costing.cost_usd
            record.pricing_missing = costing.pricing_missing
            if costing.pricing_missing:
                self._metrics.pricing_missing.labels(model.config.model_id).inc()
                self.alerts.raise_soon(
                    "pricing_missing",
                    model.config.model_id,
                    at.strftime("%Y-%m-%d"),
                    f"model '{model.config.model_id}' has no price: its runs are recorded with cost null; "
                    "add a [[pricing]] entry or POST /api/v1/pricing",
                )
            elif cost:
                self._metrics.cost.labels(model.config.model_id).inc(cost)
        record.cost_usd = cost
        if admission.reservation is not None:
            tokens = (usage.prompt_tokens + usage.completion_tokens) if usage is not None else 0
            self.ledger.settle(admission.reservation, cost, tokens)
            record.extra["budget_status"] = admission.reservation.status
        decision = admission.decision
        if decision is not None and usage is not None:
            record.decision = self._decision_row(record, decision, usage, cost, at)

    def _decision_row(
        self, record: RunRecord, decision: Decision, usage: Usage, actual: float | None, at: datetime
    ) -> dict[str, Any]:
        def price_of(model_id: str | None) -> float | None:
            entry = self.registry.models.get(model_id or "")
            if entry is None:
                return None
            return self.prices.cost_for(
                entry.config.model_id, entry.target.upstream_model, entry.provider_kind, usage, at
            ).cost_usd

        requested_cost = price_of(decision.requested_model)
        recommended_cost = price_of(decision.recommended_model)
        saving: float | None = None
        if decision.mode is RoutingMode.ENFORCED and requested_cost is not None and actual is not None:
            saving = requested_cost - actual  # what following the router saved
        elif recommended_cost is not None and actual is not None:
            saving = actual - recommended_cost  # what following the router would have saved
        return {
            "request_id": record.request_id,
            "at": record.created_at,
            "mode": decision.mode.value,
            "requested_model": decision.requested_model,
            "recommended_model": decision.recommended_model,
            "served_model": record.model_id or decision.served_model,
            "score": decision.score,
            "tier": decision.tier,
            "reason_codes": orjson.dumps(decision.reason_codes).decode(),
            "features": orjson.dumps(
                {"values": decision.features, "contributions": decision.contributions}
            ).decode(),
            "candidates": orjson.dumps(decision.candidates).decode(),
            "actual_cost_usd": actual,
            "requested_cost_usd": requested_cost,
            "recommended_cost_usd": recommended_cost,
            "saving_usd": saving,
        }

    def on_soft_limit(self, policy: Policy, window: str, spent: float, limit: float) -> None:
        self.alerts.raise_soon(
            "budget_soft_limit",
            policy.policy_id,
            window,
            f"budget '{policy.policy_id}' ({policy.scope}) crossed its soft limit of {limit:g} "
            f"{policy.metric} in window {window}",
            webhook_url=policy.webhook_url,
            policy_id=policy.policy_id,
            scope=policy.scope,
            metric=policy.metric,
            spent=spent,
            soft_limit=limit,
            hard_limit=policy.hard_limit,
        )
