"""The budget ledger: atomic reservations, settlement, soft-limit alerts, and window boundaries."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest

from palyra.errors import BudgetExceeded
from palyra.governance.budgets import Attribution, BudgetLedger, Estimate, Policy, window_key, window_start

WHO = Attribution(agent_id="a1", session_id="s1", token_id="t1")


class Clock:
    def __init__(self, at: datetime) -> None:
        self.now = at.timestamp()

    def __call__(self) -> float:
        return self.now


def ledger(*policies: Policy, clock: Clock | None = None, loaded: list[tuple[int, float]] | None = None):  # type: ignore[no-untyped-def]
    alerts: list[tuple[str, str]] = []
    loads: list[str] = []

    async def loader(policy: Policy, start: float) -> list[tuple[int, float]]:
        loads.append(policy.policy_id)
        await asyncio.sleep(0.01)
        return list(loaded or [])

    led = BudgetLedger(
        list(policies),
        loader,
        lambda p, w, spent, limit: alerts.append((p.policy_id, w)),
        **({"clock": clock} if clock else {}),
    )
    return led, alerts, loads


def usd(
    policy_id: str = "p",
    hard: float | None = 1.0,
    soft: float | None = None,
    window: str = "day",
    scope: str = "global",
) -> Policy:
    return Policy(policy_id, scope, "usd", window, soft, hard)


async def test_concurrent_reservations_never_exceed_the_hard_limit() -> None:
    led, _, loads = ledger(usd(hard=1.0))
    results = await asyncio.gather(
        *(led.reserve(WHO, Estimate(usd=0.1, tokens=10)) for _ in range(100)), return_exceptions=True
    )
    admitted = [r for r in results if not isinstance(r, BaseException)]
    refused = [r for r in results if isinstance(r, BudgetExceeded)]
    assert len(admitted) == 10 and len(refused) == 90
    assert loads == ["p"]  # spend loaded once, however many requests raced for it
    assert "budget 'p'" in refused[0].message
    for r in admitted:
        led.settle(r, 0.1, 10)  # type: ignore[arg-type]
    status = led.status(led.policies[0])
    assert status["spent"] == pytest.approx(1.0) and status["reserved"] == 0.0


async def test_settlement_frees_room_and_is_idempotent() -> None:
    led, _, _ = ledger(usd(hard=1.0))
    r = await led.reserve(WHO, Estimate(usd=0.9, tokens=0))
    with pytest.raises(BudgetExceeded):
        await led.reserve(WHO, Estimate(usd=0.2, tokens=0))
    led.settle(r, 0.3, 0)
    led.settle(r, 0.3, 0)
    assert led.status(led.policies[0])["spent"] == pytest.approx(0.3)
    await led.reserve(WHO, Estimate(usd=0.5, tokens=0))


async def test_token_budget_and_scopes() -> None:
    tokens = Policy("tok", "agent:a1", "tokens", "total", None, 100)
    other = Policy("other-agent", "agent:zz", "tokens", "total", None, 1)
    led, _, _ = ledger(tokens, other)
    r = await led.reserve(WHO, Estimate(usd=None, tokens=60))
    with pytest.raises(BudgetExceeded, match="100 tokens"):
        await led.reserve(WHO, Estimate(usd=None, tokens=60))
    led.settle(r, None, 10)
    await led.reserve(WHO, Estimate(usd=None, tokens=80))
    assert [p.policy_id for p in led.applicable(WHO)] == ["tok"]


async def test_unpriced_requests_are_not_held_against_usd_budgets() -> None:
    led, _, _ = ledger(usd(hard=0.01))
    r = await led.reserve(WHO, Estimate(usd=None, tokens=5))
    assert r.holds == []


async def test_soft_limit_alert_and_status() -> None:
    led, alerts, _ = ledger(usd(hard=10.0, soft=1.0))
    first = await led.reserve(WHO, Estimate(usd=0.5, tokens=0))
    assert first.status == "ok" and alerts == []
    second = await led.reserve(WHO, Estimate(usd=0.6, tokens=0))
    assert second.status == "soft_limit" and alerts and alerts[0][0] == "p"


async def test_loaded_spend_counts() -> None:
    led, _, _ = ledger(usd(hard=1.0), loaded=[(1, 0.95)])
    with pytest.raises(BudgetExceeded):
        await led.reserve(WHO, Estimate(usd=0.1, tokens=0))


def test_calendar_windows_in_utc() -> None:
    at = datetime(2026, 11, 25, 18, 30, tzinfo=UTC).timestamp()  # a Wednesday
    assert window_start("day", at) == datetime(2026, 11, 25, tzinfo=UTC).timestamp()
    assert window_start("week", at) == datetime(2026, 11, 23, tzinfo=UTC).timestamp()
    assert window_start("month", at) == datetime(2026, 11, 1, tzinfo=UTC).timestamp()
    assert window_start("total", at) == 0.0
    assert window_start("rolling_24h", at) == at - 86400
    assert window_key("month", at) == "2026-11-01"


async def test_day_window_rolls_over_at_midnight_utc() -> None:
    clock = Clock(datetime(2026, 11, 25, 23, 59, 0, tzinfo=UTC))
    led, _, _ = ledger(usd(hard=1.0), clock=clock)
    r = await led.reserve(WHO, Estimate(usd=0.9, tokens=0))
    led.settle(r, 0.9, 0)
    with pytest.raises(BudgetExceeded):
        await led.reserve(WHO, Estimate(usd=0.2, tokens=0))
    clock.now = datetime(2026, 11, 26, 0, 0, 1, tzinfo=UTC).timestamp()
    await led.reserve(WHO, Estimate(usd=0.9, tokens=0))


async def test_month_window_boundary() -> None:
    clock = Clock(datetime(2026, 11, 30, 23, 0, tzinfo=UTC))
    led, _, _ = ledger(usd(hard=1.0, window="month"), clock=clock)
    led.settle(await led.reserve(WHO, Estimate(usd=1.0, tokens=0)), 1.0, 0)
    with pytest.raises(BudgetExceeded):
        await led.reserve(WHO, Estimate(usd=0.01, tokens=0))
    clock.now = datetime(2026, 12, 1, 0, 0, 1, tzinfo=UTC).timestamp()
    await led.reserve(WHO, Estimate(usd=0.5, tokens=0))


async def test_rolling_window_forgets_old_spend() -> None:
    clock = Clock(datetime(2026, 11, 25, 12, 0, tzinfo=UTC))
    led, _, _ = ledger(usd(hard=1.0, window="rolling_24h"), clock=clock)
    led.settle(await led.reserve(WHO, Estimate(usd=1.0, tokens=0)), 1.0, 0)
    clock.now += 23 * 3600
    with pytest.raises(BudgetExceeded):
        await led.reserve(WHO, Estimate(usd=0.1, tokens=0))
    clock.now += 3600 + 120
    await led.reserve(WHO, Estimate(usd=0.9, tokens=0))
