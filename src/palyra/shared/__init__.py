"""State that replicas share: rate-limit counters, budget reservations, circuit breakers, provider
concurrency slots and job leases. One interface each, an in-process and a Redis implementation;
``SharedState`` picks them from ``server.redis_url``.
"""

from typing import TYPE_CHECKING, Any

from palyra.shared.breaker import AsyncCircuitBreaker, InProcessCircuitBreaker
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.leases import InProcessLeaseStore, LeaseStore
from palyra.shared.limits import ProviderConcurrencyLimit
from palyra.shared.state import SharedState

if TYPE_CHECKING:
    from palyra.shared.breaker_redis import RedisCircuitBreaker
    from palyra.shared.counters_redis import RATE_LIMIT_UNAVAILABLE, RedisCounterStore
    from palyra.shared.leases import RedisLeaseStore
    from palyra.shared.ledger_redis import BUDGET_UNAVAILABLE, RedisBudgetLedger, SharedReservation
    from palyra.shared.limits_redis import RedisConcurrencyLimit
    from palyra.shared.redis_state import RedisState

# The Redis-backed names load the redis client on first use, so a daemon without Redis never does.
_LAZY = {
    "BUDGET_UNAVAILABLE": "palyra.shared.ledger_redis",
    "RATE_LIMIT_UNAVAILABLE": "palyra.shared.counters_redis",
    "RedisBudgetLedger": "palyra.shared.ledger_redis",
    "RedisCircuitBreaker": "palyra.shared.breaker_redis",
    "RedisConcurrencyLimit": "palyra.shared.limits_redis",
    "RedisCounterStore": "palyra.shared.counters_redis",
    "RedisLeaseStore": "palyra.shared.leases",
    "RedisState": "palyra.shared.redis_state",
    "SharedReservation": "palyra.shared.ledger_redis",
}


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'palyra.shared' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)


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
