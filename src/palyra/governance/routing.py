"""Smart routing: which model a chat request should use, and why, as a ``Decision`` to record.

``decide`` scores the request (``palyra.governance.complexity``), filters the configured chat models to
those that can serve it, and recommends one per tier:

- ``simple`` (score < low threshold): the cheapest candidate (cost, then latency, then id);
- ``complex`` (score > high threshold): the most capable (premium first, then larger context, then
  lower latency, then id);
- ``standard``: the requested model if it is a candidate, else the cheapest candidate whose cost tier
  is at least ``standard``.

The mode says what happens with the recommendation:

- ``off``: nothing is computed; the requested model is served.
- ``suggest``: the requested model is served; the recommendation is published (headers, run record).
- ``dry_run``: as ``suggest``, and the gateway also records what the recommendation would have cost
  (``Decision.counterfactual_model``). The reference daemon treated the two modes identically.
- ``enforced``: the recommendation is served (the requested model if nothing is capable).

The virtual model ``palyra/auto`` is always routed, whatever the mode, and fails with
``no_capable_model`` when no model can serve the request.

Unlike the reference, the requested model passes the same capability and context filters as every
other model, so a recommendation is never a model that cannot serve the request. The deterministic
provider (an echo) is never recommended in place of a real model: it is a candidate only when the
requested model is deterministic, or for ``palyra/auto`` when no other chat model is configured.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Literal, TypedDict

from palyra.errors import InvalidRequest
from palyra.governance.complexity import explain, extract, total
from palyra.providers.registry import Needs, RegisteredModel
from palyra.providers.types import ChatRequest

AUTO_MODEL = "palyra/auto"
DEFAULT_THRESHOLDS = (0.3, 0.7)
DEFAULT_COMPLETION_ALLOWANCE = 256
"""Context room a model must have beyond the prompt when the client sets no ``max_tokens``."""

Tier = Literal["simple", "standard", "complex"]

_COST_RANK = {"low": 0, "standard": 1, "premium": 2}
_LATENCY_RANK = {"low": 0, "standard": 1, "high": 2}
_UNKNOWN_RANK = 1  # an unrecognised tier counts as standard
_MISSING = {cap: f"missing_capability:{cap}" for cap in ("vision", "tools", "json_mode", "streaming")}


class RoutingMode(StrEnum):
    OFF = "off"
    SUGGEST = "suggest"
    DRY_RUN = "dry_run"
    ENFORCED = "enforced"


class Candidate(TypedDict):
    """One configured chat model as the router saw it."""

    model_id: str
    provider_id: str
    cost_tier: str
    latency_tier: str
    max_context_tokens: int | None
    eligible: bool
    reason: str
    """``eligible``, or the exclusion codes joined by commas (e.g. ``missing_capability:vision``)."""


@dataclass(slots=True)
class Decision:
    """What the router decided for one request; everything a run record or header needs."""

    mode: RoutingMode
    requested_model: str
    """The model the client named (``palyra/auto`` for the virtual model)."""
    recommended_model: str | None
    """The router's pick; None when routing is off or nothing can serve the request."""
    served_model: str
    """The model the gateway should call (the registry may still fail over from it)."""
    score: float | None
    """The complexity score, None when routing is off."""
    tier: Tier | None
    """None when routing is off."""
    features: dict[str, int | bool | None] = field(default_factory=dict)
    contributions: dict[str, float] = field(default_factory=dict)
    candidates: list[Candidate] = field(default_factory=list)
    reason_codes: list[str] = field(default_factory=list)
    recommended_cost_tier: str | None = None
    served_cost_tier: str | None = None

    @property
    def counterfactual_model(self) -> str | None:
        """In dry-run mode, the model whose cost the gateway records next to the served one."""
        if self.mode == RoutingMode.DRY_RUN and self.recommended_model not in (None, self.served_model):
            return self.recommended_model
        return None


def decide(
    request: ChatRequest,
    requested: RegisteredModel | None,
    models: Iterable[RegisteredModel],
    mode: RoutingMode,
    *,
    needs: Needs,
    context_tokens: int,
    unavailable_providers: set[str],
    thresholds: tuple[float, float] = DEFAULT_THRESHOLDS,
    token_count: int | None = None,
) -> Decision:
    """Route ``request``. ``requested`` is None for ``palyra/auto``; ``models`` are the configured ones.

    ``context_tokens`` is the prompt's size in tokens; a model qualifies only if its context window (when
    known) holds it plus the completion allowance (``max_tokens``, or ``DEFAULT_COMPLETION_ALLOWANCE``).
    """
    low, high = thresholds
    if not 0.0 <= low <= high <= 1.0:
        raise ValueError(f"routing thresholds must satisfy 0 <= low <= high <= 1, got {thresholds!r}")
    requested_id = AUTO_MODEL if requested is None else requested.config.model_id
    if mode == RoutingMode.OFF and requested is not None:
        return Decision(
            mode=mode,
            requested_model=requested_id,
            recommended_model=None,
            served_model=requested_id,
            score=None,
            tier=None,
            reason_codes=["routing_off"],
            served_cost_tier=requested.cost_tier,
        )

    features = extract(request, token_count)
    contributions = explain(features)
    value = total(contributions)  # score(features), without computing the contributions twice
    tier: Tier = "simple" if value < low else "complex" if value > high else "standard"
    codes: list[str] = [f"mode_{mode.value}", f"score_{tier}"]
    if requested is None:
        codes.append("auto_model")

    allowance = request.max_tokens if request.max_tokens is not None else DEFAULT_COMPLETION_ALLOWANCE
    candidates, eligible, excluded_by = _filter(
        list(models), requested, needs, context_tokens + allowance, unavailable_providers
    )
    codes += excluded_by
    requested_eligible = requested is not None and requested_id in eligible
    if requested is not None and not requested_eligible:
        codes.append("requested_not_capable")

    pick = _recommend(tier, requested if requested_eligible else None, list(eligible.values()), codes)
    served: RegisteredModel
    if pick is None:
        if requested is None:
            raise InvalidRequest(
                f"no configured chat model can serve this request through '{AUTO_MODEL}' "
                f"({_summary(candidates)}); name a model explicitly or enable one that can",
                code="no_capable_model",
                param="model",
            )
        codes.append("no_candidates")
        served = requested
    elif requested is None or mode == RoutingMode.ENFORCED:
        served = pick
    else:
        served = requested
        if pick.config.model_id != requested_id:
            codes.append("suggest_only" if mode == RoutingMode.SUGGEST else "dry_run_counterfactual")

    if pick is not None and requested is not None and pick.config.model_id != requested_id:
        delta = _rank(_COST_RANK, pick.cost_tier) - _rank(_COST_RANK, requested.cost_tier)
        if delta:
            codes.append("cheaper_than_requested" if delta < 0 else "costlier_than_requested")
    return Decision(
        mode=mode,
        requested_model=requested_id,
        recommended_model=pick.config.model_id if pick is not None else None,
        served_model=served.config.model_id,
        score=value,
        tier=tier,
        features=features.as_dict(),
        contributions=contributions,
        candidates=candidates,
        reason_codes=list(dict.fromkeys(codes)),
        recommended_cost_tier=pick.cost_tier if pick is not None else None,
        served_cost_tier=served.cost_tier,
    )


def _filter(
    models: list[RegisteredModel],
    requested: RegisteredModel | None,
    needs: Needs,
    context_needed: int,
    unavailable: set[str],
) -> tuple[list[Candidate], dict[str, RegisteredModel], dict[str, None]]:
    """Every chat model as a ``Candidate``, the eligible ones by id, and the exclusion codes that applied."""
    chat = [m for m in models if m.config.enabled and m.config.role == "chat"]
    if requested is not None:
        deterministic_only = requested.provider_kind == "deterministic"
    else:
        deterministic_only = all(m.provider_kind == "deterministic" for m in chat)
    any_need = needs.vision or needs.tools or needs.json_mode or needs.streaming
    candidates: list[Candidate] = []
    eligible: dict[str, RegisteredModel] = {}
    excluded_by: dict[str, None] = {}  # an ordered set
    for m in chat:
        config = m.config
        caps = m.target.capabilities
        window = caps.max_context_tokens
        reasons: list[str] = []
        if config.provider_id in unavailable:
            reasons.append("provider_unavailable")
        if (m.provider_kind == "deterministic") is not deterministic_only:
            reasons.append("deterministic_only" if deterministic_only else "deterministic_excluded")
        if any_need:
            reasons += [_MISSING[cap] for cap in needs.missing(caps)]
        if window is not None and window < context_needed:
            reasons.append("context_too_small")
        if reasons:
            excluded_by.update(dict.fromkeys(reasons))
        else:
            eligible[config.model_id] = m
        candidates.append(
            {
                "model_id": config.model_id,
                "provider_id": config.provider_id,
                "cost_tier": m.cost_tier,
                "latency_tier": m.latency_tier,
                "max_context_tokens": window,
                "eligible": not reasons,
                "reason": ",".join(reasons) if reasons else "eligible",
            }
        )
    return candidates, eligible, excluded_by


def _recommend(
    tier: Tier, requested: RegisteredModel | None, eligible: list[RegisteredModel], codes: list[str]
) -> RegisteredModel | None:
    """The pick for ``tier``; ``requested`` is the requested model only if it is itself eligible."""
    if not eligible:
        return None
    if tier == "simple":
        pick = min(eligible, key=_cheapest)
    elif tier == "complex":
        pick = min(eligible, key=_most_capable)
    elif requested is not None:
        pick = requested
    else:
        standard = [m for m in eligible if _rank(_COST_RANK, m.cost_tier) >= _COST_RANK["standard"]]
        if not standard:
            codes.append("no_standard_candidate")
        pick = min(standard or eligible, key=_cheapest)
    if requested is not None and pick.config.model_id == requested.config.model_id:
        codes.append("kept_requested")
    return pick


def _cheapest(m: RegisteredModel) -> tuple[int, int, str]:
    return (
        _COST_RANK.get(m.cost_tier, _UNKNOWN_RANK),
        _LATENCY_RANK.get(m.latency_tier, _UNKNOWN_RANK),
        m.config.model_id,
    )


def _most_capable(m: RegisteredModel) -> tuple[int, int, int, str]:
    context = m.target.capabilities.max_context_tokens or 0
    return (
        -_COST_RANK.get(m.cost_tier, _UNKNOWN_RANK),
        -context,
        _LATENCY_RANK.get(m.latency_tier, _UNKNOWN_RANK),
        m.config.model_id,
    )


def _rank(ranks: dict[str, int], tier: str) -> int:
    return ranks.get(tier, _UNKNOWN_RANK)


def _summary(candidates: list[Candidate]) -> str:
    if not candidates:
        return "no chat models are configured"
    return "; ".join(f"{c['model_id']}: {c['reason']}" for c in candidates)
