"""The budget ledger in Redis: the same reservations and settlements as ``BudgetLedger``, shared by
every replica, so a hard limit holds for the fleet and not once per replica.

``reserve`` is one Lua script over every applicable policy: it checks each hard limit
(spent + reserved + amount ≤ limit + 1e-9) and only if all pass adds every hold, so two replicas can
never both take the last room. ``settle`` is one script too: it releases the holds of one reservation
and adds the actual amount, keyed by the reservation id, so running it twice changes nothing.

Keys, all under the ``palyra:{prefix}`` hash tag (``<pk>`` is the policy id plus a hash of its scope,
metric and window, so redefining a policy's scope starts a fresh account):

- ``bud:<pk>:w:<window key>`` hash, calendar and ``total`` windows: ``settled``, ``loaded``.
- ``bud:<pk>:roll`` hash and ``bud:<pk>:roll:idx`` zset, rolling windows: ``settled`` (the running
  sum), ``m:<minute>`` buckets, and the minutes in order so old ones are evicted in O(evicted).
- ``bud:<pk>:reserved``: amount held by requests in flight (INCRBYFLOAT).
- ``bud:hold:<reservation id>`` hash: which reserved keys it holds and how much, and its state
  (held | expired | settled), kept a day after settlement so a retried settle is recognised.
- ``bud:holds`` zset: holds by expiry time, swept at the start of every reservation.
- ``bud:<pk>:load:<window key>``: SET NX lock so one replica loads a window's spend from the database.

Spend already in the database is loaded once per policy and window: the replica that wins the lock
runs the loader, the others poll until the account is marked loaded (at most ``load_wait_s``).

Overspend bound. As in process, a hard limit is exceeded only by what settled requests cost beyond
their estimates. Two things add to that here, both documented operator trade-offs:

- A hold expires ``hold_ttl_s`` (default 15 min) after it was made and is released by the next sweep,
  so a replica that crashed mid-request does not hold budget for ever. A request still running after
  that long stops counting against the limit until it settles; the bound grows by the estimates of
  requests that outlive ``hold_ttl_s``.
- If Redis loses its data (restart without persistence), accounts are reloaded from the database;
  settlements of reservations Redis no longer knows are dropped (their runs are in the database), so
  only requests in flight and not yet journaled at that moment can be missed.

Failure mode: with Redis unreachable ``reserve`` raises ``SharedStateUnavailable``
(``budget_store_unavailable``, HTTP 503): budgets fail closed. ``settle`` never raises: it queues the
settlement in memory (at most ``retry_queue_max``) and a background task sends it, in batches of up to
256 per round trip (5 ms after the first is queued), retrying with backoff until Redis returns; holds
made before the outage keep counting meanwhile. ``reserve`` does not wait for this replica's queued
settlements (their holds still count, which errs on the safe side) unless a budget would block it:
then it sends them and asks once more, so a replica still reads its own writes where it matters.
``load_all`` always sends them first.
``status`` is synchronous and reports what this replica last read (on ``reserve`` and ``load_all``).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import itertools
import logging
import math
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from palyra.errors import BudgetExceeded
from palyra.governance.budgets import (
    ROLLING_S,
    AlertSink,
    Attribution,
    BudgetLedger,
    Estimate,
    Policy,
    Reservation,
    SpendLoader,
    _amount,
    _fmt,
    window_key,
    window_start,
)
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.redis_state import RedisState, text

log = logging.getLogger("palyra.shared.budgets")

BUDGET_UNAVAILABLE = "budget_store_unavailable"
HOLD_TTL_S = 900.0
SETTLED_KEEP_S = 86_400.0  # how long a settled reservation id is remembered (retries must end sooner)
ALLOWANCE_REQUESTS = 32  # an allowance covers about this many requests like the one that asked for it
_ALLOWANCE_LEAST = 4  # smaller grants are not worth keeping: close to a limit, every request asks Redis
ALLOWANCE_IDLE_S = 1.0  # an allowance not drawn on for this long goes back to the fleet
ALLOWANCE_RENEW_S = 60.0  # draws stop this long after the last grant; the next reservation renews it
_DAY_MS = 86_400_000
_CALENDAR_TTL_MS = {"day": 3 * _DAY_MS, "week": 9 * _DAY_MS, "month": 33 * _DAY_MS}
_LOAD_LOCK_MS = 30_000
_BATCH = 256  # settlements per round trip
SETTLE_COALESCE_S = 0.005
_MAX_REFUSALS = 20  # a settlement Redis rejects this often (not an outage) is dropped, loudly

_LUA_PRELUDE = """
local EPS = 1e-9
local function neg(s)
  if string.sub(s, 1, 1) == '-' then return string.sub(s, 2) end
  return '-' .. s
end
local function release(hk)
  local n = tonumber(redis.call('HGET', hk, 'n') or '0')
  for i = 1, n do
    local k = redis.call('HGET', hk, 'k' .. i)
    local a = redis.call('HGET', hk, 'a' .. i)
    if k and a then
      if tonumber(redis.call('INCRBYFLOAT', k, neg(a))) < EPS then redis.call('SET', k, '0') end
    end
  end
end
local function sweep(holds, now)
  local due = redis.call('ZRANGEBYSCORE', holds, '-inf', now, 'LIMIT', 0, 100)
  for _, hk in ipairs(due) do
    if redis.call('HGET', hk, 'state') == 'held' then
      release(hk)
      redis.call('HSET', hk, 'state', 'expired')
    end
    redis.call('ZREM', holds, hk)
  end
  return #due
end
local function spent(acct, idx, horizon)
  if horizon ~= '' then
    local old = redis.call('ZRANGEBYSCORE', idx, '-inf', '(' .. horizon, 'LIMIT', 0, 5000)
    for _, m in ipairs(old) do
      local a = redis.call('HGET', acct, 'm:' .. m)
      if a then
        redis.call('HINCRBYFLOAT', acct, 'settled', neg(a))
        redis.call('HDEL', acct, 'm:' .. m)
      end
      redis.call('ZREM', idx, m)
    end
  end
  local s = tonumber(redis.call('HGET', acct, 'settled') or '0')
  if s < 0 then s = 0 end
  return s
end
"""

# KEYS: holds, hold, then per policy i: account, minute index, reserved, this replica's lease
# ARGV: now ms, hold expiry ms, hold keep ms, n, then per policy i: amount, hard, soft, horizon minute,
#       allowance wanted, least allowance worth granting
# Reply: 'ok', then per policy i: spent, reserved (this request and any allowance included), soft limit
#        crossed ('1'/'0'), allowance granted
_RESERVE = (
    _LUA_PRELUDE
    + """
local holds, hk, n = KEYS[1], KEYS[2], tonumber(ARGV[4])
for i = 1, n do  -- a script is not rolled back on error: validate before the first write
  local b = 4 + 6 * (i - 1)
  if not (tonumber(ARGV[b + 1]) and tonumber(ARGV[b + 5]) and tonumber(ARGV[b + 6])) then
    return redis.error_reply('invalid amount')
  end
end
sweep(holds, ARGV[1])
for i = 1, n do
  if redis.call('HGET', KEYS[2 + 4 * (i - 1) + 1], 'loaded') ~= '1' then return {'unloaded', tostring(i)} end
end
local replay = redis.call('EXISTS', hk) == 1
local out = {'ok'}
local grants = {}
for i = 1, n do
  local b, kb = 4 + 6 * (i - 1), 2 + 4 * (i - 1)
  local amount, hard, soft = tonumber(ARGV[b + 1]), ARGV[b + 2], ARGV[b + 3]
  local s = spent(KEYS[kb + 1], KEYS[kb + 2], ARGV[b + 4])
  local r = tonumber(redis.call('GET', KEYS[kb + 3]) or '0')
  if replay then r = r - amount end
  local after = s + r + amount
  if not replay and hard ~= '' and after > tonumber(hard) + EPS then
    return {'blocked', tostring(i), tostring(s), tostring(r)}
  end
  local crossed = '0'
  if soft ~= '' and after >= tonumber(soft) then crossed = '1' end
  -- An allowance for this replica's next requests: at most an eighth of the room left under the hard
  -- and soft limits, none when that is less than the least worth granting (close to a limit every
  -- request asks Redis, so the limit is exact there).
  local g = 0
  local want, least = tonumber(ARGV[b + 5]), tonumber(ARGV[b + 6])
  if replay then  -- the reply to the first run was lost: report the allowance it granted
    g = tonumber(redis.call('HGET', hk, 'g' .. i) or '0')
  elseif want > 0 and crossed == '0' then
    local room = want * 8
    if hard ~= '' then room = math.min(room, tonumber(hard) - after) end
    if soft ~= '' then room = math.min(room, tonumber(soft) - after) end
    g = math.min(want, room / 8)
    if g < least then g = 0 end
  end
  grants[i] = g
  out[#out + 1] = tostring(s)
  out[#out + 1] = tostring(r + amount + g)
  out[#out + 1] = crossed
  out[#out + 1] = tostring(g)
end
if not replay then
  for i = 1, n do
    local b, kb = 4 + 6 * (i - 1), 2 + 4 * (i - 1)
    local a, rk, lk = ARGV[b + 1], KEYS[kb + 3], KEYS[kb + 4]
    redis.call('INCRBYFLOAT', rk, a)
    redis.call('HSET', hk, 'k' .. i, rk, 'a' .. i, a)
    if grants[i] > 0 then
      local g = tostring(grants[i])
      redis.call('INCRBYFLOAT', rk, g)
      if redis.call('HGET', lk, 'state') == 'held' then
        redis.call('HINCRBYFLOAT', lk, 'a1', g)
      else
        redis.call('DEL', lk)
        redis.call('HSET', lk, 'n', 1, 'k1', rk, 'a1', g, 'state', 'held')
      end
      redis.call('PEXPIRE', lk, ARGV[3])
      redis.call('ZADD', holds, ARGV[2], lk)
      redis.call('HSET', hk, 'g' .. i, g)
    end
  end
  redis.call('HSET', hk, 'n', n, 'state', 'held')
  redis.call('PEXPIRE', hk, ARGV[3])
  redis.call('ZADD', holds, ARGV[2], hk)
end
return out
"""
)

# KEYS: holds, hold (or, for a draw on allowances, its marker), then per actual j: account, minute
#       index, then per allowance drawn on k: the lease
# ARGV: keep ms, n, m, then per actual j: amount, minute ('' unless rolling), account ttl ms ('' for
#       none), then per allowance k: the amount drawn
_SETTLE = (
    _LUA_PRELUDE
    + """
local holds, hk, n, m = KEYS[1], KEYS[2], tonumber(ARGV[2]), tonumber(ARGV[3])
for j = 1, n do  -- a script is not rolled back on error: validate before the first write
  if not tonumber(ARGV[3 + 3 * (j - 1) + 1]) then return redis.error_reply('invalid amount') end
end
for k = 1, m do
  if not tonumber(ARGV[3 + 3 * n + k]) then return redis.error_reply('invalid amount') end
end
local state
if m > 0 then
  -- A draw on this replica's allowances: the marker makes a resent settlement a no-op; the drawn
  -- amounts leave the leases (and the reserved sums) unless a lease has expired or been given back.
  for k = 1, m do  -- a lease Redis no longer knows (it lost its data): the journal has the run
    if not redis.call('HGET', KEYS[2 + 2 * n + k], 'state') then return 'unknown' end
  end
  if not redis.call('SET', hk, 'settled', 'NX', 'PX', ARGV[1]) then return 'duplicate' end
  state = 'drawn'
  for k = 1, m do
    local lk = KEYS[2 + 2 * n + k]
    if redis.call('HGET', lk, 'state') == 'held' then
      local left = tonumber(redis.call('HGET', lk, 'a1') or '0')
      local d = math.min(tonumber(ARGV[3 + 3 * n + k]), left)
      if d > 0 then
        redis.call('HINCRBYFLOAT', lk, 'a1', tostring(-d))
        local rk = redis.call('HGET', lk, 'k1')
        if tonumber(redis.call('INCRBYFLOAT', rk, tostring(-d))) < EPS then redis.call('SET', rk, '0') end
      end
    end
  end
else
  state = redis.call('HGET', hk, 'state')
  if not state then return 'unknown' end
  if state == 'settled' then return 'duplicate' end
  if state == 'held' then release(hk) end
  redis.call('ZREM', holds, hk)
end
for j = 1, n do
  local b = 3 + 3 * (j - 1)
  local acct, idx = KEYS[1 + 2 * j], KEYS[2 + 2 * j]
  local amount, minute, ttl = ARGV[b + 1], ARGV[b + 2], ARGV[b + 3]
  redis.call('HINCRBYFLOAT', acct, 'settled', amount)
  if minute ~= '' then
    redis.call('HINCRBYFLOAT', acct, 'm:' .. minute, amount)
    redis.call('ZADD', idx, minute, minute)
    if ttl ~= '' then redis.call('PEXPIRE', idx, ttl) end
  end
  if ttl ~= '' then redis.call('PEXPIRE', acct, ttl) end
end
if m == 0 then
  redis.call('HSET', hk, 'state', 'settled')
  redis.call('PEXPIRE', hk, ARGV[1])
end
return state
"""
)

# KEYS: a lease, this give-back's marker. ARGV: the amount to give back (what this replica has not
# drawn), marker ttl ms. The marker makes a resent give-back (a reply lost, the call retried) a no-op.
_GIVE_BACK = """
if not redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then return '0' end
if redis.call('HGET', KEYS[1], 'state') ~= 'held' then return '0' end
local left = tonumber(redis.call('HGET', KEYS[1], 'a1') or '0')
local d = math.min(tonumber(ARGV[1]) or 0, left)
if d <= 0 then return '0' end
redis.call('HINCRBYFLOAT', KEYS[1], 'a1', tostring(-d))
local rk = redis.call('HGET', KEYS[1], 'k1')
if tonumber(redis.call('INCRBYFLOAT', rk, tostring(-d))) < 1e-9 then redis.call('SET', rk, '0') end
return tostring(d)
"""

# KEYS: account, minute index, lock. ARGV: lock token, ttl ms or '', total, then minute, amount pairs
_LOAD = """
for i = 3, #ARGV do  -- a script is not rolled back on error: validate before the first write
  if not tonumber(ARGV[i]) then return redis.error_reply('invalid spend') end
end
if redis.call('HGET', KEYS[1], 'loaded') ~= '1' then
  if tonumber(ARGV[3]) ~= 0 then redis.call('HINCRBYFLOAT', KEYS[1], 'settled', ARGV[3]) end
  for i = 4, #ARGV, 2 do
    redis.call('HINCRBYFLOAT', KEYS[1], 'm:' .. ARGV[i], ARGV[i + 1])
    redis.call('ZADD', KEYS[2], ARGV[i], ARGV[i])
  end
  redis.call('HSET', KEYS[1], 'loaded', '1')
  if ARGV[2] ~= '' then
    redis.call('PEXPIRE', KEYS[1], ARGV[2])
    redis.call('PEXPIRE', KEYS[2], ARGV[2])
  end
end
if redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
return 1
"""

_UNLOCK = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""

# KEYS: holds, account, minute index, reserved. ARGV: now ms, horizon
_READ = (
    _LUA_PRELUDE
    + """
sweep(KEYS[1], ARGV[1])
local s = spent(KEYS[2], KEYS[3], ARGV[2])
local r = tonumber(redis.call('GET', KEYS[4]) or '0')
return {tostring(s), tostring(r)}
"""
)

_SWEEP = _LUA_PRELUDE + "\nreturn sweep(KEYS[1], ARGV[1])\n"


@dataclass
class SharedReservation(Reservation):
    """A reservation whose holds live in Redis under ``reservation_id``, or, when ``draws`` is set, a
    draw on this replica's allowances: (lease key, amount) per hold, taken without a round trip."""

    reservation_id: str = ""
    draws: list[tuple[str, float]] = field(default_factory=list)


@dataclass(slots=True)
class _Allowance:
    """Room this replica took from Redis ahead of need (a hold named ``lease``) and has not drawn yet."""

    lease: str
    account: str  # the account (policy and window) it was granted for
    left: float
    renew_by: float  # monotonic: no draws after this; the next reservation asks Redis and renews
    used_at: float  # monotonic: last grant or draw
    session: int  # the Redis connection it was granted over: a reconnect ends it (Redis may be empty)


@dataclass(frozen=True, slots=True)
class _Account:
    key: str
    index: str  # minute index (rolling windows; unused otherwise)
    horizon: str  # first minute still in a rolling window, '' for calendar windows
    ttl_ms: str  # '' for no expiry
    window: str  # window key, names the load lock


@dataclass(slots=True)
class _Settlement:
    reservation_id: str
    keys: list[str]
    args: list[str]
    queued_at: float
    refusals: int = 0
    draws: _DrawBatch | None = None  # draws on allowances, summed until the batch is sent


@dataclass(slots=True)
class _DrawBatch:
    """The settlements of draws on allowances, summed: they commute, so every request drawn between
    two sends costs Redis one script call in all, under one marker that makes a resend a no-op."""

    actuals: dict[tuple[str, str, str, str], float] = field(default_factory=dict)  # acct, idx, min, ttl
    leases: dict[str, float] = field(default_factory=dict)  # lease -> amount drawn
    closed: bool = False

    def close(self, item: _Settlement) -> None:
        """Freeze the sums into the item's keys and args (a retry sends exactly the same)."""
        if self.closed:
            return
        self.closed = True
        item.keys[2:] = []
        item.args[1:] = [str(len(self.actuals)), str(len(self.leases))]
        for (account, index, minute, ttl), amount in self.actuals.items():
            item.keys += [account, index]
            item.args += [_num(amount), minute, ttl]
        for lease, amount in self.leases.items():
            item.keys.append(lease)
            item.args.append(_num(amount))


class RedisBudgetLedger(BudgetLedger):
    def __init__(
        self,
        policies: list[Policy],
        loader: SpendLoader,
        on_soft_limit: AlertSink,
        *,
        redis: RedisState,
        clock: Callable[[], float] = time.time,
        hold_ttl_s: float = HOLD_TTL_S,
        load_wait_s: float = 10.0,
        retry_queue_max: int = 10_000,
        allowance_requests: int = ALLOWANCE_REQUESTS,
    ) -> None:
        super().__init__(policies, loader, on_soft_limit, clock=clock)
        self._redis = redis
        self._hold_ttl_ms = int(hold_ttl_s * 1000)
        self._load_wait_s = load_wait_s
        self._queue_max = retry_queue_max
        self._holds_key = redis.key("bud", "holds")
        self._reserve_script = redis.script(_RESERVE)
        self._settle_script = redis.script(_SETTLE)
        self._load_script = redis.script(_LOAD)
        self._unlock_script = redis.script(_UNLOCK)
        self._give_back_script = redis.script(_GIVE_BACK)
        self._allowance_requests = max(0, allowance_requests)
        self._allowances: dict[str, _Allowance] = {}  # policy key -> this replica's allowance
        self._replica = uuid.uuid4().hex[:12]
        self._draw_ids = itertools.count(1)
        self._idle_timer: asyncio.TimerHandle | None = None
        self._giving_back: set[asyncio.Task[None]] = set()
        self._open_draws: _DrawBatch | None = None
        self._read_script = redis.script(_READ)
        self._sweep_script = redis.script(_SWEEP)
        self._loaded: dict[str, str] = {}  # policy key -> account key known to be loaded
        self._loads: dict[str, asyncio.Future[None]] = {}  # account key -> load in progress here
        self._snapshots: dict[str, tuple[str, float, float]] = {}  # policy id -> (window, spent, reserved)
        self._pending: deque[_Settlement] = deque()
        self._drainer: asyncio.Task[bool] | None = None
        self._coalescing: asyncio.TimerHandle | None = None
        self._retry: asyncio.TimerHandle | None = None
        self._send_failures = 0
        self._closed = False

    # --- policies ------------------------------------------------------------------------------

    def set_policy(self, policy: Policy) -> None:
        super().set_policy(policy)
        self._snapshots.pop(policy.policy_id, None)

    def remove_policy(self, policy_id: str) -> bool:
        self._snapshots.pop(policy_id, None)
        return super().remove_policy(policy_id)

    # --- reserve -------------------------------------------------------------------------------

    async def reserve(self, who: Attribution, estimate: Estimate) -> Reservation:
        policies = self.applicable(who)
        # This replica's unsent settlements are not awaited: until one lands its hold (the estimate)
        # still counts, which errs on the safe side; waiting here would queue every reservation
        # behind the whole backlog.
        now = self._clock()
        holds: list[tuple[Policy, float]] = []
        for policy in policies:
            amount = _amount(policy, estimate.usd, estimate.tokens)
            if amount is not None and math.isfinite(amount):  # unpriced: not held against USD budgets
                holds.append((policy, amount))
        if not holds:
            return SharedReservation(holds=holds)
        accounts = [self._account(policy, now) for policy, _ in holds]
        draws = self._draw(holds, accounts)
        if draws is not None:  # the common case far from every limit: no round trip
            return SharedReservation(holds=holds, reservation_id=self._draw_id(), draws=draws)
        reservation = SharedReservation(holds=holds, reservation_id=uuid.uuid4().hex)
        for (policy, _), account in zip(holds, accounts, strict=True):
            await self._load_account(policy, account, now)
        now_ms = int(now * 1000)
        keys = [self._holds_key, self._hold_key(reservation.reservation_id)]
        args: list[str | int | float] = [now_ms, now_ms + self._hold_ttl_ms, self._keep_ms(), len(holds)]
        leases: list[str] = []
        for (policy, amount), account in zip(holds, accounts, strict=True):
            lease = self._lease_for(_policy_key(policy), account.key)
            leases.append(lease)
            keys += [account.key, account.index, self._reserved_key(policy), lease]
            args += [_num(amount), _limit(policy.hard_limit), _limit(policy.soft_limit), account.horizon]
            args += [_num(amount * self._allowance_requests), _num(amount * _ALLOWANCE_LEAST)]
        reply = await self._reserve_once(keys, args, holds, accounts, now)
        if text(reply[0]) == "blocked" and (self._pending or self._allowances):
            # Close to the limit: this replica's own allowances and unsent settlements may free the
            # room (their holds are estimates); give them back, send them and ask once more.
            with contextlib.suppress(SharedStateUnavailable):
                await self.give_back_allowances()
                await self.flush()
            reply = await self._reserve_once(keys, args, holds, accounts, now)
        if text(reply[0]) == "blocked":
            policy, amount = holds[int(text(reply[1])) - 1]
            spent, reserved = float(text(reply[2])), float(text(reply[3]))
            self._snapshots[policy.policy_id] = (window_key(policy.window, now), spent, reserved)
            assert policy.hard_limit is not None
            raise BudgetExceeded(
                f"budget '{policy.policy_id}' ({policy.scope}, {policy.window}) would exceed its hard "
                f"limit of {_fmt(policy, policy.hard_limit)}: {_fmt(policy, spent)} spent, "
                f"{_fmt(policy, reserved)} reserved, this request needs up to {_fmt(policy, amount)}",
                param=None,
            )
        crossed: list[tuple[Policy, float]] = []
        for i, (policy, _) in enumerate(holds):
            spent, reserved = float(text(reply[1 + 4 * i])), float(text(reply[2 + 4 * i]))
            self._snapshots[policy.policy_id] = (window_key(policy.window, now), spent, reserved)
            if text(reply[3 + 4 * i]) == "1":
                crossed.append((policy, spent))
            granted = float(text(reply[4 + 4 * i]))
            if granted > 0:
                self._granted(_policy_key(policy), leases[i], accounts[i].key, granted)
        if crossed:
            reservation.status = "soft_limit"
            reservation.crossed = [policy for policy, _ in crossed]
        for policy, spent in crossed:
            self._on_soft(policy, window_key(policy.window, now), spent, policy.soft_limit or 0)
        return reservation

    async def _reserve_once(
        self,
        keys: list[str],
        args: list[str | int | float],
        holds: list[tuple[Policy, float]],
        accounts: list[_Account],
        now: float,
    ) -> Any:
        for _ in range(3):
            reply = await self._redis.run(self._reserve_script, keys, args, code=BUDGET_UNAVAILABLE)
            if text(reply[0]) != "unloaded":
                return reply
            index = int(text(reply[1])) - 1  # Redis lost the account (restart): load it again
            self._loaded.pop(_policy_key(holds[index][0]), None)
            await self._load_account(holds[index][0], accounts[index], now)
        raise SharedStateUnavailable(
            "budget state keeps disappearing from Redis; retry shortly", code=BUDGET_UNAVAILABLE
        )

    # --- settle --------------------------------------------------------------------------------

    def settle(self, reservation: Reservation, actual_usd: float | None, actual_tokens: int) -> None:
        """Replace the holds by what the request really cost. Idempotent, never raises, never waits:
        the settlement is queued and sent by a background task, retried until Redis takes it."""
        if reservation.settled:
            return
        reservation.settled = True
        if not isinstance(reservation, SharedReservation) or not reservation.holds:
            return
        now = self._clock()
        if reservation.draws:
            self._settle_draw(reservation, actual_usd, actual_tokens, now)
            return
        keys = [self._holds_key, self._hold_key(reservation.reservation_id)]
        args = [str(self._keep_ms()), "0", "0"]
        for policy, _ in reservation.holds:
            amount = _amount(policy, actual_usd, actual_tokens)
            if not amount or not math.isfinite(amount) or policy.policy_id not in self._policies:
                continue
            account = self._account(policy, now)
            keys += [account.key, account.index]
            minute = str(int(now // 60)) if policy.window in ROLLING_S else ""
            args += [_num(amount), minute, account.ttl_ms]
        args[1] = str((len(keys) - 2) // 2)
        self._enqueue(_Settlement(reservation.reservation_id, keys, args, time.monotonic()))

    def _settle_draw(
        self, reservation: SharedReservation, actual_usd: float | None, actual_tokens: int, now: float
    ) -> None:
        batch = self._open_draws
        if batch is None or batch.closed:
            batch = self._open_draws = _DrawBatch()
            marker = self._redis.key("bud", "draw", self._draw_id())
            item = _Settlement(marker, [self._holds_key, marker], [str(self._keep_ms())], time.monotonic())
            item.draws = batch
            self._enqueue(item)
        for policy, _ in reservation.holds:
            amount = _amount(policy, actual_usd, actual_tokens)
            if not amount or not math.isfinite(amount) or policy.policy_id not in self._policies:
                continue
            account = self._account(policy, now)
            minute = str(int(now // 60)) if policy.window in ROLLING_S else ""
            where = (account.key, account.index, minute, account.ttl_ms)
            batch.actuals[where] = batch.actuals.get(where, 0.0) + amount
        for lease, amount in reservation.draws:
            batch.leases[lease] = batch.leases.get(lease, 0.0) + amount

    @property
    def pending_settlements(self) -> int:
        """Settlements made here and not yet accepted by Redis (a gauge for operators)."""
        return len(self._pending)

    async def flush(self) -> None:
        """Send every queued settlement now; raises ``SharedStateUnavailable`` if Redis is unreachable."""
        while self._pending:
            self._kick()
            drainer = self._drainer
            if drainer is None:  # pragma: no cover - _kick always starts one inside a running loop
                break
            if not await asyncio.shield(drainer):
                raise SharedStateUnavailable(
                    f"the budget store (Redis) is unreachable; {len(self._pending)} settlement(s) queued",
                    code=BUDGET_UNAVAILABLE,
                    retry_after_s=1.0,
                )

    def _enqueue(self, item: _Settlement) -> None:
        if len(self._pending) >= self._queue_max:
            dropped = self._pending.popleft()
            if dropped.draws is not None:
                dropped.draws.closed = True  # nothing more is added to a batch that will not be sent
            log.error(
                "budget settlement queue full (%d); dropped reservation %s: its hold expires by itself, "
                "its actual cost is not counted in Redis",
                self._queue_max,
                dropped.reservation_id,
            )
        self._pending.append(item)
        if self._coalescing is None and not self._closed:
            # A few milliseconds' grace: the settlements of concurrent requests leave in one round
            # trip, and a request's own settlement is not sent while its response is being written.
            try:
                self._coalescing = asyncio.get_running_loop().call_later(SETTLE_COALESCE_S, self._send_now)
            except RuntimeError:
                return  # no loop (a synchronous caller): the next flush() sends it

    def _send_now(self) -> None:
        self._coalescing = None
        self._kick()

    def _kick(self) -> None:
        if self._drainer is not None and not self._drainer.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # no loop (a synchronous caller): the next flush() or reserve() sends it
        self._drainer = loop.create_task(self._drain())

    async def _drain(self) -> bool:
        """Send the queue in batches of ``_BATCH`` (one round trip each, however many requests settled
        meanwhile); settlements commute, so one Redis refuses goes to the back."""
        refused_in_a_row = 0
        while self._pending and refused_in_a_row < len(self._pending):
            now = time.monotonic()
            while self._pending and now - self._pending[0].queued_at > SETTLED_KEEP_S - 3600:
                # Redis would no longer recognise a retry of it; sending it now could count it twice.
                log.error(
                    "budget settlement %s is too old to retry; dropped", self._pending[0].reservation_id
                )
                self._pending.popleft()
            batch = list(itertools.islice(self._pending, _BATCH))
            if not batch:
                break
            for item in batch:
                if item.draws is not None:
                    item.draws.close(item)
            try:
                replies = await self._redis.run_many(
                    self._settle_script, [(item.keys, item.args) for item in batch], code=BUDGET_UNAVAILABLE
                )
            except SharedStateUnavailable as exc:
                if exc.transient:  # an outage: everything behind it would fail the same way
                    self._schedule_retry()
                    return False
                replies = [exc] * len(batch)
            for item, reply in zip(batch, replies, strict=True):
                if isinstance(reply, BaseException):
                    if not isinstance(reply, SharedStateUnavailable):
                        log.error("sending budget settlement %s failed: %s", item.reservation_id, reply)
                    refused_in_a_row += 1
                    self._refused(item)
                else:
                    refused_in_a_row = 0
                    self._remove(item)
        if self._pending:
            self._schedule_retry()
            return False
        self._send_failures = 0
        return True

    def _refused(self, item: _Settlement) -> None:
        self._remove(item)
        item.refusals += 1
        if item.refusals >= _MAX_REFUSALS:
            log.error("budget settlement %s refused %d times; dropped", item.reservation_id, item.refusals)
            return
        self._pending.append(item)

    def _remove(self, item: _Settlement) -> None:
        if self._pending and self._pending[0] is item:
            self._pending.popleft()
        else:  # the queue overflowed meanwhile
            with contextlib.suppress(ValueError):
                self._pending.remove(item)

    def _schedule_retry(self) -> None:
        self._send_failures += 1
        if self._retry is not None or self._closed:
            return
        delay = min(0.25 * 2 ** (self._send_failures - 1), 5.0)

        def fire() -> None:
            self._retry = None
            self._kick()

        self._retry = asyncio.get_running_loop().call_later(delay, fire)

    # --- status and loading --------------------------------------------------------------------

    def status(self, policy: Policy) -> dict[str, float | str | None]:
        """Spend as this replica last read it (on ``reserve`` and ``load_all``)."""
        now = self._clock()
        key = window_key(policy.window, now)
        snapshot = self._snapshots.get(policy.policy_id)
        spent: float | None = None
        reserved = 0.0
        if snapshot is not None:
            spent = snapshot[1] if snapshot[0] == key else 0.0
            reserved = snapshot[2]
        return {
            "window_key": key,
            "window_start": window_start(policy.window, now),
            "spent": spent,
            "reserved": reserved,
            "remaining": None
            if policy.hard_limit is None or spent is None
            else max(0.0, policy.hard_limit - spent - reserved),
        }

    async def load_all(self) -> None:
        """Load every policy's spend if needed and refresh what ``status`` reports."""
        if self._pending:
            with contextlib.suppress(SharedStateUnavailable):
                await self.flush()
        now = self._clock()
        for policy in list(self._policies.values()):
            account = self._account(policy, now)
            await self._load_account(policy, account, now)
            reply = await self._redis.run(
                self._read_script,
                [self._holds_key, account.key, account.index, self._reserved_key(policy)],
                [int(now * 1000), account.horizon],
                code=BUDGET_UNAVAILABLE,
            )
            self._snapshots[policy.policy_id] = (
                window_key(policy.window, now),
                float(text(reply[0])),
                float(text(reply[1])),
            )

    async def sweep(self) -> int:
        """Release holds past their expiry now (reservations also do this); returns how many."""
        now_ms = int(self._clock() * 1000)
        return int(
            await self._redis.run(self._sweep_script, [self._holds_key], [now_ms], code=BUDGET_UNAVAILABLE)
        )

    async def aclose(self, timeout_s: float = 5.0) -> None:
        """Try to send queued settlements before shutdown; what cannot be sent is logged."""
        try:
            await asyncio.wait_for(self._give_back_then_flush(), timeout_s)
        except (SharedStateUnavailable, TimeoutError):
            log.error("shutting down with %d budget settlement(s) not sent to Redis", len(self._pending))
        self._closed = True
        if self._coalescing is not None:
            self._coalescing.cancel()
            self._coalescing = None
        if self._retry is not None:
            self._retry.cancel()
            self._retry = None
        if self._drainer is not None and not self._drainer.done():
            self._drainer.cancel()
        if self._idle_timer is not None:
            self._idle_timer.cancel()
            self._idle_timer = None
        for task in list(self._giving_back):
            task.cancel()

    async def _give_back_then_flush(self) -> None:
        await self.give_back_allowances()
        await self.flush()

    # --- allowances ----------------------------------------------------------------------------
    #
    # Far from a limit, a reservation that asks Redis also takes an allowance for this replica: room
    # for about ``allowance_requests`` more requests like it, held in Redis under a lease (a hold
    # like any other, swept when it expires), so it counts against the limit for every replica. The
    # next requests draw on it here without a round trip; their settlements take what they drew out
    # of the lease. At most an eighth of the room left is granted at a time, and nothing once that is
    # less than a few requests' worth: close to a hard or soft limit every request asks Redis, so the
    # limit stays exact there (at most what allowances other replicas still hold is blocked early,
    # and an idle allowance goes back within ``ALLOWANCE_IDLE_S``).

    def _draw(
        self, holds: list[tuple[Policy, float]], accounts: list[_Account]
    ) -> list[tuple[str, float]] | None:
        if not self._allowances:
            return None
        mono = time.monotonic()
        session = self._redis.pipe.session  # 0 once the connection is lost: budgets fail closed
        found: list[_Allowance] = []
        for (policy, amount), account in zip(holds, accounts, strict=True):
            allowance = self._allowances.get(_policy_key(policy))
            if (
                allowance is None
                or allowance.session != session
                or allowance.account != account.key
                or allowance.left + 1e-9 < amount
                or mono >= allowance.renew_by
            ):
                return None
            found.append(allowance)
        draws: list[tuple[str, float]] = []
        for allowance, (_, amount) in zip(found, holds, strict=True):
            allowance.left -= amount
            allowance.used_at = mono
            draws.append((allowance.lease, amount))
        return draws

    def _lease_for(self, pk: str, account: str) -> str:
        """The lease key a grant tops up: this replica's current one for the account, or a new name
        (so a settlement drawn on a lease Redis has lost is recognised and not counted twice)."""
        allowance = self._allowances.get(pk)
        if (
            allowance is not None
            and allowance.account == account
            and allowance.session == self._redis.pipe.session
        ):
            return allowance.lease
        return self._redis.key("bud", "lease", self._replica, str(next(self._draw_ids)))

    def _draw_id(self) -> str:
        return f"{self._replica}-{next(self._draw_ids)}"

    def _granted(self, pk: str, lease: str, account: str, amount: float) -> None:
        mono = time.monotonic()
        session = self._redis.pipe.session
        allowance = self._allowances.get(pk)
        if allowance is not None and allowance.lease == lease and allowance.session == session:
            allowance.left += amount
            allowance.renew_by = mono + ALLOWANCE_RENEW_S
            allowance.used_at = mono
        else:
            if allowance is not None and allowance.lease != lease:  # granted for an earlier window
                self._give_back_soon(allowance)
            # (granted over an earlier connection: what Redis still holds of it expires by itself)
            self._allowances[pk] = _Allowance(lease, account, amount, mono + ALLOWANCE_RENEW_S, mono, session)
        if self._idle_timer is None and not self._closed:
            with contextlib.suppress(RuntimeError):
                self._idle_timer = asyncio.get_running_loop().call_later(ALLOWANCE_IDLE_S, self._check_idle)

    def _check_idle(self) -> None:
        self._idle_timer = None
        mono = time.monotonic()
        for pk, allowance in list(self._allowances.items()):
            if mono - allowance.used_at >= ALLOWANCE_IDLE_S or mono >= allowance.renew_by:
                del self._allowances[pk]
                self._give_back_soon(allowance)
        if self._allowances and not self._closed:
            self._idle_timer = asyncio.get_running_loop().call_later(ALLOWANCE_IDLE_S, self._check_idle)

    def _give_back_soon(self, allowance: _Allowance) -> None:
        if allowance.left <= 0:
            return
        task = asyncio.get_running_loop().create_task(self._give_back(allowance))
        self._giving_back.add(task)
        task.add_done_callback(self._giving_back.discard)

    async def _give_back(self, allowance: _Allowance) -> None:
        amount, allowance.left = allowance.left, 0.0
        with contextlib.suppress(SharedStateUnavailable):  # else the lease expires by itself
            marker = self._redis.key("bud", "back", self._draw_id())
            await self._redis.run(
                self._give_back_script,
                [allowance.lease, marker],
                [_num(amount), self._keep_ms()],
                code=BUDGET_UNAVAILABLE,
            )

    async def give_back_allowances(self) -> None:
        """Return every allowance this replica holds to the fleet now (tests, shutdown, a block)."""
        allowances = list(self._allowances.values())
        self._allowances.clear()
        await asyncio.gather(*(self._give_back(a) for a in allowances if a.left > 0))

    async def _load_account(self, policy: Policy, account: _Account, now: float) -> None:
        pk = _policy_key(policy)
        if self._loaded.get(pk) == account.key:
            return
        pending = self._loads.get(account.key)
        if pending is not None:
            await asyncio.shield(pending)
            return
        pending = asyncio.get_running_loop().create_future()
        self._loads[account.key] = pending
        try:
            await self._load_shared(policy, account, now)
            self._loaded[pk] = account.key
            pending.set_result(None)
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                pending.cancel()
            else:
                pending.set_exception(exc)
                pending.exception()  # retrieved: waiters get it, nobody else has to
            raise
        finally:
            self._loads.pop(account.key, None)

    async def _load_shared(self, policy: Policy, account: _Account, now: float) -> None:
        """Load the window's spend from the database once for all replicas (SET NX lock), or wait."""
        lock = self._redis.key("bud", _policy_key(policy), "load", account.window)
        deadline = time.monotonic() + self._load_wait_s
        delay = 0.02
        while True:
            loaded = await self._redis.command("HGET", account.key, "loaded", code=BUDGET_UNAVAILABLE)
            if loaded is not None and text(loaded) == "1":
                return
            token = uuid.uuid4().hex
            if await self._redis.command(
                "SET", lock, token, "NX", "PX", _LOAD_LOCK_MS, code=BUDGET_UNAVAILABLE
            ):
                break
            if time.monotonic() > deadline:
                raise SharedStateUnavailable(
                    f"the spend of budget '{policy.policy_id}' is still being loaded by another replica",
                    code=BUDGET_UNAVAILABLE,
                    retry_after_s=1.0,
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.2)
        try:
            rows = [
                (minute, amount)
                for minute, amount in await self._loader(policy, window_start(policy.window, now))
                if math.isfinite(amount)
            ]
        except BaseException:
            with contextlib.suppress(SharedStateUnavailable):  # else the lock expires by itself
                await self._redis.run(self._unlock_script, [lock], [token], code=BUDGET_UNAVAILABLE)
            raise
        args: list[str | int | float] = [token, account.ttl_ms, _num(math.fsum(a for _, a in rows))]
        if policy.window in ROLLING_S:
            for minute, amount in sorted(rows):
                args += [minute, _num(amount)]
        await self._redis.run(
            self._load_script, [account.key, account.index, lock], args, code=BUDGET_UNAVAILABLE
        )

    # --- keys ----------------------------------------------------------------------------------

    def _account(self, policy: Policy, now: float) -> _Account:
        pk = _policy_key(policy)
        if policy.window in ROLLING_S:
            length = ROLLING_S[policy.window]
            key = self._redis.key("bud", pk, "roll")
            horizon = str(int((now - length) // 60))
            return _Account(key, key + ":idx", horizon, str(length * 1000 + 2 * _DAY_MS), "roll")
        window = window_key(policy.window, now)
        key = self._redis.key("bud", pk, "w", window)
        ttl = _CALENDAR_TTL_MS.get(policy.window)
        return _Account(key, key + ":idx", "", "" if ttl is None else str(ttl), window)

    def _reserved_key(self, policy: Policy) -> str:
        return self._redis.key("bud", _policy_key(policy), "reserved")

    def _hold_key(self, reservation_id: str) -> str:
        return self._redis.key("bud", "hold", reservation_id)

    def _keep_ms(self) -> int:
        return self._hold_ttl_ms + int(SETTLED_KEEP_S * 1000)


def _policy_key(policy: Policy) -> str:
    return _shaped_key(policy.policy_id, policy.scope, policy.metric, policy.window)


@functools.lru_cache(maxsize=4096)
def _shaped_key(policy_id: str, scope: str, metric: str, window: str) -> str:
    shape = hashlib.sha1(f"{scope}|{metric}|{window}".encode(), usedforsecurity=False)
    return f"{policy_id}@{shape.hexdigest()[:10]}"


def _num(value: float) -> str:
    return repr(float(value))


def _limit(value: float | None) -> str:
    return "" if value is None else _num(value)
