"""The run journal: one record per /v1 request, written by a batched background writer.

The request path appends to an in-memory buffer and to the on-disk spool (``journal_spool``); a
background task inserts batches every ``flush_interval`` (or sooner when a batch fills). A graceful
shutdown flushes everything. A killed process loses nothing either: the next start replays the
spool. Only a machine crash can lose records, those the kernel had not yet written to disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from palyra.journal_spool import Spool
from palyra.storage.runs import RunRepository

log = logging.getLogger("palyra.journal")

MAX_BUFFERED = 200_000


@dataclass(slots=True)
class RunRecord:
    request_id: str
    created_at: float
    endpoint: str
    stream: bool = False
    finished_at: float = 0.0
    token_id: str | None = None
    agent_id: str | None = None
    session_id: str | None = None
    requested_model: str | None = None
    model_id: str | None = None
    provider_id: str | None = None
    upstream_model: str | None = None
    status: str = "ok"  # ok | error | cancelled
    http_status: int = 200
    error_class: str | None = None
    error_message: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0
    cache_write_tokens: int = 0
    usage_source: str | None = None
    latency_ms: float = 0.0
    overhead_ms: float | None = None
    cost_usd: float | None = None
    pricing_missing: bool = False
    routing_mode: str | None = None
    routing_recommended_model: str | None = None
    attempts: int = 0
    extra: dict[str, Any] = field(default_factory=dict)
    decision: dict[str, Any] | None = None  # the routing decision row, written with the run

    def row(self) -> dict[str, Any]:
        return {
            "request_id": self.request_id,
            "created_at": self.created_at,
            "finished_at": self.finished_at,
            "token_id": self.token_id,
            "agent_id": self.agent_id,
            "session_id": self.session_id,
            "endpoint": self.endpoint,
            "requested_model": self.requested_model,
            "model_id": self.model_id,
            "provider_id": self.provider_id,
            "upstream_model": self.upstream_model,
            "stream": self.stream,
            "status": self.status,
            "http_status": self.http_status,
            "error_class": self.error_class,
            "error_message": self.error_message,
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cached_tokens": self.cached_tokens,
            "cache_write_tokens": self.cache_write_tokens,
            "total_tokens": self.prompt_tokens + self.completion_tokens,
            "usage_source": self.usage_source,
            "latency_ms": self.latency_ms,
            "overhead_ms": self.overhead_ms,
            "cost_usd": self.cost_usd,
            "pricing_missing": self.pricing_missing,
            "routing_mode": self.routing_mode,
            "routing_recommended_model": self.routing_recommended_model,
            "attempts": self.attempts,
        }


class JournalWriter:
    def __init__(
        self,
        repo: RunRepository,
        *,
        flush_interval_s: float = 0.2,
        batch_size: int = 500,
        after_flush: Callable[[], Awaitable[None]] | None = None,
        spool: Spool | None = None,
    ) -> None:
        self._repo = repo
        self._spool = spool
        self._spool_failed = False
        self._interval = flush_interval_s
        self._batch = batch_size
        self._after_flush = after_flush
        self._buffer: deque[RunRecord] = deque()
        self._wake = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.written = 0
        self.dropped = 0
        self.failures = 0

    @property
    def pending(self) -> int:
        return len(self._buffer)

    def record(self, run: RunRecord) -> None:
        """Queue a record. Never blocks and never raises into the request path."""
        if len(self._buffer) >= MAX_BUFFERED:
            self._buffer.popleft()
            self.dropped += 1
            log.error("journal buffer full; dropped the oldest unwritten run record")
        if self._spool is not None:
            try:
                self._spool.append(run)
            except OSError as exc:
                if not self._spool_failed:
                    self._spool_failed = True
                    log.error("journal spool write failed (%s); records are kept in memory only", exc)
        self._buffer.append(run)
        if len(self._buffer) >= self._batch:
            self._wake.set()

    async def recover(self) -> int:
        """Insert the records a killed process left in the spool (before ``start``); returns how many."""
        if self._spool is None:
            return 0
        count = 0
        for path, records in self._spool.leftovers():
            for i in range(0, len(records), self._batch):
                batch = records[i : i + self._batch]
                await self._repo.insert_many(
                    [r.row() for r in batch], decisions=[r.decision for r in batch if r.decision]
                )
            count += len(records)
            log.warning("journal: recovered %d run record(s) from %s", len(records), path.name)
        self._spool.committed()
        return count

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="palyra-journal-writer")

    async def _run(self) -> None:
        backoff = self._interval
        while not self._closing:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), timeout=self._interval)
            self._wake.clear()
            try:
                await self.flush()
                backoff = self._interval
            except Exception:
                self.failures += 1
                log.exception("journal flush failed; records kept for the next attempt")
                await asyncio.sleep(min(backoff, 5.0))
                backoff *= 2

    async def flush(self) -> None:
        if self._spool is not None:
            self._spool.seal()  # its records are all in the buffer now, ahead of any newer one
        while self._buffer:
            batch = [self._buffer[i] for i in range(min(self._batch, len(self._buffer)))]
            await self._repo.insert_many(
                [r.row() for r in batch], decisions=[r.decision for r in batch if r.decision is not None]
            )
            for _ in batch:
                self._buffer.popleft()
            self.written += len(batch)
        if self._spool is not None:
            self._spool.committed()
        if self._after_flush is not None:
            await self._after_flush()

    async def close(self) -> None:
        """Stop the background task and write everything still buffered."""
        self._closing = True
        self._wake.set()
        if self._task is not None:
            await self._task
            self._task = None
        for attempt in range(5):
            try:
                await self.flush()
                if self._spool is not None:
                    self._spool.close()
                return
            except Exception:
                log.exception("journal flush at shutdown failed (attempt %d)", attempt + 1)
                await asyncio.sleep(0.2 * (attempt + 1))
