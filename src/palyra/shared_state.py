"""State that replicas must share: counters with a window. In-process here; Redis arrives with scale-out.

Callers depend on the ``CounterStore`` protocol only, so the Redis implementation slots in unchanged.
"""

from __future__ import annotations

import time
from typing import Protocol


class CounterStore(Protocol):
    async def hit(self, key: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        """Count one hit in the fixed window containing ``now``; return (count, seconds to reset)."""
        ...


class InProcessCounterStore:
    def __init__(self) -> None:
        self._windows: dict[str, tuple[int, int]] = {}  # key -> (window index, count)

    async def hit(self, key: str, window_s: int, now: float | None = None) -> tuple[int, float]:
        now = time.time() if now is None else now
        index = int(now // window_s)
        current = self._windows.get(key)
        count = current[1] + 1 if current is not None and current[0] == index else 1
        self._windows[key] = (index, count)
        return count, (index + 1) * window_s - now
