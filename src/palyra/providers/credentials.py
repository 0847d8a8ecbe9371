"""Where an adapter gets its key. Adapters see only this protocol, so the vault's auth profiles slot in
later without touching them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Protocol


class CredentialSource(Protocol):
    #: False for upstreams that take no key at all (a local Ollama); then None from api_key() is fine.
    needs_key: bool

    async def api_key(self) -> str | None: ...

    def describe(self) -> str:
        """Where the key comes from, for operators; never the key."""
        ...


class EnvCredential:
    """``api_key_env = "NAME"``: the key stays in the environment and is read when needed."""

    needs_key = True

    def __init__(self, name: str, environ: Mapping[str, str] | None = None) -> None:
        self.name = name
        self._environ = os.environ if environ is None else environ

    async def api_key(self) -> str | None:
        value = self._environ.get(self.name, "").strip()
        return value or None

    def describe(self) -> str:
        return f"env:{self.name}"


class NoCredential:
    """Upstreams that need no key (a local Ollama or vLLM)."""

    needs_key = False

    async def api_key(self) -> str | None:
        return None

    def describe(self) -> str:
        return "none"


async def key_or_fail(credential: CredentialSource, provider_id: str) -> str | None:
    """The key, or an attempt error that says which setting to fix (never the key's value)."""
    from palyra.providers.failures import FailureClass, UpstreamAttemptError

    key = await credential.api_key()
    if key is None and credential.needs_key:
        raise UpstreamAttemptError(
            failure_class=FailureClass.AUTH_INVALID,
            status=None,
            message=f"provider '{provider_id}' has no API key: {credential.describe()} is not set",
            retryable=False,
            retry_after_s=None,
            failover_eligible=True,
            provider_id=provider_id,
        )
    return key
