"""A provider credential that comes from an auth profile, chosen per request and agent."""

from __future__ import annotations

from contextvars import ContextVar

from palyra.auth.service import AuthService, CredentialUnavailable
from palyra.config.models import ProviderConfig
from palyra.providers.credentials import REQUEST_AGENT
from palyra.providers.failures import FailureClass, UpstreamAttemptError

# Which profile the current attempt used, so its outcome is credited to the right profile.
_USED_PROFILE: ContextVar[str | None] = ContextVar("palyra_used_profile", default=None)


class AuthProfileCredential:
    needs_key = True

    def __init__(self, service: AuthService, provider: ProviderConfig) -> None:
        self._service = service
        self._provider = provider

    async def api_key(self) -> str | None:
        try:
            resolved = await self._service.resolve(self._provider, REQUEST_AGENT.get())
        except CredentialUnavailable as exc:
            raise UpstreamAttemptError(
                failure_class=FailureClass.PERMISSION_DENIED
                if exc.kind == "scope"
                else FailureClass.AUTH_INVALID,
                status=None,
                message=exc.message,
                retryable=False,
                retry_after_s=None,
                failover_eligible=True,
                provider_id=self._provider.provider_id,
            ) from None
        _USED_PROFILE.set(resolved.profile_id)
        return resolved.secret

    async def configured(self) -> bool:
        return await self._service.has_secret(self._provider.auth_profile_id or "")

    def describe(self) -> str:
        return f"auth_profile:{self._provider.auth_profile_id}"

    def feedback(self, failure_class: str | None) -> None:
        profile_id = _USED_PROFILE.get()
        if profile_id is not None:
            self._service.feedback(profile_id, failure_class)
            _USED_PROFILE.set(None)
