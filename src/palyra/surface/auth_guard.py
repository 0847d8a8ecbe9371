"""Failed authentications per client address: token guessing is answered with 429, not with more 401s.

Every refused credential (an unknown, expired or revoked API token, a wrong admin token) counts one
hit on ``auth_fail:<address>`` in the shared ``CounterStore``, a fixed one-minute window, so with
Redis the count is the fleet's, not one replica's. Past ``limit_per_minute`` failures the address is
refused with 429 ``rate_limit_exceeded`` and a ``Retry-After`` until the window ends, and during that
time *every* authentication from it is refused, the right credential included: otherwise a guesser
would still learn which guess was right from a 200 among the 429s. The block is remembered by each
replica that saw the count go over (a replica that has not yet seen it lets one more attempt through,
which counts and blocks there too).

Successful requests cost nothing here: one dictionary lookup. The comparison of the credential itself
stays where it is (a SHA-256 lookup for API tokens, ``hmac.compare_digest`` for the admin token).
"""

from __future__ import annotations

from collections import OrderedDict

from starlette.requests import HTTPConnection

from palyra.errors import AuthenticationFailed, RateLimited
from palyra.shared_state import CounterStore

WINDOW_S = 60
_BLOCKED_MAX = 10_000  # addresses remembered as blocked; the oldest are forgotten first


def client_address(conn: HTTPConnection) -> str:
    """The peer's address as uvicorn reports it (after X-Forwarded-For from a trusted proxy)."""
    client = conn.client
    return client.host if client is not None and client.host else "unknown"


class FailedAuthLimiter:
    def __init__(self, counters: CounterStore, *, limit_per_minute: int) -> None:
        self._counters = counters
        self.limit = limit_per_minute
        self._blocked: OrderedDict[str, float] = OrderedDict()  # address -> blocked until

    def check(self, address: str, now: float) -> None:
        """Raise 429 when ``address`` is blocked; call before looking at the credential."""
        if not self.limit:
            return
        until = self._blocked.get(address)
        if until is None:
            return
        if now < until:
            raise self._refusal(until - now)
        del self._blocked[address]

    async def failed(self, address: str, now: float, exc: AuthenticationFailed) -> Exception:
        """Count a refused credential; return the error to raise (the 401, or 429 past the limit)."""
        if not self.limit:
            return exc
        count, reset_in = await self._counters.hit(f"auth_fail:{address}", WINDOW_S, now)
        if count <= self.limit:
            return exc
        self._blocked[address] = now + reset_in
        self._blocked.move_to_end(address)
        while len(self._blocked) > _BLOCKED_MAX:
            self._blocked.popitem(last=False)
        return self._refusal(reset_in)

    def _refusal(self, retry_after_s: float) -> RateLimited:
        return RateLimited(
            f"too many failed authentications from this address (more than {self.limit} a minute); "
            "check the API token and retry after the window resets",
            retry_after_s=max(1.0, retry_after_s),
        )
