"""What each provider's recent calls say about it: counts, latency, error rate, last error, state.

``healthy | degraded | cooling_down | unavailable``: cooling_down while its circuit is open;
unavailable when its credential is missing or refused and nothing has succeeded since; degraded when
more than a fifth of the last calls in the window failed or the last one did; healthy otherwise.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from typing import Any

WINDOW_S = 300.0
_MAX_SAMPLES = 1000
_CREDENTIAL_CLASSES = {"auth_invalid", "permission_denied", "missing_credential"}


@dataclass(slots=True)
class LastError:
    failure_class: str
    message: str
    status: int | None
    at: float


class ProviderHealth:
    def __init__(self, provider_id: str) -> None:
        self.provider_id = provider_id
        self.requests = 0
        self.errors = 0
        self.retries = 0
        self.last_error: LastError | None = None
        self.last_success_at: float | None = None
        self._samples: deque[tuple[float, bool, float]] = deque(maxlen=_MAX_SAMPLES)

    def record_success(self, latency_s: float) -> None:
        now = time.time()
        self.requests += 1
        self.last_success_at = now
        self._samples.append((now, True, latency_s))

    def record_failure(self, failure_class: str, message: str, status: int | None, latency_s: float) -> None:
        now = time.time()
        self.requests += 1
        self.errors += 1
        self.last_error = LastError(failure_class, message, status, now)
        self._samples.append((now, False, latency_s))

    def _recent(self) -> list[tuple[float, bool, float]]:
        cutoff = time.time() - WINDOW_S
        return [s for s in self._samples if s[0] >= cutoff]

    def state(self, *, circuit_open: bool, has_credential: bool) -> str:
        if circuit_open:
            return "cooling_down"
        if not has_credential:
            return "unavailable"
        last = self.last_error
        if (
            last is not None
            and last.failure_class in _CREDENTIAL_CLASSES
            and (self.last_success_at is None or self.last_success_at < last.at)
        ):
            return "unavailable"
        recent = self._recent()
        if recent:
            failed = sum(1 for _, ok, _ in recent if not ok)
            if not recent[-1][1] or failed / len(recent) > 0.2:
                return "degraded"
        return "healthy"

    def snapshot(self) -> dict[str, Any]:
        recent = self._recent()
        latencies = sorted(lat for _, ok, lat in recent if ok)
        failed = sum(1 for _, ok, _ in recent if not ok)
        return {
            "requests": self.requests,
            "errors": self.errors,
            "retries": self.retries,
            "window_s": WINDOW_S,
            "window_requests": len(recent),
            "error_rate": round(failed / len(recent), 4) if recent else 0.0,
            "latency_ms_p50": round(latencies[len(latencies) // 2] * 1000, 2) if latencies else None,
            "latency_ms_p95": round(latencies[int(len(latencies) * 0.95)] * 1000, 2) if latencies else None,
            "last_success_at": self.last_success_at,
            "last_error": None
            if self.last_error is None
            else {
                "class": self.last_error.failure_class,
                "message": self.last_error.message,
                "status": self.last_error.status,
                "at": self.last_error.at,
            },
        }
