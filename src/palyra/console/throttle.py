"""Failed console logins per client address: a few mistakes are fine, guessing the token is not."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable


class LoginThrottle:
    def __init__(
        self, *, max_failures: int = 10, window_s: float = 300.0, clock: Callable[[], float] = time.time
    ) -> None:
        self._max = max_failures
        self._window_s = window_s
        self._clock = clock
        self._failures: dict[str, deque[float]] = {}

    def _recent(self, client: str) -> deque[float]:
        now = self._clock()
        failures = self._failures.get(client, deque())
        while failures and failures[0] <= now - self._window_s:
            failures.popleft()
        return failures

    def retry_after_s(self, client: str) -> float:
        """Seconds until this client may try again; 0 when it may try now."""
        failures = self._recent(client)
        if len(failures) < self._max:
            return 0.0
        return max(1.0, failures[0] + self._window_s - self._clock())

    def failed(self, client: str) -> None:
        failures = self._recent(client)
        failures.append(self._clock())
        self._failures[client] = failures
        if len(self._failures) > 10_000:  # a scan from many addresses must not grow memory forever
            for key in [k for k, v in self._failures.items() if not self._recent(k)]:
                del self._failures[key]

    def succeeded(self, client: str) -> None:
        self._failures.pop(client, None)
