"""The circuit-breaker interface the dispatcher talks to, and its in-process implementation.

Shared state needs a round trip to admit a half-open probe, so the four transitions are coroutines;
the read-only views (``state``, ``consecutive_failures``, ``retry_after_s``) stay synchronous and
cheap. ``InProcessCircuitBreaker`` is ``palyra.providers.resilience.CircuitBreaker`` behind that
interface, unchanged in behaviour; ``RedisCircuitBreaker`` shares the state across replicas.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Protocol

from palyra.providers.resilience import CircuitBreaker, CircuitState


class AsyncCircuitBreaker(Protocol):
    @property
    def provider_id(self) -> str: ...

    @property
    def failure_threshold(self) -> int: ...

    @property
    def cooldown_s(self) -> float: ...

    @property
    def state(self) -> CircuitState:
        """Cheap and synchronous; a shared implementation may report a slightly stale state."""
        ...

    @property
    def consecutive_failures(self) -> int: ...

    def retry_after_s(self) -> float: ...

    async def acquire(self) -> None:
        """Admit one call or raise ``CircuitOpen``. In half-open only a single probe is admitted."""
        ...

    async def record_success(self) -> None: ...

    async def record_failure(self) -> None: ...

    async def release_probe(self) -> None:
        """An admitted call ended without saying anything about health (e.g. a client error)."""
        ...

    async def refresh(self) -> None:
        """Bring ``state`` up to date now (status pages call this before reading it)."""
        ...


class InProcessCircuitBreaker:
    def __init__(
        self,
        provider_id: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._breaker = CircuitBreaker(
            provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s, clock=clock
        )

    @property
    def provider_id(self) -> str:
        return self._breaker.provider_id

    @property
    def failure_threshold(self) -> int:
        return self._breaker.failure_threshold

    @property
    def cooldown_s(self) -> float:
        return self._breaker.cooldown_s

    @property
    def state(self) -> CircuitState:
        return self._breaker.state

    @property
    def consecutive_failures(self) -> int:
        return self._breaker.consecutive_failures

    def retry_after_s(self) -> float:
        return self._breaker.retry_after_s()

    async def acquire(self) -> None:
        self._breaker.acquire()

    async def record_success(self) -> None:
        self._breaker.record_success()

    async def record_failure(self) -> None:
        self._breaker.record_failure()

    async def release_probe(self) -> None:
        self._breaker.release_probe()

    async def refresh(self) -> None:
        return None
