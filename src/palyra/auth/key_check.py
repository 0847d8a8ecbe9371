"""Checking an API key against its upstream (``GET /models``) before it is stored.

Nothing is persisted unless this passes, so a typo never becomes a profile.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from palyra.providers.failures import sanitize_remote_error
from palyra.providers.http_client import make_session

OPENAI_DEFAULT_BASE = "https://api.openai.com/v1"
ANTHROPIC_DEFAULT_BASE = "https://api.anthropic.com"
TRANSPORT_ATTEMPTS = 3


@dataclass(frozen=True, slots=True)
class KeyCheckTarget:
    provider: str  # openai | anthropic | custom
    base_url: str
    allow_private: bool = False


class KeyCheckFailed(Exception):
    """``kind``: invalid_credential | rate_limited | unavailable | unexpected."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind
        self.message = message


async def check_api_key(target: KeyCheckTarget, key: str, *, timeout_s: float = 10.0) -> None:
    if target.provider == "anthropic":
        base = target.base_url.rstrip("/")
        url = (base[:-3] if base.endswith("/v1") else base) + "/v1/models"
        headers = {"x-api-key": key, "anthropic-version": "2023-06-01", "accept": "application/json"}
    else:
        url = target.base_url.rstrip("/") + "/models"
        headers = {"Authorization": f"Bearer {key}", "accept": "application/json"}
    import aiohttp  # loaded when a key is checked, not at start

    session = make_session("key-check", pool_size=2, allow_private=target.allow_private)
    try:
        for attempt in range(TRANSPORT_ATTEMPTS):
            try:
                async with session.get(
                    url,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout_s),
                    allow_redirects=False,
                ) as resp:
                    body = (await resp.read())[:2000].decode(errors="replace")
                    status = resp.status
                break
            except (aiohttp.ClientError, TimeoutError, OSError):
                if attempt == TRANSPORT_ATTEMPTS - 1:
                    raise KeyCheckFailed(
                        "unavailable",
                        f"could not reach {url} to validate the key; retry later or use --no-validate",
                    ) from None
                await asyncio.sleep(0.1)
    finally:
        await session.close()
    if 200 <= status < 300:
        return
    if status in (401, 403):
        raise KeyCheckFailed("invalid_credential", f"the upstream refused this key (HTTP {status})")
    if status == 429:
        raise KeyCheckFailed("rate_limited", "the upstream rate-limited the validation call; retry shortly")
    if status >= 500:
        raise KeyCheckFailed("unavailable", f"the upstream answered HTTP {status}; retry later")
    raise KeyCheckFailed(
        "unexpected",
        f"validation endpoint returned status {status}: {sanitize_remote_error(body, secrets=(key,))}",
    )
