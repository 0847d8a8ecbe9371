"""A circuit breaker whose state lives in Redis, so a circuit opened by failures one replica saw is
open on every replica, and a half-open circuit admits one probe across the fleet.

State: one hash per provider, ``palyra:{prefix}:cb:<provider>`` (state closed | open | half_open,
failures, opened_at, probe token, probe_until). Every transition is a Lua script timed by the Redis
server's clock, so replicas agree on cooldowns whatever their own clocks say. Transitions are the
in-process breaker's: closed → open after ``failure_threshold`` consecutive failures → half-open once
``cooldown_s`` has passed, one probe admitted → closed on its success, open again on its failure.

The hot path stays off Redis: each replica caches the last state it read for ``cache_ttl_s``
(default 100 ms). ``acquire`` acts on a cached closed (or still cooling-down open) state without a
round trip and reads Redis when the cache is older than that, or to claim a half-open probe (always a
round trip, atomic). ``record_success`` on a circuit seen closed with no failures never waits for
Redis (it is confirmed in the background when the cached view is older than ``cache_ttl_s``).
Staleness bound: a replica admits calls through a circuit another replica opened for at most
``cache_ttl_s`` plus one round trip. The ``state`` property never waits: it answers from the cache and
starts a background refresh when the cache is stale, so after an idle spell its first answer may be
older than ``cache_ttl_s``; await ``refresh()`` first where that matters (status pages).

A probe claim expires after ``probe_ttl_s`` (default 60 s) so a replica that crashed while probing
does not keep the circuit shut.

Redis unreachable: the breaker falls back to a per-replica ``CircuitBreaker`` that has seen this
replica's outcomes all along (it is fed every record call), and goes back to the shared state as soon
as a Redis call succeeds again. Calls are never refused just because Redis is down.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Coroutine
from dataclasses import dataclass
from typing import Any

from palyra.providers.resilience import CircuitBreaker, CircuitOpen, CircuitState
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.redis_state import RedisState, text

_KEEP_MS = 86_400_000  # a breaker nobody touched for a day is forgotten (closed)

_PRELUDE = f"""
local KEEP = {_KEEP_MS}
local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end
local function view(key, cooldown, now)
  local h = redis.call('HMGET', key, 'state', 'failures', 'opened_at', 'probe_until')
  local state = h[1] or 'closed'
  local failures = tonumber(h[2] or '0')
  if state == 'closed' then return {{'closed', failures, 0, 0}} end
  local remaining = tonumber(h[3] or '0') + cooldown - now
  if state == 'open' and remaining > 0 then return {{'open', failures, remaining, 0}} end
  local busy = 0
  if state == 'half_open' and tonumber(h[4] or '0') > now then busy = 1 end
  return {{'half_open', failures, 0, busy}}
end
"""

# KEYS: breaker. ARGV: cooldown ms, probe ttl ms, probe token
_ACQUIRE = (
    _PRELUDE
    + """
local now = now_ms()
local v = view(KEYS[1], tonumber(ARGV[1]), now)
if v[1] == 'half_open' and v[4] == 0 then
  redis.call('HSET', KEYS[1], 'state', 'half_open', 'probe', ARGV[3],
             'probe_until', string.format('%d', now + tonumber(ARGV[2])))
  redis.call('PEXPIRE', KEYS[1], KEEP)
  return {'probe', v[2], 0, 1}
end
return v
"""
)

_SUCCESS = """
redis.call('DEL', KEYS[1])
return {'closed', 0, 0, 0}
"""

# KEYS: breaker. ARGV: failure threshold, cooldown ms
_FAILURE = (
    _PRELUDE
    + """
local now = now_ms()
local failures = redis.call('HINCRBY', KEYS[1], 'failures', 1)
local state = redis.call('HGET', KEYS[1], 'state') or 'closed'
if state == 'half_open' or failures >= tonumber(ARGV[1]) then
  redis.call('HSET', KEYS[1], 'state', 'open', 'opened_at', string.format('%d', now))
end
redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
redis.call('PEXPIRE', KEYS[1], KEEP)
return view(KEYS[1], tonumber(ARGV[2]), now)
"""
)

# KEYS: breaker. ARGV: probe token, cooldown ms
_RELEASE = (
    _PRELUDE
    + """
if redis.call('HGET', KEYS[1], 'probe') == ARGV[1] then
  redis.call('HDEL', KEYS[1], 'probe', 'probe_until')
end
return view(KEYS[1], tonumber(ARGV[2]), now_ms())
"""
)

_READ = _PRELUDE + "\nreturn view(KEYS[1], tonumber(ARGV[1]), now_ms())\n"


@dataclass(frozen=True, slots=True)
class _View:
    state: CircuitState
    failures: int
    open_for_s: float  # cooldown left when read (open only)
    probe_busy: bool
    read_at: float  # time.monotonic() of the read


class RedisCircuitBreaker:
    def __init__(
        self,
        redis: RedisState,
        provider_id: str,
        *,
        failure_threshold: int,
        cooldown_s: float,
        cache_ttl_s: float = 0.1,
        probe_ttl_s: float = 60.0,
    ) -> None:
        self._redis = redis
        self._provider_id = provider_id
        self._failure_threshold = failure_threshold
        self._cooldown_s = cooldown_s
        self._cache_ttl_s = cache_ttl_s
        self._cooldown_ms = max(1, int(cooldown_s * 1000))
        self._probe_ttl_ms = max(1, int(probe_ttl_s * 1000))
        self._key = redis.key("cb", provider_id)
        self._acquire = redis.script(_ACQUIRE)
        self._success = redis.script(_SUCCESS)
        self._failure = redis.script(_FAILURE)
        self._release = redis.script(_RELEASE)
        self._read = redis.script(_READ)
        # This replica's own view, used only while Redis is unreachable.
        self._local = CircuitBreaker(provider_id, failure_threshold=failure_threshold, cooldown_s=cooldown_s)
        self._view: _View | None = None
        self._degraded = False
        self._probe_token: str | None = None
        self._refreshing: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def provider_id(self) -> str:
        return self._provider_id

    @property
    def failure_threshold(self) -> int:
        return self._failure_threshold

    @property
    def cooldown_s(self) -> float:
        return self._cooldown_s

    @property
    def degraded(self) -> bool:
        """True while Redis is unreachable and this replica decides on its own."""
        return self._degraded

    @property
    def state(self) -> CircuitState:
        view = self._view
        if view is None or self._degraded or time.monotonic() - view.read_at >= self._cache_ttl_s:
            self._refresh_soon()
        if self._degraded:
            return self._local.state
        return CircuitState.CLOSED if view is None else _derive(view)

    @property
    def consecutive_failures(self) -> int:
        if self._degraded:
            return self._local.consecutive_failures
        return 0 if self._view is None else self._view.failures

    def retry_after_s(self) -> float:
        if self._degraded:
            return self._local.retry_after_s()
        view = self._view
        if view is None or view.state is not CircuitState.OPEN:
            return 0.0
        return max(0.0, view.open_for_s - (time.monotonic() - view.read_at))

    async def acquire(self) -> None:
        view = self._fresh()
        if view is not None:
            state = _derive(view)
            if state is CircuitState.CLOSED:
                return
            if state is CircuitState.OPEN:
                raise CircuitOpen(self._provider_id, max(self.retry_after_s(), 1.0))
            if view.probe_busy:
                raise CircuitOpen(self._provider_id, 1.0)
        token = uuid.uuid4().hex
        try:
            reply = await self._redis.run(
                self._acquire, [self._key], [self._cooldown_ms, self._probe_ttl_ms, token]
            )
        except SharedStateUnavailable:
            self._degraded = True
            self._local.acquire()
            return
        view = self._store(reply)
        if text(reply[0]) == "probe":
            self._probe_token = token
            return
        if view.state is CircuitState.CLOSED:
            return
        retry = max(self.retry_after_s(), 1.0) if view.state is CircuitState.OPEN else 1.0
        raise CircuitOpen(self._provider_id, retry)

    async def record_success(self) -> None:
        self._local.record_success()
        token, self._probe_token = self._probe_token, None
        view = self._view
        if token is None and view is not None and view.state is CircuitState.CLOSED and view.failures == 0:
            # The common case: nothing to reset as far as this replica knows. A recent view costs no
            # round trip; an older one is confirmed in the background, off the response path.
            if self._fresh() is None:
                self._in_background(self._transition(self._success, []))
            return
        await self._transition(self._success, [])

    async def record_failure(self) -> None:
        self._local.record_failure()
        self._probe_token = None
        await self._transition(self._failure, [self._failure_threshold, self._cooldown_ms])

    async def release_probe(self) -> None:
        self._local.release_probe()
        token, self._probe_token = self._probe_token, None
        if token is not None:
            await self._transition(self._release, [token, self._cooldown_ms])

    async def refresh(self) -> None:
        await self._transition(self._read, [self._cooldown_ms])

    async def aclose(self) -> None:
        for task in [self._refreshing, *self._background]:
            if task is not None and not task.done():
                task.cancel()
        self._background.clear()

    async def _transition(self, script: Any, args: list[str | int | float]) -> None:
        """Outcomes are recorded best effort: with Redis down the local breaker has them."""
        try:
            reply = await self._redis.run(script, [self._key], args)
        except SharedStateUnavailable:
            self._degraded = True
            return
        self._store(reply)

    def _fresh(self) -> _View | None:
        view = self._view
        if view is None or self._degraded or time.monotonic() - view.read_at >= self._cache_ttl_s:
            return None
        return view

    def _store(self, reply: Any) -> _View:
        kind = text(reply[0])
        view = _View(
            state=CircuitState.HALF_OPEN if kind == "probe" else CircuitState(kind),
            failures=int(reply[1]),
            open_for_s=int(reply[2]) / 1000.0,
            probe_busy=int(reply[3]) == 1,
            read_at=time.monotonic(),
        )
        self._view = view
        self._degraded = False
        return view

    def _refresh_soon(self) -> None:
        if self._refreshing is not None and not self._refreshing.done():
            return
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return
        self._refreshing = loop.create_task(self.refresh())

    def _in_background(self, work: Coroutine[Any, Any, None]) -> None:
        if len(self._background) >= 2:  # one in flight and one queued say the same thing
            work.close()
            return
        task = asyncio.get_running_loop().create_task(work)
        self._background.add(task)
        task.add_done_callback(self._background.discard)


def _derive(view: _View) -> CircuitState:
    if view.state is CircuitState.OPEN and time.monotonic() - view.read_at >= view.open_for_s:
        return CircuitState.HALF_OPEN
    return view.state
