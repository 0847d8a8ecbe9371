"""Smart routing: tiers, candidate filtering with reason codes, modes, palyra/auto, deterministic-only."""

from __future__ import annotations

import dataclasses

import pytest

from palyra.config.models import CapabilitiesConfig, ModelConfig
from palyra.errors import InvalidRequest
from palyra.governance.routing import (
    AUTO_MODEL,
    DEFAULT_COMPLETION_ALLOWANCE,
    Decision,
    RoutingMode,
    decide,
)
from palyra.providers.registry import Needs, RegisteredModel, _register
from palyra.providers.types import ChatRequest, Message, TextPart

PROVIDER = {"openai_compatible": "openai", "anthropic": "anthropic", "deterministic": "echo"}


def model(
    model_id: str,
    kind: str = "openai_compatible",
    *,
    provider: str | None = None,
    cost: str | None = None,
    latency: str | None = None,
    context: int | None = None,
    vision: bool | None = None,
    tools: bool | None = None,
    role: str = "chat",
    enabled: bool = True,
) -> RegisteredModel:
    config = ModelConfig(
        model_id=model_id,
        provider_id=provider or PROVIDER[kind],
        role=role,
        enabled=enabled,
        cost_tier=cost,
        latency_tier=latency,
        capabilities=CapabilitiesConfig(vision=vision, tools=tools, max_context_tokens=context),
    )
    return _register(config, kind)


MINI = model("mini", cost="low", latency="low", vision=False)
STD = model("std")  # openai_compatible defaults: standard cost, standard latency, 128k context
BIG = model("big", "anthropic")  # premium, 200k context
BIG_FAST = model("big-fast", "anthropic", latency="low", context=100_000)
ECHO = model("echo", "deterministic")  # low, low
FLEET = [MINI, STD, BIG, BIG_FAST, ECHO]

SIMPLE = "thanks, what time zone is Lisbon in?"
STANDARD = "Why does this fail, and how would you compare the fix?\n```python\nprint(1/0)\n```"
COMPLEX = (
    "Design a sharded cache. First compare write-through and write-back trade-offs, then prove the "
    "consistency argument step by step, and finally optimize:\n1. latency\n2. throughput\n"
    "```go\nfunc main() {\n}\n```"
)


def ask(text: str, max_tokens: int | None = None) -> ChatRequest:
    return ChatRequest(model="m", messages=[Message("user", [TextPart(text)])], max_tokens=max_tokens)


def route(
    text: str,
    requested: RegisteredModel | None = STD,
    mode: RoutingMode = RoutingMode.ENFORCED,
    models: list[RegisteredModel] = FLEET,
    *,
    needs: Needs | None = None,
    context_tokens: int = 100,
    unavailable: set[str] | None = None,
    max_tokens: int | None = None,
    thresholds: tuple[float, float] = (0.3, 0.7),
) -> Decision:
    return decide(
        ask(text, max_tokens),
        requested,
        models,
        mode,
        needs=needs or Needs(),
        context_tokens=context_tokens,
        unavailable_providers=unavailable or set(),
        thresholds=thresholds,
        token_count=4000 if text is COMPLEX else None,
    )


def candidate(d: Decision, model_id: str) -> dict[str, object]:
    return dict(next(c for c in d.candidates if c["model_id"] == model_id))


# --- tiers --------------------------------------------------------------------------------------


def test_simple_goes_to_the_cheapest_capable_model() -> None:
    d = route(SIMPLE)
    assert d.tier == "simple"
    assert d.score is not None and d.score < 0.3
    assert (d.recommended_model, d.served_model) == ("mini", "mini")
    assert {"score_simple", "cheaper_than_requested"} <= set(d.reason_codes)


def test_complex_goes_to_the_most_capable_model() -> None:
    d = route(COMPLEX)
    assert d.tier == "complex"
    # both premium: the larger context wins over the lower latency
    assert (d.recommended_model, d.served_model) == ("big", "big")
    assert {"score_complex", "costlier_than_requested"} <= set(d.reason_codes)


def test_standard_keeps_the_requested_model() -> None:
    d = route(STANDARD, requested=BIG_FAST)
    assert d.tier == "standard"
    assert (d.recommended_model, d.served_model) == ("big-fast", "big-fast")
    assert {"score_standard", "kept_requested"} <= set(d.reason_codes)


def test_standard_without_a_capable_requested_model_picks_the_cheapest_standard_one() -> None:
    d = route(STANDARD, requested=MINI, needs=Needs(vision=True))
    assert "requested_not_capable" in d.reason_codes
    assert d.recommended_model == "std"


def test_standard_falls_back_to_the_cheapest_when_nothing_is_standard_or_better() -> None:
    cheap = [MINI, model("mini-2", cost="low", latency="standard")]
    d = route(STANDARD, requested=None, models=cheap)
    assert d.recommended_model == "mini"
    assert "no_standard_candidate" in d.reason_codes


def test_ties_break_on_latency_then_model_id() -> None:
    fleet = [model("b", cost="low", latency="low"), model("a", cost="low", latency="standard"), model("c")]
    assert route(SIMPLE, models=fleet, requested=None).recommended_model == "b"
    fleet = [model("b", cost="low"), model("a", cost="low")]
    assert route(SIMPLE, models=fleet, requested=None).recommended_model == "a"


def test_thresholds_move_the_tiers() -> None:
    assert route(SIMPLE, thresholds=(0.0, 0.0)).tier == "complex"
    assert route(COMPLEX, thresholds=(1.0, 1.0)).tier == "simple"
    with pytest.raises(ValueError):
        route(SIMPLE, thresholds=(0.8, 0.2))


def test_decision_carries_features_and_contributions() -> None:
    d = route(STANDARD)
    assert d.features["has_code"] is True
    assert d.score is not None
    assert sum(d.contributions.values()) == pytest.approx(d.score)


# --- filtering ----------------------------------------------------------------------------------


def test_missing_capability_excludes_with_a_reason() -> None:
    d = route(SIMPLE, needs=Needs(vision=True))
    mini = candidate(d, "mini")
    assert mini["eligible"] is False
    assert mini["reason"] == "missing_capability:vision"
    assert "missing_capability:vision" in d.reason_codes
    assert d.recommended_model == "std"  # the cheapest model that can see


def test_every_missing_capability_is_named() -> None:
    blind = model("blind", vision=False, tools=False)
    d = route(SIMPLE, models=[blind, STD], needs=Needs(vision=True, tools=True))
    assert candidate(d, "blind")["reason"] == "missing_capability:vision,missing_capability:tools"


def test_context_too_small_counts_the_completion_allowance() -> None:
    # 128k models hold 127_000 + the default allowance but not 127_000 + 2_000 requested tokens
    d = route(SIMPLE, context_tokens=127_000)
    assert candidate(d, "std")["eligible"] is True
    d = route(SIMPLE, context_tokens=128_000 - DEFAULT_COMPLETION_ALLOWANCE + 1)
    assert candidate(d, "std")["reason"] == "context_too_small"
    d = route(SIMPLE, context_tokens=127_000, max_tokens=2_000)
    assert candidate(d, "mini")["reason"] == "context_too_small"
    assert candidate(d, "big-fast")["reason"] == "context_too_small"
    assert candidate(d, "big")["eligible"] is True
    assert (d.recommended_model, d.served_model) == ("big", "big")
    assert {"context_too_small", "requested_not_capable"} <= set(d.reason_codes)


def test_unknown_context_window_is_not_a_reason_to_exclude() -> None:
    m = model("nolimit")
    caps = dataclasses.replace(m.target.capabilities, max_context_tokens=None)
    nolimit = dataclasses.replace(m, target=dataclasses.replace(m.target, capabilities=caps))
    d = route(SIMPLE, requested=None, models=[nolimit], context_tokens=10**7)
    assert d.recommended_model == "nolimit"


def test_unavailable_provider_is_excluded() -> None:
    d = route(COMPLEX, unavailable={"anthropic"})
    assert candidate(d, "big")["reason"] == "provider_unavailable"
    assert candidate(d, "big-fast")["reason"] == "provider_unavailable"
    assert "provider_unavailable" in d.reason_codes
    assert d.recommended_model == "std"  # the most capable of what is left


def test_disabled_and_non_chat_models_are_not_candidates() -> None:
    off = model("off", cost="low", latency="low", enabled=False)
    embed = model("embed", role="embeddings")
    d = route(SIMPLE, models=[off, embed, STD])
    assert [c["model_id"] for c in d.candidates] == ["std"]
    assert d.recommended_model == "std"


def test_candidate_entries_describe_each_model() -> None:
    d = route(SIMPLE)
    assert candidate(d, "big") == {
        "model_id": "big",
        "provider_id": "anthropic",
        "cost_tier": "premium",
        "latency_tier": "standard",
        "max_context_tokens": 200_000,
        "eligible": True,
        "reason": "eligible",
    }


# --- deterministic models ----------------------------------------------------------------------


def test_deterministic_models_are_never_recommended_for_real_ones() -> None:
    d = route(SIMPLE)  # echo is the cheapest and fastest, yet excluded
    assert candidate(d, "echo")["reason"] == "deterministic_excluded"
    assert d.recommended_model == "mini"


def test_deterministic_request_routes_among_deterministic_models_only() -> None:
    echo_b = model("echo-b", "deterministic", latency="standard")
    d = route(COMPLEX, requested=ECHO, models=[*FLEET, echo_b])
    assert candidate(d, "big")["reason"] == "deterministic_only"
    eligible = {c["model_id"] for c in d.candidates if c["eligible"]}
    assert eligible == {"echo", "echo-b"}
    assert d.served_model in eligible


def test_auto_in_a_deterministic_only_deployment_routes_to_deterministic_models() -> None:
    d = route(SIMPLE, requested=None, mode=RoutingMode.OFF, models=[ECHO])
    assert (d.requested_model, d.recommended_model, d.served_model) == (AUTO_MODEL, "echo", "echo")


def test_auto_never_falls_back_to_deterministic_in_a_mixed_deployment() -> None:
    with pytest.raises(InvalidRequest) as exc:
        route(SIMPLE, requested=None, unavailable={"openai", "anthropic"})
    assert exc.value.code == "no_capable_model"
    assert "echo: deterministic_excluded" in exc.value.message


# --- modes --------------------------------------------------------------------------------------


def test_off_computes_nothing() -> None:
    d = route(COMPLEX, mode=RoutingMode.OFF)
    assert (d.requested_model, d.recommended_model, d.served_model) == ("std", None, "std")
    assert (d.score, d.tier, d.candidates, d.features) == (None, None, [], {})
    assert d.reason_codes == ["routing_off"]


@pytest.mark.parametrize("mode", [RoutingMode.SUGGEST, RoutingMode.DRY_RUN])
def test_suggest_and_dry_run_serve_the_requested_model(mode: RoutingMode) -> None:
    d = route(SIMPLE, mode=mode)
    assert (d.recommended_model, d.served_model) == ("mini", "std")
    assert (d.recommended_cost_tier, d.served_cost_tier) == ("low", "standard")


def test_dry_run_differs_from_suggest_by_its_counterfactual() -> None:
    suggest = route(SIMPLE, mode=RoutingMode.SUGGEST)
    dry = route(SIMPLE, mode=RoutingMode.DRY_RUN)
    assert suggest.counterfactual_model is None
    assert "suggest_only" in suggest.reason_codes
    assert dry.counterfactual_model == "mini"
    assert "dry_run_counterfactual" in dry.reason_codes
    # when the recommendation is what is served there is nothing to compare
    assert route(STANDARD, mode=RoutingMode.DRY_RUN).counterfactual_model is None


def test_enforced_serves_the_recommendation() -> None:
    d = route(SIMPLE, mode=RoutingMode.ENFORCED)
    assert (d.recommended_model, d.served_model) == ("mini", "mini")
    assert d.reason_codes[:2] == ["mode_enforced", "score_simple"]


@pytest.mark.parametrize("mode", list(RoutingMode))
def test_auto_is_always_routed(mode: RoutingMode) -> None:
    d = route(SIMPLE, requested=None, mode=mode)
    assert d.requested_model == AUTO_MODEL
    assert (d.recommended_model, d.served_model) == ("mini", "mini")
    assert "auto_model" in d.reason_codes
    assert d.counterfactual_model is None


@pytest.mark.parametrize("mode", list(RoutingMode))
def test_auto_without_candidates_is_a_clear_client_error(mode: RoutingMode) -> None:
    with pytest.raises(InvalidRequest) as exc:
        route(SIMPLE, requested=None, mode=mode, models=[MINI], needs=Needs(vision=True))
    err = exc.value
    assert (err.code, err.param, err.status) == ("no_capable_model", "model", 400)
    assert "palyra/auto" in err.message and "mini: missing_capability:vision" in err.message


@pytest.mark.parametrize("mode", [RoutingMode.SUGGEST, RoutingMode.DRY_RUN, RoutingMode.ENFORCED])
def test_no_candidates_serves_the_requested_model(mode: RoutingMode) -> None:
    d = route(COMPLEX, requested=MINI, mode=mode, models=[MINI], needs=Needs(vision=True))
    assert (d.recommended_model, d.served_model) == (None, "mini")
    assert {"no_candidates", "requested_not_capable"} <= set(d.reason_codes)
    assert d.counterfactual_model is None


def test_requested_model_is_filtered_like_any_other() -> None:
    # the reference let the default skip the capability filters; here it is excluded and replaced
    d = route(SIMPLE, requested=MINI, needs=Needs(vision=True))
    assert candidate(d, "mini")["eligible"] is False
    assert (d.recommended_model, d.served_model) == ("std", "std")
    assert "kept_requested" not in d.reason_codes


def test_decisions_are_deterministic() -> None:
    assert route(COMPLEX) == route(COMPLEX)
    assert route(SIMPLE, requested=None) == route(SIMPLE, requested=None)
