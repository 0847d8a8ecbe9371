"""Per-provider protection: a circuit breaker, a concurrency limit and the retry backoff.

The breaker is closed → open after ``failure_threshold`` consecutive failures → half-open once
``cooldown`` has passed, letting exactly one probe through → closed on its success, open again on its
failure. Only failures that say something about the provider's health count (transient, timeout,
malformed, rate limited); a bad request or a refused credential says nothing about the others'.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from enum import StrEnum

from palyra.errors import NoHealthyProvider

RETRY_AFTER_CAP_S = 60.0
BACKOFF_CAP_S = 20.0


class CircuitState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitOpen(Exception):
    def __init__(self, provider_id: str, retry_after_s: float) -> None:
        super().__init__(f"circuit for provider '{provider_id}' is open; retry after {retry_after_s:.1f}s")
        self.provider_id = provider_id
        self.retry_after_s = retry_after_s


class CircuitBreaker:
    def __init__(
        self,
        provider_id: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.provider_id = provider_id
        self.failure_threshold = failure_threshold
        self.cooldown_s = cooldown_s
        self._clock = clock
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._opened_at = 0.0
        self._probe_in_flight = False

    @property
    def state(self) -> CircuitState:
        if self._state is CircuitState.OPEN and self._clock() - self._opened_at >= self.cooldown_s:
            return CircuitState.HALF_OPEN
        return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._failures

    def retry_after_s(self) -> float:
        return max(0.0, self.cooldown_s - (self._clock() - self._opened_at))

    def acquire(self) -> None:
        """Admit one call or raise ``CircuitOpen``. In half-open only a single probe is admitted."""
        state = self.state
        if state is CircuitState.CLOSED:
            return
        if state is CircuitState.HALF_OPEN and not self._probe_in_flight:
            self._state = CircuitState.HALF_OPEN
            self._probe_in_flight = True
            return
        raise CircuitOpen(self.provider_id, max(self.retry_after_s(), 1.0))

    def record_success(self) -> None:
        self._state = CircuitState.CLOSED
        self._failures = 0
        self._probe_in_flight = False

    def record_failure(self) -> None:
        self._failures += 1
        if self._state is CircuitState.HALF_OPEN or self._failures >= self.failure_threshold:
            self._state = CircuitState.OPEN
            self._opened_at = self._clock()
        self._probe_in_flight = False

    def release_probe(self) -> None:
        """An admitted call ended without saying anything about health (e.g. a client error)."""
        if self._state is CircuitState.HALF_OPEN:
            self._probe_in_flight = False


class ConcurrencyLimit:
    """At most ``limit`` calls in flight to one provider; a caller waits at most ``wait_s`` for a slot.

    Acquire and release are separate calls because a stream holds its slot until its last chunk.
    """

    def __init__(self, provider_id: str, limit: int, wait_s: float) -> None:
        self.provider_id = provider_id
        self.limit = limit
        self._wait_s = wait_s
        self._sem = asyncio.Semaphore(limit)
        self.in_flight = 0

    async def acquire(self) -> None:
        if not self._sem.locked():
            await self._sem.acquire()  # a free slot: returns at once
        elif self._wait_s <= 0:
            raise self._busy()
        else:
            try:
                await asyncio.wait_for(self._sem.acquire(), timeout=self._wait_s)
            except TimeoutError:
                raise self._busy() from None
        self.in_flight += 1

    def release(self) -> None:
        self.in_flight -= 1
        self._sem.release()

    def _busy(self) -> NoHealthyProvider:
        return NoHealthyProvider(
            f"provider '{self.provider_id}' is at its concurrency limit of {self.limit}; retry shortly",
            code="provider_busy",
            retry_after_s=1.0,
        )


def backoff_s(retry_index: int, base_ms: int, retry_after_s: float | None, rng: random.Random) -> float:
    """Exponential backoff with full jitter; an upstream's Retry-After is a floor, capped at 60 s."""
    ceiling = min(BACKOFF_CAP_S, base_ms / 1000.0 * (2**retry_index))
    delay = rng.uniform(0.0, ceiling)
    if retry_after_s is not None:
        delay = max(delay, min(retry_after_s, RETRY_AFTER_CAP_S))
    return delay
