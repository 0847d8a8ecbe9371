"""Fixed-window counters in Redis: the ``CounterStore`` every replica shares, so a per-token rate limit
holds across the fleet instead of multiplying by the number of replicas.

One key per counter and window, ``palyra:{prefix}:rl:<key>:<window index>``, incremented by a script
that also sets its expiry on the first hit. The expiry is relative (the rest of the window plus a
second), so a replica whose clock is off cannot make a counter vanish early.

Redis unreachable: the counter falls back to this replica's own in-process window, so during an
outage a limit holds per replica (the fleet may admit up to limit times the replica count) instead of refusing
every request; it goes back to the shared counter on the first call after Redis answers again.
"""

from __future__ import annotations

import time

from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.redis_state import RedisState
from palyra.shared_state import InProcessCounterStore

RATE_LIMIT_UNAVAILABLE = "rate_limit_store_unavailable"

_HIT = """
local n = redis.call('INCR', KEYS[1])
if n == 1 or redis.call('PTTL', KEYS[1]) < 0 then
  redis.call('PEXPIRE', KEYS[1], ARGV[1])
end
return n
"""


class RedisCounterStore:
    def __init__(self, redis: RedisState) -> None:
        self._redis = redis
        self._hit = redis.script(_HIT)
        self._fallback = InProcessCounterStore()

    async def hit(self, key: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        """Count one hit in the fixed window containing ``now``; return (count, seconds to reset).

        With Redis down, counts in this replica's own window instead (see the module docstring).
        """
        now = time.time() if now is None else now
        index = int(now // window_s)
        reset_s = (index + 1) * window_s - now
        try:
            count = await self._redis.run(
                self._hit,
                [self._redis.key("rl", key, str(index))],
                [int(reset_s * 1000) + 1000],
                code=RATE_LIMIT_UNAVAILABLE,
            )
        except SharedStateUnavailable:
            return await self._fallback.hit(key, window_s, now)
        return int(count), reset_s
