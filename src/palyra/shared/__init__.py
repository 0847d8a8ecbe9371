"""State that replicas share: rate-limit counters, budget reservations, circuit breakers, provider
concurrency slots and job leases. One interface each, an in-process and a Redis implementation;
``SharedState`` picks them from ``server.redis_url``.
"""

from palyra.shared.breaker import AsyncCircuitBreaker, InProcessCircuitBreaker
from palyra.shared.breaker_redis import RedisCircuitBreaker
from palyra.shared.counters_redis import RATE_LIMIT_UNAVAILABLE, RedisCounterStore
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.leases import InProcessLeaseStore, LeaseStore, RedisLeaseStore
from palyra.shared.ledger_redis import BUDGET_UNAVAILABLE, RedisBudgetLedger, SharedReservation
from palyra.shared.limits import ProviderConcurrencyLimit
from palyra.shared.limits_redis import RedisConcurrencyLimit
from palyra.shared.redis_state import RedisState
from palyra.shared.state import SharedState

__all__ = [
    "BUDGET_UNAVAILABLE",
    "RATE_LIMIT_UNAVAILABLE",
    "AsyncCircuitBreaker",
    "InProcessCircuitBreaker",
    "InProcessLeaseStore",
    "LeaseStore",
    "ProviderConcurrencyLimit",
    "RedisBudgetLedger",
    "RedisCircuitBreaker",
    "RedisConcurrencyLimit",
    "RedisCounterStore",
    "RedisLeaseStore",
    "RedisState",
    "SharedReservation",
    "SharedState",
    "SharedStateUnavailable",
]
