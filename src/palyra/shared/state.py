"""What replicas share, built once from ``server.redis_url``: Redis-backed when it is set, in process
when it is empty. The composition root asks this for every stateful piece so nothing else needs to
know which one it got.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from palyra.governance.budgets import AlertSink, BudgetLedger, Policy, SpendLoader
from palyra.providers.resilience import ConcurrencyLimit
from palyra.shared.breaker import AsyncCircuitBreaker, InProcessCircuitBreaker
from palyra.shared.leases import InProcessLeaseStore, LeaseStore
from palyra.shared.limits import ProviderConcurrencyLimit
from palyra.shared_state import CounterStore, InProcessCounterStore

# The Redis implementations (and the redis client, ~6 MB) are imported only when Redis is configured.
if TYPE_CHECKING:
    from palyra.shared.breaker_redis import RedisCircuitBreaker
    from palyra.shared.ledger_redis import RedisBudgetLedger
    from palyra.shared.limits_redis import RedisConcurrencyLimit
    from palyra.shared.redis_state import RedisState

DEFAULT_PREFIX = "gw"


class SharedState:
    def __init__(self, redis: RedisState | None = None) -> None:
        self.redis = redis
        self.counters: CounterStore = InProcessCounterStore()
        self.leases: LeaseStore = InProcessLeaseStore()
        if redis is not None:
            from palyra.shared.counters_redis import RedisCounterStore
            from palyra.shared.leases import RedisLeaseStore

            self.counters = RedisCounterStore(redis)
            self.leases = RedisLeaseStore(redis)
        self._ledgers: list[RedisBudgetLedger] = []
        self._breakers: list[RedisCircuitBreaker] = []
        self._limits: list[RedisConcurrencyLimit] = []

    @classmethod
    def from_url(
        cls, redis_url: str, *, prefix: str = DEFAULT_PREFIX, max_connections: int = 64
    ) -> SharedState:
        """``redis_url`` as configured (``server.redis_url``): empty means in process."""
        if not redis_url:
            return cls(None)
        from palyra.shared.redis_state import RedisState

        return cls(RedisState.from_url(redis_url, prefix=prefix, max_connections=max_connections))

    @property
    def shared(self) -> bool:
        return self.redis is not None

    def budget_ledger(
        self,
        policies: list[Policy],
        loader: SpendLoader,
        on_soft_limit: AlertSink,
        *,
        clock: Callable[[], float] = time.time,
    ) -> BudgetLedger:
        if self.redis is None:
            return BudgetLedger(policies, loader, on_soft_limit, clock=clock)
        from palyra.shared.ledger_redis import RedisBudgetLedger

        ledger = RedisBudgetLedger(policies, loader, on_soft_limit, redis=self.redis, clock=clock)
        self._ledgers.append(ledger)
        return ledger

    def circuit_breaker(
        self, provider_id: str, *, failure_threshold: int, cooldown_s: float
    ) -> AsyncCircuitBreaker:
        if self.redis is None:
            return InProcessCircuitBreaker(
                provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s
            )
        from palyra.shared.breaker_redis import RedisCircuitBreaker

        breaker = RedisCircuitBreaker(
            self.redis, provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s
        )
        self._breakers.append(breaker)
        return breaker

    def concurrency_limit(self, provider_id: str, limit: int, wait_s: float) -> ProviderConcurrencyLimit:
        if self.redis is None:
            return ConcurrencyLimit(provider_id, limit, wait_s)
        from palyra.shared.limits_redis import RedisConcurrencyLimit

        slots = RedisConcurrencyLimit(self.redis, provider_id, limit, wait_s)
        self._limits.append(slots)
        return slots

    async def ready(self) -> bool:
        """For /readyz: in process is always ready; with Redis, whether it answers."""
        return True if self.redis is None else await self.redis.ping()

    async def aclose(self) -> None:
        """At shutdown: send queued budget settlements, give back provider slots, close the client."""
        for ledger in self._ledgers:
            await ledger.aclose()
        for slots in self._limits:
            await slots.aclose()
        for breaker in self._breakers:
            await breaker.aclose()
        if self.redis is not None:
            await self.redis.aclose()
