"""What only the shared ledger has to get right: crashed replicas, Redis outages, retried settlements."""

from __future__ import annotations

import asyncio

import pytest

from palyra.errors import BudgetExceeded
from palyra.governance.budgets import Attribution, Estimate, Policy
from palyra.shared import RedisBudgetLedger, SharedStateUnavailable

WHO = Attribution(agent_id="a1", session_id="s1", token_id="t1")
POLICY = Policy("p", "global", "usd", "day", None, 1.0)


async def _noload(policy: Policy, start: float) -> list[tuple[int, float]]:
    return []


def _ledger(state, clock=None, **options) -> RedisBudgetLedger:
    kw = {"clock": clock} if clock else {}
    return RedisBudgetLedger([POLICY], _noload, lambda *_: None, redis=state, **kw, **options)


async def _spent_reserved(ledger: RedisBudgetLedger) -> tuple[float, float]:
    await ledger.load_all()
    status = ledger.status(POLICY)
    assert status["spent"] is not None
    return float(status["spent"]), float(status["reserved"] or 0.0)


async def test_a_crashed_replicas_hold_expires(redis_factory, clock) -> None:
    crashed = _ledger(redis_factory(), clock, hold_ttl_s=60)
    other = _ledger(redis_factory(), clock, hold_ttl_s=60)
    r = await crashed.reserve(WHO, Estimate(usd=0.9, tokens=0))
    with pytest.raises(BudgetExceeded):
        await other.reserve(WHO, Estimate(usd=0.2, tokens=0))
    clock.now += 61  # the replica never settles: its hold is swept by the next reservation
    await other.reserve(WHO, Estimate(usd=0.2, tokens=0))
    assert await _spent_reserved(other) == (pytest.approx(0.0), pytest.approx(0.2))
    # If the "crashed" replica was only slow, its late settlement still counts its cost, once.
    crashed.settle(r, 0.7, 0)
    await crashed.flush()
    assert await _spent_reserved(other) == (pytest.approx(0.7), pytest.approx(0.2))


async def test_sweep_releases_expired_holds(redis_factory, clock) -> None:
    ledger = _ledger(redis_factory(), clock, hold_ttl_s=10)
    await ledger.reserve(WHO, Estimate(usd=0.5, tokens=0))
    assert await ledger.sweep() == 0
    clock.now += 11
    assert await ledger.sweep() == 1
    assert await _spent_reserved(ledger) == (pytest.approx(0.0), pytest.approx(0.0))


async def test_unreachable_redis_refuses_reservations_with_503(redis_factory, dead_redis_url) -> None:
    ledger = _ledger(redis_factory(dead_redis_url))
    with pytest.raises(SharedStateUnavailable) as info:
        await ledger.reserve(WHO, Estimate(usd=0.1, tokens=0))
    assert info.value.status == 503 and info.value.code == "budget_store_unavailable"
    with pytest.raises(SharedStateUnavailable):
        await ledger.load_all()
    # nothing to hold: no Redis needed, as in process
    assert (await ledger.reserve(WHO, Estimate(usd=None, tokens=1))).holds == []


async def test_outage_fails_closed_then_recovers_without_double_counting(redis_factory, proxy) -> None:
    flaky = _ledger(redis_factory(proxy.url))
    other = _ledger(redis_factory())
    r1 = await flaky.reserve(WHO, Estimate(usd=0.5, tokens=0))

    await proxy.stop()  # Redis gone for this replica, mid-request
    flaky.settle(r1, 0.4, 0)  # never raises: queued
    assert flaky.pending_settlements == 1
    with pytest.raises(SharedStateUnavailable):
        await flaky.reserve(WHO, Estimate(usd=0.1, tokens=0))
    with pytest.raises(SharedStateUnavailable):
        await flaky.flush()
    # the hold made before the outage keeps counting for everyone else
    assert await _spent_reserved(other) == (pytest.approx(0.0), pytest.approx(0.5))
    with pytest.raises(BudgetExceeded):
        await other.reserve(WHO, Estimate(usd=0.6, tokens=0))

    await proxy.start()  # Redis is back: the queued settlement goes out by itself
    for _ in range(100):
        if flaky.pending_settlements == 0:
            break
        await asyncio.sleep(0.05)
    assert flaky.pending_settlements == 0
    assert await _spent_reserved(other) == (pytest.approx(0.4), pytest.approx(0.0))
    r2 = await flaky.reserve(WHO, Estimate(usd=0.6, tokens=0))
    flaky.settle(r2, 0.6, 0)
    flaky.settle(r2, 0.6, 0)
    await flaky.flush()
    assert await _spent_reserved(other) == (pytest.approx(1.0), pytest.approx(0.0))


async def test_a_settlement_whose_reply_was_lost_is_retried_and_counted_once(redis_factory, proxy) -> None:
    flaky = _ledger(redis_factory(proxy.url))
    other = _ledger(redis_factory())
    r = await flaky.reserve(WHO, Estimate(usd=0.5, tokens=0))
    proxy.drop_replies = True  # Redis runs the settlement, the answer never arrives
    flaky.settle(r, 0.3, 0)
    with pytest.raises(SharedStateUnavailable):
        await flaky.flush()
    assert flaky.pending_settlements == 1
    assert await _spent_reserved(other) == (pytest.approx(0.3), pytest.approx(0.0))  # it did land
    proxy.drop_replies = False
    await flaky.flush()  # the retry is recognised by its reservation id
    assert flaky.pending_settlements == 0
    assert await _spent_reserved(other) == (pytest.approx(0.3), pytest.approx(0.0))


async def test_a_fresh_client_after_failures_works(redis_factory, dead_redis_url) -> None:
    down = _ledger(redis_factory(dead_redis_url))
    with pytest.raises(SharedStateUnavailable):
        await down.reserve(WHO, Estimate(usd=0.1, tokens=0))
    up = _ledger(redis_factory())
    r = await up.reserve(WHO, Estimate(usd=0.1, tokens=0))
    up.settle(r, 0.1, 0)
    await up.flush()
    assert await _spent_reserved(up) == (pytest.approx(0.1), pytest.approx(0.0))


async def test_lost_redis_data_is_reloaded_from_the_database(redis_factory) -> None:
    state = redis_factory()
    rows: list[tuple[int, float]] = []
    loads: list[float] = []

    async def loader(policy: Policy, start: float) -> list[tuple[int, float]]:
        loads.append(start)
        return list(rows)

    ledger = RedisBudgetLedger([POLICY], loader, lambda *_: None, redis=state)
    r = await ledger.reserve(WHO, Estimate(usd=0.2, tokens=0))
    ledger.settle(r, 0.2, 0)
    await ledger.flush()
    rows.append((1, 0.2))  # the journal wrote the run to the database meanwhile
    await state.delete_namespace()  # Redis restarted without persistence
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(WHO, Estimate(usd=0.9, tokens=0))
    assert len(loads) == 2
    assert await _spent_reserved(ledger) == (pytest.approx(0.2), pytest.approx(0.0))


async def test_retry_queue_is_bounded(redis_factory, dead_redis_url) -> None:
    up = _ledger(redis_factory())
    reservations = [await up.reserve(WHO, Estimate(usd=0.01, tokens=0)) for _ in range(3)]
    down = _ledger(redis_factory(dead_redis_url), retry_queue_max=2)
    for r in reservations:
        down.settle(r, 0.01, 0)
    assert down.pending_settlements == 2
    await down.aclose(timeout_s=0.2)


async def test_reserving_twice_with_one_id_holds_once(redis_factory) -> None:
    """A reservation script retried after a lost reply must not hold twice."""
    state = redis_factory()
    ledger = _ledger(state)
    r = await ledger.reserve(WHO, Estimate(usd=0.4, tokens=0))
    hold = state.key("bud", "hold", r.reservation_id)  # type: ignore[attr-defined]
    assert await state.command("HGET", hold, "state") == "held"
    keys = [state.key("bud", "holds"), hold]
    account = ledger._account(POLICY, ledger._clock())
    keys += [account.key, account.index, ledger._reserved_key(POLICY)]
    now_ms = int(ledger._clock() * 1000)
    await state.run(ledger._reserve_script, keys, [now_ms, now_ms + 60_000, 120_000, 1, "0.4", "1.0", "", ""])
    assert await _spent_reserved(ledger) == (pytest.approx(0.0), pytest.approx(0.4))


async def test_a_settlement_redis_refuses_does_not_block_the_others(redis_factory) -> None:
    ledger = _ledger(redis_factory())
    bad = await ledger.reserve(WHO, Estimate(usd=0.3, tokens=0))
    good = await ledger.reserve(WHO, Estimate(usd=0.2, tokens=0))
    ledger.settle(bad, 0.3, 0)
    ledger._pending[-1].args[2] = "not-a-number"  # a settlement the script rejects before writing
    ledger.settle(good, 0.1, 0)
    with pytest.raises(SharedStateUnavailable):
        await ledger.flush()
    assert ledger.pending_settlements == 1  # the good one went through, the bad one waits
    # nothing of the rejected one was half-applied: its hold is still there, once
    assert await _spent_reserved(ledger) == (pytest.approx(0.1), pytest.approx(0.3))
    await ledger.reserve(WHO, Estimate(usd=0.5, tokens=0))  # reservations are not blocked by it
    await ledger.aclose(timeout_s=0.5)
