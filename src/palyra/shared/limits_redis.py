"""A per-provider concurrency limit shared by every replica: at most ``limit`` calls in flight to one
provider across the fleet, a caller waiting at most ``wait_s`` for a slot.

The interface is ``ConcurrencyLimit``'s (async ``acquire``, synchronous ``release``, ``in_flight``,
``limit``). The slots are one sorted set, ``palyra:{prefix}:cc:<provider>``: a member per held slot
(a lease id), scored by when its lease expires. Counting the members instead of keeping an INCR/DECR
counter means a slot cannot leak: a replica that crashes holding slots stops renewing their leases,
and they fall out after ``lease_ttl_s`` (default 30 s). Live holders renew every ``lease_ttl_s / 3``,
so a stream that holds its slot for minutes keeps it. Lease times are the Redis server's clock.

Slots stay off the round trip in steady state: ``release`` hands the slot straight to a caller waiting
on this replica, or keeps it for ``IDLE_S`` (50 ms) so the next call here takes it without asking Redis;
only then is the lease removed, in the background (if that fails, it expires by itself). A caller that
finds no slot waits for one released here, polling Redis (10 ms doubling to 100 ms) for one released
elsewhere, for at most ``wait_s``. A busy replica therefore keeps its slots while it is busy; the fleet
total never exceeds ``limit``.

Redis unreachable: the limit falls back to counting this replica's own calls against ``limit``, so
during an outage the fleet may run up to ``limit`` calls per replica; calls are not refused just
because Redis is down. ``in_flight`` is this replica's share; ``global_in_flight()`` asks Redis.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import time
import uuid

from palyra.errors import NoHealthyProvider
from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.redis_state import RedisState

log = logging.getLogger("palyra.shared")

IDLE_S = 0.05

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
        self._idle: list[tuple[str, float]] = []  # (lease, released at): still held in Redis, oldest first
        self._waiters: collections.deque[asyncio.Future[str]] = collections.deque()
        self._trim_timer: asyncio.TimerHandle | None = None

    @property
    def in_flight(self) -> int:
        """Calls this replica has in flight to the provider."""
        return len(self._leases) + self._fallback

    async def global_in_flight(self) -> int:
        """Calls every replica has in flight to the provider (raises if Redis is unreachable)."""
        return int(await self._redis.run(self._count, [self._key], []))

    async def acquire(self) -> None:
        if self._idle:  # a slot this replica released a moment ago: still ours in Redis
            self._leases.append(self._idle.pop()[0])
            return
        deadline = time.monotonic() + self._wait_s
        delay = 0.01
        while not await self._try_acquire():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._busy()
            # Wait for a slot released here (handed over at once) or poll Redis for one released
            # elsewhere, whichever comes first.
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._waiters.append(waiter)
            try:
                await asyncio.wait({waiter}, timeout=min(delay, remaining))
            finally:
                if not waiter.done():
                    waiter.cancel()
                with contextlib.suppress(ValueError):
                    self._waiters.remove(waiter)
            if not waiter.cancelled():
                self._leases.append(waiter.result())
                return
            delay = min(delay * 2, 0.1)

    def release(self) -> None:
        if self._fallback:
            self._fallback -= 1
            return
        if not self._leases:
            return
        lease = self._leases.pop()
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(lease)  # straight to a caller waiting here: no round trip
                return
        # Kept for IDLE_S: a busy replica takes it again without a round trip; then it goes back.
        self._idle.append((lease, time.monotonic()))
        if self._trim_timer is None:
            try:
                self._trim_timer = asyncio.get_running_loop().call_later(IDLE_S, self._give_back_idle)
            except RuntimeError:
                self._idle.clear()  # no loop: the lease expires by itself

    def _give_back_idle(self, everything: bool = False) -> None:
        """Give back the slots idle for IDLE_S (all of them with ``everything``); the most recently
        released are taken first, so under steady load the same few stay and the rest go back."""
        self._trim_timer = None
        cutoff = time.monotonic() - IDLE_S
        stale = [lease for lease, since in self._idle if everything or since <= cutoff]
        self._idle = [] if everything else [(lease, since) for lease, since in self._idle if since > cutoff]
        if self._idle:
            delay = max(0.0, self._idle[0][1] - cutoff)
            self._trim_timer = asyncio.get_running_loop().call_later(delay, self._give_back_idle)
        if not stale:
            return
        task = asyncio.get_running_loop().create_task(self._remove(*stale))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def drain(self) -> None:
        """Give back idle slots now and wait for the removals (tests, shutdown)."""
        if self._trim_timer is not None:
            self._trim_timer.cancel()
        self._give_back_idle(everything=True)
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

    async def _remove(self, *leases: str) -> None:
        try:
            await self._redis.command("ZREM", self._key, *leases)
        except SharedStateUnavailable:
            log.debug(
                "could not give back %d slot(s) of %s; they expire by themselves",
                len(leases),
                self.provider_id,
            )

    def _busy(self) -> NoHealthyProvider:
        return NoHealthyProvider(
            f"provider '{self.provider_id}' is at its concurrency limit of {self.limit}; retry shortly",
            code="provider_busy",
            retry_after_s=1.0,
        )
