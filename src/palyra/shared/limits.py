"""The concurrency-limit interface the dispatcher talks to.

``palyra.providers.resilience.ConcurrencyLimit`` is the in-process implementation and already fits;
``RedisConcurrencyLimit`` shares the slots across replicas.
"""

from __future__ import annotations

from typing import Protocol


class ProviderConcurrencyLimit(Protocol):
    @property
    def provider_id(self) -> str: ...

    @property
    def limit(self) -> int: ...

    @property
    def in_flight(self) -> int:
        """Calls in flight from this process."""
        ...

    async def acquire(self) -> None:
        """Take a slot, waiting up to the configured wait; raises ``NoHealthyProvider`` (provider_busy)."""
        ...

    def release(self) -> None: ...
