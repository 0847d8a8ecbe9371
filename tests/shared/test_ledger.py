"""The budget ledger's behaviour, in process and shared through Redis by two replicas."""

from __future__ import annotations

import asyncio

import pytest

from palyra.errors import BudgetExceeded
from palyra.governance.budgets import Attribution, Estimate, Policy

WHO = Attribution(agent_id="a1", session_id="s1", token_id="t1")


def usd(
    policy_id: str = "p",
    hard: float | None = 1.0,
    soft: float | None = None,
    window: str = "day",
    scope: str = "global",
) -> Policy:
    return Policy(policy_id, scope, "usd", window, soft, hard)


async def test_concurrent_reservations_on_two_replicas_never_exceed_the_hard_limit(
    replicas, settle_all
) -> None:
    a, b = replicas.ledgers(usd(hard=1.0))
    results = await asyncio.gather(
        *(led.reserve(WHO, Estimate(usd=0.1, tokens=10)) for led in [a, b] * 50), return_exceptions=True
    )
    admitted = [(led, r) for led, r in zip([a, b] * 50, results, strict=True) if not isinstance(r, Exception)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) == 10 and len(refused) == 90
    assert replicas.loads == ["p"]  # spend loaded once, however many requests and replicas raced for it
    assert "budget 'p'" in refused[0].message and "hard limit of $1.000000" in refused[0].message
    for led, r in admitted:
        led.settle(r, 0.1, 10)
    await settle_all(a, b)
    await b.load_all()
    status = b.status(b.policies[0])
    assert status["spent"] == pytest.approx(1.0) and status["reserved"] == pytest.approx(0.0)
    assert status["remaining"] == pytest.approx(0.0)


async def test_settlement_frees_room_for_the_other_replica_and_is_idempotent(replicas, settle_all) -> None:
    a, b = replicas.ledgers(usd(hard=1.0))
    r = await a.reserve(WHO, Estimate(usd=0.9, tokens=0))
    with pytest.raises(BudgetExceeded):
        await b.reserve(WHO, Estimate(usd=0.2, tokens=0))
    a.settle(r, 0.3, 0)
    a.settle(r, 0.3, 0)
    await settle_all(a)
    await b.load_all()
    assert b.status(b.policies[0])["spent"] == pytest.approx(0.3)
    assert b.status(b.policies[0])["reserved"] == pytest.approx(0.0)
    await b.reserve(WHO, Estimate(usd=0.5, tokens=0))
    with pytest.raises(BudgetExceeded):
        await a.reserve(WHO, Estimate(usd=0.3, tokens=0))


async def test_a_replica_reads_its_own_settlements(replicas) -> None:
    a, _ = replicas.ledgers(usd(hard=1.0))
    r = await a.reserve(WHO, Estimate(usd=1.0, tokens=0))
    a.settle(r, 0.25, 0)  # no flush: the next reservation must see it anyway
    await a.reserve(WHO, Estimate(usd=0.75, tokens=0))


async def test_token_budget_and_scopes(replicas, settle_all) -> None:
    tokens = Policy("tok", "agent:a1", "tokens", "total", None, 100)
    other = Policy("other-agent", "agent:zz", "tokens", "total", None, 1)
    a, b = replicas.ledgers(tokens, other)
    r = await a.reserve(WHO, Estimate(usd=None, tokens=60))
    with pytest.raises(BudgetExceeded, match="100 tokens"):
        await b.reserve(WHO, Estimate(usd=None, tokens=60))
    a.settle(r, None, 10)
    await settle_all(a)
    await b.reserve(WHO, Estimate(usd=None, tokens=80))
    assert [p.policy_id for p in b.applicable(WHO)] == ["tok"]


async def test_unpriced_requests_are_not_held_against_usd_budgets(replicas) -> None:
    a, _ = replicas.ledgers(usd(hard=0.01))
    r = await a.reserve(WHO, Estimate(usd=None, tokens=5))
    assert r.holds == []
    a.settle(r, None, 5)


async def test_soft_limit_alert_and_status(replicas) -> None:
    a, b = replicas.ledgers(usd(hard=10.0, soft=1.0))
    first = await a.reserve(WHO, Estimate(usd=0.5, tokens=0))
    assert first.status == "ok" and replicas.alerts == []
    second = await b.reserve(WHO, Estimate(usd=0.6, tokens=0))
    assert second.status == "soft_limit" and second.crossed == b.policies
    assert replicas.alerts and replicas.alerts[0][0] == "p"
    await a.load_all()
    status = a.status(a.policies[0])
    assert status["reserved"] == pytest.approx(1.1) and status["remaining"] == pytest.approx(8.9)


async def test_loaded_spend_counts(replicas) -> None:
    a, b = replicas.ledgers(usd(hard=1.0), loaded=[(1, 0.95)])
    with pytest.raises(BudgetExceeded):
        await a.reserve(WHO, Estimate(usd=0.1, tokens=0))
    with pytest.raises(BudgetExceeded):
        await b.reserve(WHO, Estimate(usd=0.1, tokens=0))
    assert replicas.loads == ["p"]


async def test_day_window_rolls_over_at_midnight_utc(replicas, clock, settle_all) -> None:
    clock.now = 1_795_046_340.0  # 2026-11-18 23:59:00 UTC
    a, b = replicas.ledgers(usd(hard=1.0), clock=clock)
    r = await a.reserve(WHO, Estimate(usd=0.9, tokens=0))
    a.settle(r, 0.9, 0)
    await settle_all(a)
    with pytest.raises(BudgetExceeded):
        await b.reserve(WHO, Estimate(usd=0.2, tokens=0))
    clock.now += 61  # 2026-11-19 00:00:01
    await b.reserve(WHO, Estimate(usd=0.9, tokens=0))


async def test_rolling_window_forgets_old_spend(replicas, clock, settle_all) -> None:
    a, b = replicas.ledgers(usd(hard=1.0, window="rolling_24h"), clock=clock)
    r = await a.reserve(WHO, Estimate(usd=1.0, tokens=0))
    a.settle(r, 1.0, 0)
    await settle_all(a)
    clock.now += 23 * 3600
    with pytest.raises(BudgetExceeded):
        await b.reserve(WHO, Estimate(usd=0.1, tokens=0))
    clock.now += 3600 + 120
    await b.reserve(WHO, Estimate(usd=0.9, tokens=0))
    await a.load_all()
    assert a.status(a.policies[0])["spent"] == pytest.approx(0.0)


async def test_every_applicable_policy_must_have_room(replicas, settle_all) -> None:
    agent = usd("agent", hard=0.5, scope="agent:a1")
    a, b = replicas.ledgers(usd("global", hard=10.0), agent)
    r = await a.reserve(WHO, Estimate(usd=0.4, tokens=0))
    with pytest.raises(BudgetExceeded, match="budget 'agent'"):
        await b.reserve(WHO, Estimate(usd=0.2, tokens=0))
    # the refusal held nothing on the global policy either
    await b.load_all()
    assert b.status(agent)["reserved"] == pytest.approx(0.4)
    assert b.status(b.policies[0])["reserved"] == pytest.approx(0.4)
    a.settle(r, 0.1, 0)
    await settle_all(a)
    await b.reserve(WHO, Estimate(usd=0.4, tokens=0))


async def test_policy_changes(replicas) -> None:
    a, _ = replicas.ledgers(usd(hard=1.0))
    await a.reserve(WHO, Estimate(usd=0.5, tokens=0))
    a.set_policy(usd("q", hard=0.1))
    with pytest.raises(BudgetExceeded, match="budget 'q'"):
        await a.reserve(WHO, Estimate(usd=0.2, tokens=0))
    assert a.remove_policy("q") and not a.remove_policy("q")
    assert [p.policy_id for p in a.policies] == ["p"]
