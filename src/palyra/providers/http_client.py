"""The pooled aiohttp session every HTTP adapter uses, with the SSRF guard in its DNS resolver.

Checking addresses at connection time, not only at start-up, also covers DNS answers that change
later (rebinding) to a private address.
"""

from __future__ import annotations

import contextlib
import socket
from collections.abc import AsyncIterator, Iterable
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult

from palyra.netguard import is_private_address
from palyra.providers.failures import UpstreamAttemptError, connection_error, timeout_error

try:  # aiohttp's own default resolver (aiodns when installed, else the thread pool)
    from aiohttp.resolver import DefaultResolver
except ImportError:  # pragma: no cover
    from aiohttp.resolver import ThreadedResolver as DefaultResolver

import ipaddress


class GuardedResolver(AbstractResolver):
    """Resolves like aiohttp's default but refuses private and special-use addresses."""

    def __init__(self, provider_id: str) -> None:
        self._inner = DefaultResolver()
        self._provider_id = provider_id

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        allowed = [r for r in results if not is_private_address(ipaddress.ip_address(r["host"]))]
        if not allowed:
            raise OSError(
                f"{host} resolves to a private/local address; provider '{self._provider_id}' may only reach "
                "it with allow_private_base_url = true"
            )
        return allowed

    async def close(self) -> None:
        await self._inner.close()


@contextlib.asynccontextmanager
async def upstream_call(provider_id: str, phase: str, secrets: Iterable[str]) -> AsyncIterator[None]:
    """One place that turns transport failures of an upstream call into attempt errors."""
    try:
        yield
    except UpstreamAttemptError:
        raise
    except TimeoutError:
        raise timeout_error(provider_id, phase) from None
    except aiohttp.ClientError as exc:
        raise connection_error(provider_id, exc, secrets=secrets) from None


def make_session(provider_id: str, *, pool_size: int, allow_private: bool) -> aiohttp.ClientSession:
    kwargs: dict[str, Any] = {"limit": pool_size, "ttl_dns_cache": 300}
    if not allow_private:
        kwargs["resolver"] = GuardedResolver(provider_id)
    # No cookie jar: an upstream's cookies must not ride along on other callers' requests, and
    # filtering a jar costs every request ~10 µs for nothing.
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(**kwargs), cookie_jar=aiohttp.DummyCookieJar()
    )
