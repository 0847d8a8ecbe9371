"""One Redis connection for every piece of shared state, with its key namespace and its failure rule.

Every key starts with ``palyra:{<prefix>}:``. The braces make the prefix a Redis Cluster hash tag, so
the multi-key scripts of the budget ledger stay on one slot. Replicas that must share state use the
same prefix; tests use a unique one each.

Any Redis failure becomes ``SharedStateUnavailable``. After a connection failure the next calls fail
at once for ``fail_fast_s`` instead of each waiting for the socket timeout, so an outage costs the
request path microseconds, not the timeout per request; the first call after that window tries again,
which is how every component recovers when Redis returns.

Scripts and commands go through ``RespPipe`` (``palyra.shared.resp``): one multiplexed connection per
process, replies parsed by hiredis, about a quarter of redis-py's time per call. redis-py's client
(a blocking pool of ``server.redis_max_connections``) remains for what is not on the request path, such
as SCAN, and is imported and connected only when that is first used.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from palyra.shared.errors import SharedStateUnavailable
from palyra.shared.resp import (
    NoScriptError,
    RedisConnectionError,
    RedisError,
    RedisTimeoutError,
    ResponseError,
    RespPipe,
)
from palyra.shared.state import DEFAULT_PREFIX

log = logging.getLogger("palyra.shared")

if TYPE_CHECKING:
    from redis.asyncio import Redis

UNAVAILABLE = "shared_state_unavailable"
POOL_WAIT_S = 5.0


@dataclass(frozen=True)
class Script:
    """A Lua script, run by its SHA-1 (EVALSHA) and loaded when Redis does not have it."""

    source: str
    sha: str


class RedisState:
    def __init__(
        self,
        client: Callable[[], Redis],
        *,
        prefix: str = DEFAULT_PREFIX,
        fail_fast_s: float = 0.5,
        pipe: RespPipe,
    ) -> None:
        self._make_client = client
        self._client: Redis | None = None
        self.pipe = pipe
        self.prefix = prefix
        self._namespace = f"palyra:{{{prefix}}}"
        self._fail_fast_s = fail_fast_s
        self._down_until = 0.0
        self._logged_down = False

    @classmethod
    def from_url(
        cls,
        url: str,
        *,
        prefix: str = DEFAULT_PREFIX,
        timeout_s: float = 0.5,
        fail_fast_s: float = 0.5,
        max_connections: int = 64,
    ) -> RedisState:
        """A client with short timeouts and one quick retry on a dropped connection.

        Every script is safe to run twice (reservations and settlements are keyed by their id), so the
        retry after a connection lost mid-reply cannot double count.
        """

        def client() -> Redis:
            from redis.asyncio import BlockingConnectionPool, Redis
            from redis.asyncio.retry import Retry
            from redis.backoff import ExponentialBackoff

            # A blocking pool: past ``max_connections`` a call waits for a free connection instead
            # of failing as if Redis were down.
            pool = BlockingConnectionPool.from_url(
                url,
                max_connections=max_connections,
                timeout=POOL_WAIT_S,
                decode_responses=True,
                socket_timeout=timeout_s,
                socket_connect_timeout=timeout_s,
                retry=Retry(ExponentialBackoff(cap=0.05, base=0.01), 1),
                health_check_interval=15,
            )
            return Redis(connection_pool=pool)

        return cls(client, prefix=prefix, fail_fast_s=fail_fast_s, pipe=RespPipe(url, timeout_s=timeout_s))

    @property
    def client(self) -> Redis:
        """redis-py's client, for what is not on the request path (SCAN, tests); made on first use."""
        if self._client is None:
            self._client = self._make_client()
        return self._client

    def key(self, *parts: str) -> str:
        return ":".join((self._namespace, *parts))

    def script(self, source: str) -> Script:
        return Script(source, hashlib.sha1(source.encode(), usedforsecurity=False).hexdigest())

    @property
    def available(self) -> bool:
        """False while inside the fail-fast window after a connection failure."""
        return time.monotonic() >= self._down_until

    async def run(
        self,
        script: Script,
        keys: Sequence[str],
        args: Sequence[str | int | float],
        *,
        code: str = UNAVAILABLE,
    ) -> Any:
        self._check(code)
        try:
            result = await self._evalsha(script, keys, args)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, code) from exc
        self._recovered()
        return result

    async def _evalsha(self, script: Script, keys: Sequence[str], args: Sequence[str | int | float]) -> Any:
        command = ("EVALSHA", script.sha, len(keys), *keys, *args)
        for attempt in range(2):
            try:
                return await self.pipe.call(*command)
            except NoScriptError:  # first use on this Redis, or it restarted
                await self.pipe.call("SCRIPT", "LOAD", _source(script))
                return await self.pipe.call(*command)
            except RedisConnectionError:
                if attempt:
                    raise
                # One quick retry on a dropped connection: every script is safe to run twice
                # (reservations and settlements are keyed by their id).
        raise AssertionError("unreachable")  # pragma: no cover

    async def run_many(
        self,
        script: Script,
        calls: Sequence[tuple[Sequence[str], Sequence[str | int | float]]],
        *,
        code: str = UNAVAILABLE,
    ) -> list[Any]:
        """Run ``script`` once per (keys, args) in one round trip (a pipeline, not a transaction).

        Raises ``SharedStateUnavailable`` if Redis cannot be reached; a call the script itself refused
        comes back as its exception in the list, the others' replies beside it.
        """
        self._check(code)
        try:
            results = await self._evalsha_all(script, calls)
            missing = [i for i, r in enumerate(results) if isinstance(r, NoScriptError)]
            if missing:  # first use on this Redis, or it restarted: load the script, run those again
                await self.pipe.call("SCRIPT", "LOAD", _source(script))
                again = await self._evalsha_all(script, [calls[i] for i in missing])
                for i, reply in zip(missing, again, strict=True):
                    results[i] = reply
        except (RedisError, OSError) as exc:
            raise self._failed(exc, code) from exc
        self._recovered()
        return results

    async def _evalsha_all(
        self, script: Script, calls: Sequence[tuple[Sequence[str], Sequence[str | int | float]]]
    ) -> list[Any]:
        commands = [("EVALSHA", script.sha, len(keys), *keys, *args) for keys, args in calls]
        replies = await self.pipe.call_many(commands)
        for reply in replies:  # a lost connection fails the whole batch; a refused call, itself
            if isinstance(reply, RedisConnectionError | RedisTimeoutError):
                raise reply
        return replies

    async def command(self, *args: str | int | float, code: str = SharedStateUnavailable.code or "") -> Any:
        self._check(code)
        try:
            result = await self.pipe.call(*args)
        except (RedisError, OSError) as exc:
            raise self._failed(exc, code) from exc
        self._recovered()
        return result

    async def ping(self) -> bool:
        try:
            await self.command("PING")
        except SharedStateUnavailable:
            return False
        return True

    async def delete_namespace(self) -> int:
        """Remove every key under this prefix (tests, and ``palyra`` resets). Returns how many."""
        removed = 0
        pattern = "".join("\\" + c if c in "*?[]\\" else c for c in self._namespace) + ":*"
        async for key in self.client.scan_iter(match=pattern, count=500):
            removed += int(await self.client.delete(key))
        return removed

    async def aclose(self) -> None:
        await self.pipe.close()
        if self._client is not None:
            await self._client.aclose()

    def _check(self, code: str) -> None:
        if time.monotonic() < self._down_until:
            raise SharedStateUnavailable(
                "shared state (Redis) is unreachable; retrying shortly", code=code, retry_after_s=1.0
            )

    def _failed(self, exc: BaseException, code: str) -> SharedStateUnavailable:
        if isinstance(exc, RedisConnectionError | RedisTimeoutError | OSError):
            self._down_until = time.monotonic() + self._fail_fast_s
        if not self._logged_down:
            self._logged_down = True
            log.warning("shared state (Redis) failed: %s: %s", type(exc).__name__, exc)
        error = SharedStateUnavailable(
            f"shared state (Redis) is unavailable: {type(exc).__name__}", code=code, retry_after_s=1.0
        )
        error.transient = type(exc) is not ResponseError  # its subclasses: read-only, OOM, loading…
        return error

    def _recovered(self) -> None:
        if self._logged_down:
            self._logged_down = False
            log.warning("shared state (Redis) is reachable again")


def _source(script: Script) -> str:
    return script.source


def text(value: Any) -> str:
    """A script reply as text, whether the client decodes responses or not."""
    if isinstance(value, bytes):
        return value.decode()
    return str(value)
