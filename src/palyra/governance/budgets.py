"""Budgets: reserve before the upstream call, settle after, against every policy that covers a request.

A request reserves its estimated cost (USD from the price table, or tokens) on each applicable policy
in one synchronous step: no ``await`` between checking and adding, so concurrent requests in this
process cannot both take the last room. Over a hard limit the request is refused before any upstream
call; crossing a soft limit raises one alert per policy and window. After the call the reservation is
replaced by the actual amount. Spend already in the database is loaded once per policy (single-flight).

Windows are UTC calendar days, ISO weeks and months, rolling 24 h / 7 d / 30 d (minute buckets), or
``total``. Overshoot is bounded by the estimates: a request whose actual cost exceeds its estimate can
push spend past the limit by that difference, never by the cost of requests that were refused.
"""

from __future__ import annotations

import asyncio
import functools
import math
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from palyra.config.models import BudgetConfig
from palyra.errors import BudgetExceeded

# Sums of float prices drift by ~1e-16; a limit is not "exceeded" by rounding noise.
_EPSILON = 1e-9
ROLLING_S = {"rolling_24h": 86_400, "rolling_7d": 7 * 86_400, "rolling_30d": 30 * 86_400}


@dataclass(frozen=True, slots=True)
class Attribution:
    agent_id: str | None
    session_id: str | None
    token_id: str | None


@dataclass(frozen=True, slots=True)
class Policy:
    policy_id: str
    scope: str
    metric: str  # usd | tokens
    window: str
    soft_limit: float | None
    hard_limit: float | None
    webhook_url: str | None = None
    source: str = "config"

    @classmethod
    def from_config(cls, c: BudgetConfig, source: str = "config") -> Policy:
        return cls(
            c.policy_id, c.scope, c.metric, c.window, c.soft_limit, c.hard_limit, c.webhook_url, source
        )

    def covers(self, who: Attribution) -> bool:
        if self.scope == "global":
            return True
        kind, _, ident = self.scope.partition(":")
        value = {"agent": who.agent_id, "session": who.session_id, "token": who.token_id}.get(kind)
        return value == ident


def window_start(window: str, now: float) -> float:
    """Start of the window containing ``now`` (rolling: ``now`` minus its length; total: 0)."""
    if window in ROLLING_S:
        return now - ROLLING_S[window]
    if window == "total":
        return 0.0
    return _calendar_start(window, int(now // 86_400))


# Calendar windows start on a UTC day boundary: their start and key depend on the day alone, so they are
# computed once a day instead of with datetime arithmetic on every request.
@functools.lru_cache(maxsize=64)
def _calendar_start(window: str, day_index: int) -> float:
    day = datetime.fromtimestamp(day_index * 86_400, UTC)
    if window == "day":
        return day.timestamp()
    if window == "week":
        return (day - timedelta(days=day.weekday())).timestamp()
    if window == "month":
        return day.replace(day=1).timestamp()
    raise ValueError(f"unknown budget window {window!r}")


def window_key(window: str, now: float) -> str:
    """Names the current window: alerts are deduplicated per policy and window key."""
    if window in ROLLING_S or window == "total":
        return window
    return _calendar_key(window, int(now // 86_400))


@functools.lru_cache(maxsize=64)
def _calendar_key(window: str, day_index: int) -> str:
    return datetime.fromtimestamp(_calendar_start(window, day_index), UTC).strftime("%Y-%m-%d")


@dataclass
class _Account:
    """Spend of one policy: settled amounts in its current window plus what is reserved in flight."""

    key: str = ""
    settled: float = 0.0
    reserved: float = 0.0
    # rolling windows: (minute, amount) in arrival order, and their sum
    minutes: deque[tuple[int, float]] = field(default_factory=deque)

    def spent(self, policy: Policy, now: float) -> float:
        if policy.window in ROLLING_S:
            horizon = int((now - ROLLING_S[policy.window]) // 60)
            while self.minutes and self.minutes[0][0] < horizon:
                _, amount = self.minutes.popleft()
                self.settled -= amount
            return max(self.settled, 0.0)
        key = window_key(policy.window, now)
        if key != self.key:  # a new calendar window: what this process counted so far belongs to the old one
            self.key, self.settled = key, 0.0
        return self.settled

    def add(self, policy: Policy, amount: float, now: float) -> None:
        self.settled += amount
        if policy.window in ROLLING_S:
            minute = int(now // 60)
            if self.minutes and self.minutes[-1][0] == minute:
                last = self.minutes.pop()
                self.minutes.append((minute, last[1] + amount))
            else:
                self.minutes.append((minute, amount))


@dataclass
class Reservation:
    holds: list[tuple[Policy, float]]
    status: str = "ok"  # ok | soft_limit
    crossed: list[Policy] = field(default_factory=list)
    settled: bool = False


@dataclass(frozen=True, slots=True)
class Estimate:
    usd: float | None  # None: no price known for the model
    tokens: int


# (policy, start) -> [(minute, amount)] of spend already in the database for that policy since start
SpendLoader = Callable[[Policy, float], Awaitable[list[tuple[int, float]]]]
AlertSink = Callable[[Policy, str, float, float], None]


class BudgetLedger:
    def __init__(
        self,
        policies: list[Policy],
        loader: SpendLoader,
        on_soft_limit: AlertSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._policies = {p.policy_id: p for p in policies}
        self._loader = loader
        self._on_soft = on_soft_limit
        self._clock = clock
        self._accounts: dict[str, _Account] = {}
        self._loading: dict[str, asyncio.Future[None]] = {}

    @property
    def policies(self) -> list[Policy]:
        return list(self._policies.values())

    def set_policy(self, policy: Policy) -> None:
        self._policies[policy.policy_id] = policy
        self._accounts.pop(policy.policy_id, None)  # reload spend for the new definition

    def remove_policy(self, policy_id: str) -> bool:
        self._accounts.pop(policy_id, None)
        return self._policies.pop(policy_id, None) is not None

    def applicable(self, who: Attribution) -> list[Policy]:
        return [p for p in self._policies.values() if p.covers(who)]

    async def _ensure_loaded(self, policy: Policy) -> None:
        if policy.policy_id in self._accounts:
            return
        pending = self._loading.get(policy.policy_id)
        if pending is None:
            pending = asyncio.get_running_loop().create_future()
            self._loading[policy.policy_id] = pending
            try:
                now = self._clock()
                rows = await self._loader(policy, window_start(policy.window, now))
                account = _Account(key=window_key(policy.window, now))
                for minute, amount in sorted(rows):
                    account.settled += amount
                    if policy.window in ROLLING_S:
                        account.minutes.append((minute, amount))
                self._accounts[policy.policy_id] = account
                pending.set_result(None)
            except BaseException as exc:
                pending.set_exception(exc)
                raise
            finally:
                self._loading.pop(policy.policy_id, None)
        else:
            await asyncio.shield(pending)

    async def reserve(self, who: Attribution, estimate: Estimate) -> Reservation:
        policies = self.applicable(who)
        for policy in policies:
            await self._ensure_loaded(policy)
        # From here to the end: no await, so the check and the hold are one atomic step.
        now = self._clock()
        holds: list[tuple[Policy, float]] = []
        crossed: list[Policy] = []
        for policy in policies:
            amount = _amount(policy, estimate.usd, estimate.tokens)
            if amount is None:
                continue  # an unpriced model cannot be held against a USD budget; it is alerted instead
            account = self._accounts[policy.policy_id]
            after = account.spent(policy, now) + account.reserved + amount
            if policy.hard_limit is not None and after > policy.hard_limit + _EPSILON:
                raise BudgetExceeded(
                    f"budget '{policy.policy_id}' ({policy.scope}, {policy.window}) would exceed its hard "
                    f"limit of {_fmt(policy, policy.hard_limit)}: {_fmt(policy, account.spent(policy, now))} "
                    f"spent, {_fmt(policy, account.reserved)} reserved, this request needs up to "
                    f"{_fmt(policy, amount)}",
                    param=None,
                )
            if policy.soft_limit is not None and after >= policy.soft_limit:
                crossed.append(policy)
            holds.append((policy, amount))
        for policy, amount in holds:
            self._accounts[policy.policy_id].reserved += amount
        reservation = Reservation(holds=holds, status="soft_limit" if crossed else "ok", crossed=crossed)
        for policy in crossed:
            account = self._accounts[policy.policy_id]
            self._on_soft(
                policy, window_key(policy.window, now), account.spent(policy, now), policy.soft_limit or 0
            )
        return reservation

    def settle(self, reservation: Reservation, actual_usd: float | None, actual_tokens: int) -> None:
        """Replace the holds by what the request really cost. Idempotent."""
        if reservation.settled:
            return
        reservation.settled = True
        now = self._clock()
        for policy, held in reservation.holds:
            account = self._accounts.get(policy.policy_id)
            if account is None:
                continue
            account.reserved = account.reserved - held
            if account.reserved < _EPSILON:  # float residue of many holds and releases
                account.reserved = 0.0
            amount = _amount(policy, actual_usd, actual_tokens)
            if amount:
                account.spent(policy, now)  # roll the window first if it changed
                account.add(policy, amount, now)

    def status(self, policy: Policy) -> dict[str, float | str | None]:
        now = self._clock()
        account = self._accounts.get(policy.policy_id)
        spent = account.spent(policy, now) if account else None
        return {
            "window_key": window_key(policy.window, now),
            "window_start": window_start(policy.window, now),
            "spent": spent,
            "reserved": account.reserved if account else 0.0,
            "remaining": None
            if policy.hard_limit is None or spent is None
            else max(0.0, policy.hard_limit - spent - (account.reserved if account else 0.0)),
        }

    async def load_all(self) -> None:
        for policy in list(self._policies.values()):
            await self._ensure_loaded(policy)


def _amount(policy: Policy, usd: float | None, tokens: int) -> float | None:
    if policy.metric == "tokens":
        return float(tokens)
    return usd


def _fmt(policy: Policy, value: float) -> str:
    if policy.metric == "tokens":
        return f"{math.ceil(value):,} tokens"
    return f"${value:.6f}"
