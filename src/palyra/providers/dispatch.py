"""The one retry loop: try each candidate model in order, each with its provider's retries, breaker
and concurrency limit; fail over to the next candidate when the failure allows it.

Adapters make single attempts. Streams are opened and their first event pulled inside the loop, so a
stream is retried or failed over only while nothing has reached the client.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from palyra.errors import NoHealthyProvider, PalyraError
from palyra.metrics import Metrics
from palyra.providers.base import ModelTarget, Provider
from palyra.providers.failures import FailureClass, UpstreamAttemptError, to_client_error
from palyra.providers.registry import ProviderRuntime, RegisteredModel
from palyra.providers.resilience import CircuitOpen, CircuitState, backoff_s
from palyra.providers.types import StreamEvent

T = TypeVar("T")

# Failures that say the provider is unwell. A refused credential or a bad request does not.
_BREAKER_CLASSES = {
    FailureClass.TRANSIENT,
    FailureClass.TIMEOUT,
    FailureClass.MALFORMED,
    FailureClass.RATE_LIMITED,
}


@dataclass
class Served(Generic[T]):
    value: T
    model: RegisteredModel
    attempts: int
    failovers: int


class AttemptLog:
    """What happened on the way; the gateway copies it onto the run record."""

    def __init__(self) -> None:
        self.attempts = 0
        self.failovers = 0
        self.upstream_s = 0.0


class Dispatcher:
    def __init__(
        self,
        runtimes: dict[str, ProviderRuntime],
        metrics: Metrics,
        *,
        rng: random.Random | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.runtimes = runtimes
        self._metrics = metrics
        self._rng = rng or random.Random()
        self._sleep = sleep

    async def call(
        self,
        candidates: list[RegisteredModel],
        op: Callable[[Provider, ModelTarget], Awaitable[T]],
        log: AttemptLog,
        on_model: Callable[[RegisteredModel], None],
    ) -> Served[T]:
        """Run ``op`` against the candidates; the first success wins."""
        value, model, _ = await self._run(candidates, op, log, on_model, hold_slot=False)
        return Served(value, model, log.attempts, log.failovers)

    async def open_stream(
        self,
        candidates: list[RegisteredModel],
        op: Callable[[Provider, ModelTarget], AsyncIterator[StreamEvent]],
        log: AttemptLog,
        on_model: Callable[[RegisteredModel], None],
    ) -> tuple[StreamEvent | None, AsyncIterator[StreamEvent], RegisteredModel, ProviderRuntime]:
        """Open a stream and pull its first event; the provider's slot stays held until ``finish_stream``."""

        async def first(
            provider: Provider, target: ModelTarget
        ) -> tuple[StreamEvent | None, AsyncIterator[StreamEvent]]:
            events = op(provider, target)
            try:
                head = await anext(events)
            except StopAsyncIteration:
                return None, events
            except BaseException:
                await events.aclose()  # type: ignore[attr-defined]
                raise
            return head, events

        (head, events), model, runtime = await self._run(candidates, first, log, on_model, hold_slot=True)
        return head, events, model, runtime

    async def finish_stream(
        self, runtime: ProviderRuntime, error: UpstreamAttemptError | None, elapsed_s: float
    ) -> None:
        """Account for how an opened stream ended, and give back its slot."""
        runtime.limit.release()
        if error is None:
            await runtime.breaker.record_success()
            runtime.health.record_success(elapsed_s)
            runtime.credential.feedback(None)
            self._metrics.attempt(runtime.config.provider_id, "ok")
        else:
            await self._record_failure(runtime, error, elapsed_s)

    async def _run(
        self,
        candidates: list[RegisteredModel],
        op: Callable[[Provider, ModelTarget], Awaitable[T]],
        log: AttemptLog,
        on_model: Callable[[RegisteredModel], None],
        *,
        hold_slot: bool,
    ) -> tuple[T, RegisteredModel, ProviderRuntime]:
        last: UpstreamAttemptError | None = None
        open_circuits: list[CircuitOpen] = []
        busy: PalyraError | None = None
        for index, model in enumerate(candidates):
            runtime = self.runtimes[model.config.provider_id]
            if index > 0:
                log.failovers += 1
            try:
                await runtime.breaker.acquire()
            except CircuitOpen as exc:
                open_circuits.append(exc)
                self._metrics.attempt(runtime.config.provider_id, "circuit_open")
                continue
            try:
                await runtime.limit.acquire()
            except NoHealthyProvider as exc:
                await runtime.breaker.release_probe()
                busy = exc
                continue
            on_model(model)
            released = False
            try:
                for retry in range(runtime.config.max_retries + 1):
                    log.attempts += 1
                    started = time.perf_counter()
                    try:
                        value = await op(runtime.provider, model.target)
                    except UpstreamAttemptError as err:
                        elapsed = time.perf_counter() - started
                        log.upstream_s += elapsed
                        last = err
                        can_retry = (
                            err.retryable
                            and retry < runtime.config.max_retries
                            and runtime.breaker.state is not CircuitState.OPEN
                        )
                        if not can_retry:
                            await self._record_failure(runtime, err, elapsed)
                            break
                        runtime.health.retries += 1
                        self._metrics.attempt(runtime.config.provider_id, "retry")
                        await self._sleep(
                            backoff_s(retry, runtime.config.retry_backoff_ms, err.retry_after_s, self._rng)
                        )
                        continue
                    except BaseException:
                        log.upstream_s += time.perf_counter() - started
                        await runtime.breaker.release_probe()
                        raise
                    elapsed = time.perf_counter() - started
                    log.upstream_s += elapsed
                    if hold_slot:
                        released = True  # handed to the stream; finish_stream gives it back
                    else:
                        await runtime.breaker.record_success()
                        runtime.health.record_success(elapsed)
                        runtime.credential.feedback(None)
                        self._metrics.attempt(runtime.config.provider_id, "ok")
                    return value, model, runtime
            finally:
                if not released:
                    runtime.limit.release()
            if last is not None and not last.failover_eligible:
                break
        if last is not None:
            raise to_client_error(last)
        if busy is not None:
            raise busy
        retry_after = min((c.retry_after_s for c in open_circuits), default=1.0)
        raise NoHealthyProvider(
            "no healthy provider can serve this model right now: "
            + ", ".join(f"circuit open for '{c.provider_id}'" for c in open_circuits),
            retry_after_s=retry_after,
        )

    async def _record_failure(
        self, runtime: ProviderRuntime, err: UpstreamAttemptError, elapsed_s: float
    ) -> None:
        runtime.health.record_failure(err.failure_class.value, err.message, err.status, elapsed_s)
        runtime.credential.feedback(err.failure_class.value)
        self._metrics.attempt(runtime.config.provider_id, "error")
        if err.failure_class in _BREAKER_CLASSES:
            await runtime.breaker.record_failure()
        else:
            await runtime.breaker.release_probe()
