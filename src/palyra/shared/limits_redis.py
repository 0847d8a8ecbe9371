"""A per-provider concurrency limit shared by every replica: at most ``limit`` calls in flight to one
provider across the fleet, a caller waiting at most ``wait_s`` for a slot.

The interface is ``ConcurrencyLimit``'s (async ``acquire``, synchronous ``release``, ``in_flight``,
``limit``). The slots are one sorted set, ``palyra:{prefix}:cc:<provider>``: a member per held slot
(a lease id), scored by when its lease expires. Counting the members instead of keeping an INCR/DECR
counter means a slot cannot leak: a replica that crashes holding slots stops renewing their leases,
and they fall out after ``lease_ttl_s`` (default 30 s). Live holders renew every ``lease_ttl_s / 3``,
so a stream that holds its slot for minutes keeps it. Lease times are the Redis server's clock.

A waiting caller polls (10 ms doubling to 100 ms) rather than subscribing: simple, and the wait is
bounded by ``wait_s`` anyway. ``release`` does not wait: it frees the slot locally at once and removes
the lease in the background (if that fails, the lease expires by itself).

Redis unreachable: the limit falls back to counting this replica's own calls against ``limit``, so
during an outage the fleet may run up to ``limit`` calls per replica; calls are not refused just
because Redis is down. ``in_flight`` is this replica's share; ``global_in_flight()`` asks Redis.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
import uuid

from palyra.errors import NoHealthyProvider
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.redis_state import RedisState

log = logging.getLogger("palyra.shared")

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: slots. ARGV: limit, lease ttl ms, lease id
_ACQUIRE = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
local n = redis.call('ZCARD', KEYS[1])
if n < tonumber(ARGV[1]) then
  redis.call('ZADD', KEYS[1], string.format('%d', now + tonumber(ARGV[2])), ARGV[3])
  redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[2]) * 2)
  return {1, n + 1}
end
return {0, n}
"""
)

# KEYS: slots. ARGV: lease ttl ms, lease ids… (re-added if they expired: those calls are still running)
_RENEW = (
    _NOW
    + """
local expiry = string.format('%d', now + tonumber(ARGV[1]))
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[1]) * 2)
return redis.call('ZCARD', KEYS[1])
"""
)

_COUNT = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZCARD', KEYS[1])
"""
)


class RedisConcurrencyLimit:
    def __init__(
        self,
        redis: RedisState,
        provider_id: str,
        limit: int,
        wait_s: float,
        *,
        lease_ttl_s: float = 30.0,
    ) -> None:
        self.provider_id = provider_id
        self.limit = limit
        self._wait_s = wait_s
        self._redis = redis
        self._key = redis.key("cc", provider_id)
        self._lease_ttl_ms = max(1, int(lease_ttl_s * 1000))
        self._acquire = redis.script(_ACQUIRE)
        self._renew = redis.script(_RENEW)
        self._count = redis.script(_COUNT)
        self._replica = uuid.uuid4().hex[:12]
        self._ids = itertools.count()
        self._leases: list[str] = []  # slots this replica holds in Redis
        self._fallback = 0  # slots taken locally while Redis was unreachable
        self._heartbeat: asyncio.Task[None] | None = None
        self._background: set[asyncio.Task[None]] = set()

    @property
    def in_flight(self) -> int:
        """Calls this replica has in flight to the provider."""
        return len(self._leases) + self._fallback

    async def global_in_flight(self) -> int:
        """Calls every replica has in flight to the provider (raises if Redis is unreachable)."""
        return int(await self._redis.run(self._count, [self._key], []))

    async def acquire(self) -> None:
        deadline = time.monotonic() + self._wait_s
        delay = 0.01
        while not await self._try_acquire():
            if time.monotonic() + delay > deadline:
                raise self._busy()
            await asyncio.sleep(delay)
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self._fallback:
            self._fallback -= 1
            return
        if not self._leases:
            return
        lease = self._leases.pop()
        try:
            task = asyncio.get_running_loop().create_task(self._remove(lease))
        except RuntimeError:
            return  # no loop: the lease expires by itself
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Wait for background lease removals (tests, shutdown)."""
        while self._background:
            await asyncio.gather(*self._background)

    async def aclose(self) -> None:
        """Stop renewing and give back every slot this replica still holds."""
        if self._heartbeat is not None:
            self._heartbeat.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._heartbeat
        while self._leases or self._fallback:
            self.release()
        await self.drain()

    async def _try_acquire(self) -> bool:
        lease = f"{self._replica}:{next(self._ids)}"
        try:
            reply = await self._redis.run(self._acquire, [self._key], [self.limit, self._lease_ttl_ms, lease])
        except SharedStateUnavailable:
            if self.in_flight < self.limit:
                self._fallback += 1
                return True
            return False
        if int(reply[0]) != 1:
            return False
        self._leases.append(lease)
        if self._heartbeat is None or self._heartbeat.done():
            self._heartbeat = asyncio.get_running_loop().create_task(self._renew_leases())
        return True

    async def _renew_leases(self) -> None:
        while self._leases:
            await asyncio.sleep(self._lease_ttl_ms / 3000.0)
            if not self._leases:
                return
            try:
                await self._redis.run(self._renew, [self._key], [self._lease_ttl_ms, *self._leases])
            except SharedStateUnavailable:
                continue  # renewed on the next beat, re-added if it expired meanwhile

    async def _remove(self, lease: str) -> None:
        try:
            await self._redis.command("ZREM", self._key, lease)
        except SharedStateUnavailable:
            log.debug("could not remove lease %s of %s; it expires by itself", lease, self.provider_id)

    def _busy(self) -> NoHealthyProvider:
        return NoHealthyProvider(
            f"provider '{self.provider_id}' is at its concurrency limit of {self.limit}; retry shortly",
            code="provider_busy",
            retry_after_s=1.0,
        )
