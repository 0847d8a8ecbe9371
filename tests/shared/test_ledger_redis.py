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
    keys += [account.key, account.index, ledger._reserved_key(POLICY), state.key("bud", "lease", "test")]
    now_ms = int(ledger._clock() * 1000)
    args = [now_ms, now_ms + 60_000, 120_000, 1, "0.4", "1.0", "", "", "0", "0"]
    await state.run(ledger._reserve_script, keys, args)
    assert await _spent_reserved(ledger) == (pytest.approx(0.0), pytest.approx(0.4))


async def test_a_settlement_redis_refuses_does_not_block_the_others(redis_factory) -> None:
    ledger = _ledger(redis_factory())
    bad = await ledger.reserve(WHO, Estimate(usd=0.3, tokens=0))
    good = await ledger.reserve(WHO, Estimate(usd=0.2, tokens=0))
    ledger.settle(bad, 0.3, 0)
    ledger._pending[-1].args[3] = "not-a-number"  # a settlement the script rejects before writing
    ledger.settle(good, 0.1, 0)
    with pytest.raises(SharedStateUnavailable):
        await ledger.flush()
    assert ledger.pending_settlements == 1  # the good one went through, the bad one waits
    # nothing of the rejected one was half-applied: its hold is still there, once
    assert await _spent_reserved(ledger) == (pytest.approx(0.1), pytest.approx(0.3))
    await ledger.reserve(WHO, Estimate(usd=0.5, tokens=0))  # reservations are not blocked by it
    await ledger.aclose(timeout_s=0.5)


# --- allowances: room a replica takes ahead of need, far from a limit --------------------------------

BIG = Policy("p", "global", "usd", "day", None, 100.0)


def _big_ledger(state, **options) -> RedisBudgetLedger:
    return RedisBudgetLedger([BIG], _noload, lambda *_: None, redis=state, **options)


async def _big_spent_reserved(ledger: RedisBudgetLedger) -> tuple[float, float]:
    await ledger.load_all()
    status = ledger.status(BIG)
    return float(status["spent"] or 0.0), float(status["reserved"] or 0.0)


async def test_far_from_the_limit_reservations_draw_on_an_allowance(redis_factory) -> None:
    ledger = _big_ledger(redis_factory())
    first = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert not first.draws  # asked Redis, and took room for 32 more like it
    assert await _big_spent_reserved(ledger) == (pytest.approx(0.0), pytest.approx(0.01 + 0.32))
    drawn = [await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0)) for _ in range(32)]
    assert all(r.draws for r in drawn)  # no round trip for these
    again = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert not again.draws  # the allowance ran out: Redis again (and a top-up)
    for r in [first, *drawn, again]:
        ledger.settle(r, 0.005, 0)
    await ledger.flush()
    spent, reserved = await _big_spent_reserved(ledger)
    assert spent == pytest.approx(34 * 0.005)
    assert reserved == pytest.approx(0.32)  # the top-up, not drawn on yet
    await ledger.give_back_allowances()
    assert await _big_spent_reserved(ledger) == (pytest.approx(34 * 0.005), pytest.approx(0.0))
    await ledger.aclose()


async def test_an_idle_allowance_goes_back_to_the_fleet(redis_factory) -> None:
    ledger = _big_ledger(redis_factory())
    r = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    ledger.settle(r, 0.01, 0)
    await ledger.flush()
    assert (await _big_spent_reserved(ledger))[1] == pytest.approx(0.32)
    await asyncio.sleep(2.2)  # ALLOWANCE_IDLE_S, checked every second
    assert await _big_spent_reserved(ledger) == (pytest.approx(0.01), pytest.approx(0.0))
    await ledger.aclose()


async def test_close_to_a_limit_every_reservation_asks_redis(redis_factory) -> None:
    ledger = _ledger(redis_factory())  # 1.0 USD: room for five 0.2 requests, none to spare
    held = [await ledger.reserve(WHO, Estimate(usd=0.2, tokens=0)) for _ in range(5)]
    assert not any(r.draws for r in held)
    with pytest.raises(BudgetExceeded):
        await ledger.reserve(WHO, Estimate(usd=0.2, tokens=0))
    await ledger.aclose()


async def test_allowances_never_let_replicas_exceed_a_hard_limit(redis_factory) -> None:
    limit = Policy("p", "global", "usd", "day", None, 2.0)
    replicas = [RedisBudgetLedger([limit], _noload, lambda *_: None, redis=redis_factory()) for _ in range(3)]
    admitted = []

    async def client(ledger: RedisBudgetLedger) -> None:
        for _ in range(200):
            try:
                admitted.append((ledger, await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))))
            except BudgetExceeded:
                return

    await asyncio.gather(*(client(ledger) for ledger in replicas for _ in range(8)))
    assert any(r.draws for _, r in admitted)  # allowances were in play
    assert 0.01 * len(admitted) <= 2.0 + 1e-9  # never more admitted than the limit has room for
    assert len(admitted) >= 190  # and at most a few requests' worth blocked early (other replicas')
    for ledger, r in admitted:
        ledger.settle(r, 0.01, 0)
    for ledger in replicas:
        await ledger.give_back_allowances()
        await ledger.flush()
    status = replicas[0]
    await status.load_all()
    assert status.status(limit)["spent"] == pytest.approx(0.01 * len(admitted))
    assert status.status(limit)["reserved"] == pytest.approx(0.0)
    for ledger in replicas:
        await ledger.aclose()


async def test_a_resent_draw_settlement_counts_once(redis_factory) -> None:
    ledger = _big_ledger(redis_factory())
    await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    drawn = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert drawn.draws
    ledger.settle(drawn, 0.004, 0)
    item = ledger._pending[-1]
    await ledger.flush()
    ledger._pending.append(item)  # the reply was lost: the drainer sends it again
    await ledger.flush()
    assert (await _big_spent_reserved(ledger))[0] == pytest.approx(0.004)
    await ledger.aclose()


async def test_no_draws_once_the_connection_to_redis_is_lost(redis_factory) -> None:
    state = redis_factory()
    ledger = _big_ledger(state)
    await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert (await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))).draws
    await state.pipe.close()  # what a Redis restart looks like from here
    # the room may be gone with Redis' data: the next reservation asks again (and reconnects)
    assert not (await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))).draws
    await ledger.aclose()


async def test_a_draw_on_a_lease_redis_lost_is_not_counted(redis_factory) -> None:
    """Redis restarted empty: the run is in the journal, which the account reloads from."""
    state = redis_factory()
    ledger = _big_ledger(state)
    await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    drawn = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert drawn.draws
    await state.command("DEL", drawn.draws[0][0])
    ledger.settle(drawn, 0.004, 0)
    await ledger.flush()
    assert (await _big_spent_reserved(ledger))[0] == pytest.approx(0.0)
    await ledger.aclose()


async def test_draw_settlements_leave_summed_in_one_call(redis_factory) -> None:
    ledger = _big_ledger(redis_factory())
    first = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    drawn = [await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0)) for _ in range(10)]
    ledger.settle(first, 0.01, 0)
    for r in drawn:
        ledger.settle(r, 0.003, 0)
    assert ledger.pending_settlements == 2  # the reservation's own, and one for all ten draws
    await ledger.flush()
    later = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    assert later.draws
    ledger.settle(later, 0.002, 0)  # a new batch: the sent one is frozen
    await ledger.flush()
    await ledger.give_back_allowances()
    assert await _big_spent_reserved(ledger) == (pytest.approx(0.01 + 10 * 0.003 + 0.002), pytest.approx(0.0))
    await ledger.aclose()


async def test_a_resent_give_back_returns_the_room_once(redis_factory) -> None:
    """A give-back whose reply was lost is sent again; the in-flight draw must stay reserved."""
    state = redis_factory()
    ledger = _big_ledger(state)
    first = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    drawn = await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))  # in flight, drawn from the lease
    allowance = next(iter(ledger._allowances.values()))
    left = allowance.left
    sent: list[tuple[list[str], list[object]]] = []
    real_run = state.run

    async def recording(script, keys, args, **kw):  # type: ignore[no-untyped-def]
        if script is ledger._give_back_script:
            sent.append((list(keys), list(args)))
        return await real_run(script, keys, args, **kw)

    state.run = recording  # type: ignore[method-assign]
    await ledger.give_back_allowances()
    keys, args = sent[0]
    await real_run(ledger._give_back_script, keys, args)  # the same call once more
    state.run = real_run  # type: ignore[method-assign]
    # reserved: the first request's own hold and the draw still in flight, nothing more, nothing less
    assert (await _big_spent_reserved(ledger))[1] == pytest.approx(0.01 + 0.01)
    assert left == pytest.approx(0.32 - 0.01)
    ledger.settle(first, 0.01, 0)
    ledger.settle(drawn, 0.01, 0)
    await ledger.flush()
    assert await _big_spent_reserved(ledger) == (pytest.approx(0.02), pytest.approx(0.0))
    await ledger.aclose()


async def test_a_retried_reservation_reports_the_allowance_it_granted(redis_factory) -> None:
    """The reply to a reservation was lost and the script ran again: the allowance granted the first
    time is reported, not granted twice nor left in Redis unknown to the replica."""
    state = redis_factory()
    ledger = _big_ledger(state)
    replies: list[object] = []
    real_run = state.run

    async def twice(script, keys, args, **kw):  # type: ignore[no-untyped-def]
        if script is not ledger._reserve_script:
            return await real_run(script, keys, args, **kw)
        await real_run(script, keys, args, **kw)  # this reply is "lost"
        reply = await real_run(script, keys, args, **kw)
        replies.append(reply)
        return reply

    state.run = twice  # type: ignore[method-assign]
    await ledger.reserve(WHO, Estimate(usd=0.01, tokens=0))
    state.run = real_run  # type: ignore[method-assign]
    assert float(replies[0][4]) == pytest.approx(0.32)  # type: ignore[index]
    assert next(iter(ledger._allowances.values())).left == pytest.approx(0.32)
    assert (await _big_spent_reserved(ledger))[1] == pytest.approx(0.01 + 0.32)  # held once
    await ledger.give_back_allowances()
    assert (await _big_spent_reserved(ledger))[1] == pytest.approx(0.01)
    await ledger.aclose()
