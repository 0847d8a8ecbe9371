"""Where an adapter gets its key. Adapters see only this protocol, so the vault's auth profiles slot in
later without touching them."""

from __future__ import annotations

import os
from collections.abc import Mapping
from contextvars import ContextVar
from typing import Protocol

# The agent a request acts as; set by the gateway for the request's task, read by credential sources
# that choose a credential per agent (auth profiles).
REQUEST_AGENT: ContextVar[str | None] = ContextVar("palyra_request_agent", default=None)


class CredentialSource(Protocol):
    #: False for upstreams that take no key at all (a local Ollama); then None from api_key() is fine.
    needs_key: bool

    async def api_key(self) -> str | None: ...

    def describe(self) -> str:
        """Where the key comes from, for operators; never the key."""
        ...

    def feedback(self, failure_class: str | None) -> None:
        """How the last attempt that used this source's key ended (None: success)."""
        ...

    async def configured(self) -> bool:
        """Whether a key is there to be used at all (for status views; no refresh, no agent rules)."""
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

    def feedback(self, failure_class: str | None) -> None:
        return None

    async def configured(self) -> bool:
        return bool(self._environ.get(self.name, "").strip())


class NoCredential:
    """Upstreams that need no key (a local Ollama or vLLM)."""

    needs_key = False

    async def api_key(self) -> str | None:
        return None

    def describe(self) -> str:
        return "none"

    def feedback(self, failure_class: str | None) -> None:
        return None

    async def configured(self) -> bool:
        return True


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
