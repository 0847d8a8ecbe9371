"""HTTP sessions for talking to upstreams, with the SSRF guard, and the one place transport failures
become attempt errors.

Provider adapters use ``make_upstream_session`` (``palyra.providers.upstream_http``: lean keep-alive
HTTP/1.1, the guard checked at connect time). The OAuth client and the key check use an aiohttp session
from ``make_session``, with the same guard in its DNS resolver; aiohttp is imported when the first such
session is made. Checking addresses at connection time, not only at start-up, also covers DNS answers
that change later (rebinding) to a private address.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
from collections.abc import Iterable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from palyra.netguard import is_private_address
from palyra.providers.failures import UpstreamAttemptError, connection_error, timeout_error
from palyra.providers.upstream_http import UpstreamConnectionError, UpstreamSession

if TYPE_CHECKING:
    import aiohttp


def make_upstream_session(provider_id: str, *, pool_size: int, allow_private: bool) -> UpstreamSession:
    return UpstreamSession(provider_id, pool_size=pool_size, allow_private=allow_private)


class upstream_call:  # named like the function it replaced: ``async with upstream_call(...)``
    """One place that turns transport failures of an upstream call into attempt errors.

    A class rather than ``@asynccontextmanager``: it is entered on every model call, and a generator
    based context manager costs several times as much."""

    __slots__ = ("_phase", "_provider_id", "_secrets")

    def __init__(self, provider_id: str, phase: str, secrets: Iterable[str]) -> None:
        self._provider_id = provider_id
        self._phase = phase
        self._secrets = secrets

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> bool:
        if exc is None or isinstance(exc, UpstreamAttemptError):
            return False
        if isinstance(exc, TimeoutError):
            raise timeout_error(self._provider_id, self._phase) from None
        if isinstance(exc, UpstreamConnectionError):
            raise connection_error(self._provider_id, exc, secrets=self._secrets) from None
        aiohttp = sys.modules.get("aiohttp")
        if aiohttp is not None and isinstance(exc, aiohttp.ClientError):
            raise connection_error(self._provider_id, exc, secrets=self._secrets) from None
        return False


def make_session(provider_id: str, *, pool_size: int, allow_private: bool) -> aiohttp.ClientSession:
    import aiohttp

    kwargs: dict[str, Any] = {"limit": pool_size, "ttl_dns_cache": 300}
    if not allow_private:
        kwargs["resolver"] = _guarded_resolver(provider_id)
    # No cookie jar: an upstream's cookies must not ride along on other callers' requests, and
    # filtering a jar costs every request ~10 µs for nothing.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(**kwargs), cookie_jar=aiohttp.DummyCookieJar()
    )


def _guarded_resolver(provider_id: str) -> Any:
    from aiohttp.abc import AbstractResolver, ResolveResult

    try:  # aiohttp's own default resolver (aiodns when installed, else the thread pool)
        from aiohttp.resolver import DefaultResolver
    except ImportError:  # pragma: no cover
        from aiohttp.resolver import ThreadedResolver as DefaultResolver

    class GuardedResolver(AbstractResolver):
        """Resolves like aiohttp's default but refuses private and special-use addresses."""

        def __init__(self) -> None:
            self._inner = DefaultResolver()

        async def resolve(
            self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
        ) -> list[ResolveResult]:
            results = await self._inner.resolve(host, port, family)
            allowed = [r for r in results if not is_private_address(ipaddress.ip_address(r["host"]))]
            if not allowed:
                raise OSError(
                    f"{host} resolves to a private/local address; provider '{provider_id}' may only "
                    "reach it with allow_private_base_url = true"
                )
            return allowed

        async def close(self) -> None:
            await self._inner.close()

    return GuardedResolver()
