"""Leases: at most one holder of a named job at a time (the cron scheduler takes one per job run).

A lease is taken for ``ttl_s`` and renewed by taking it again before it runs out; a holder that dies
simply stops renewing and the lease falls free after ``ttl_s``. In process it is a dictionary; in Redis
one key per lease, ``palyra:{prefix}:lease:<name>``, set with NX and a TTL, renewed and released only
by the holder that owns it (compare-and-set in Lua).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from palyra.shared.redis_state import RedisState


class LeaseStore(Protocol):
    async def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        """Take or renew the lease; False if another holder has it."""
        ...

    async def release(self, name: str, holder: str) -> None:
        """Give the lease back if ``holder`` has it."""
        ...

    async def holder(self, name: str) -> str | None: ...


class InProcessLeaseStore:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._leases: dict[str, tuple[str, float]] = {}  # name -> (holder, expires at)

    async def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        now = self._clock()
        current = self._leases.get(name)
        if current is not None and current[0] != holder and current[1] > now:
            return False
        self._leases[name] = (holder, now + ttl_s)
        return True

    async def release(self, name: str, holder: str) -> None:
        current = self._leases.get(name)
        if current is not None and current[0] == holder:
            del self._leases[name]

    async def holder(self, name: str) -> str | None:
        current = self._leases.get(name)
        if current is None or current[1] <= self._clock():
            return None
        return current[0]


_ACQUIRE = """
local current = redis.call('GET', KEYS[1])
if current == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if current then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""

_RELEASE = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


class RedisLeaseStore:
    """Raises ``SharedStateUnavailable`` when Redis is unreachable: a job then does not run here."""

    def __init__(self, redis: RedisState) -> None:
        self._redis = redis
        self._acquire = redis.script(_ACQUIRE)
        self._release = redis.script(_RELEASE)

    async def acquire(self, name: str, holder: str, ttl_s: float) -> bool:
        ttl_ms = max(1, int(ttl_s * 1000))
        reply = await self._redis.run(self._acquire, [self._redis.key("lease", name)], [holder, ttl_ms])
        return int(reply) == 1

    async def release(self, name: str, holder: str) -> None:
        await self._redis.run(self._release, [self._redis.key("lease", name)], [holder])

    async def holder(self, name: str) -> str | None:
        value = await self._redis.command("GET", self._redis.key("lease", name))
        return None if value is None else value.decode() if isinstance(value, bytes) else str(value)
