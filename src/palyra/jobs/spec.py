"""A job as code declares it (``JobSpec``) and what its handler receives (``JobContext``)."""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, get_args

from palyra.jobs.overlap import OverlapPolicy
from palyra.jobs.schedule import MisfirePolicy, Schedule, ScheduleError

_NAME = re.compile(r"^[a-z0-9][a-z0-9_.-]{0,127}$")


@dataclass(frozen=True, slots=True)
class JobContext:
    """What a handler gets. ``report_progress`` records progress on the run row (and heartbeats)."""

    job: str
    run_id: str
    slot_at: float
    trigger: str
    missed_slots: int
    settings: Mapping[str, Any]
    log: logging.Logger
    _progress: Callable[[Mapping[str, Any]], Awaitable[None]] = field(repr=False)

    async def report_progress(self, progress: Mapping[str, Any]) -> None:
        await self._progress(progress)


Handler = Callable[[JobContext], Awaitable[Mapping[str, Any] | None]]


@dataclass(frozen=True, slots=True)
class JobSpec:
    """A periodic job. Exactly one of ``interval_s`` and ``cron`` (five fields, UTC).

    ``handler`` returns a JSON-able summary (or None); an exception fails the run with its message
    redacted. ``enabled`` is only the state of a job the database has never seen: afterwards the
    persisted flag (``palyra cron``/the admin API) wins. Schedule, policies, jitter and settings come
    from code and configuration on every start.
    """

    name: str
    handler: Handler
    interval_s: float | None = None
    cron: str | None = None
    overlap: OverlapPolicy = "forbid"
    misfire: MisfirePolicy = "skip"
    jitter_s: float = 0.0
    misfire_grace_s: float = 60.0
    enabled: bool = True
    settings: Mapping[str, Any] = field(default_factory=dict)
    description: str = ""
    schedule: Schedule = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not _NAME.match(self.name):
            raise ScheduleError(f"job name {self.name!r}: use 1-128 lowercase letters, digits, '_', '.', '-'")
        where = f"job {self.name!r}"
        if (self.interval_s is None) == (self.cron is None):
            raise ScheduleError(f"{where}: set exactly one of interval_s and cron")
        try:
            schedule = (
                Schedule.every(self.interval_s)
                if self.interval_s is not None
                else Schedule.cron_expr(self.cron or "")
            )
        except ValueError as exc:
            raise ScheduleError(f"{where}: {exc}") from None
        if self.overlap not in get_args(OverlapPolicy):
            raise ScheduleError(f"{where}: overlap must be one of {', '.join(get_args(OverlapPolicy))}")
        if self.misfire not in get_args(MisfirePolicy):
            raise ScheduleError(f"{where}: misfire must be one of {', '.join(get_args(MisfirePolicy))}")
        gap = schedule.min_gap_s()
        if not 0 <= self.jitter_s < gap:
            raise ScheduleError(
                f"{where}: jitter_s must be at least 0 and below the shortest gap between slots "
                f"({gap:g} s), not {self.jitter_s!r}"
            )
        if self.misfire_grace_s < 0:
            raise ScheduleError(f"{where}: misfire_grace_s must be at least 0")
        object.__setattr__(self, "schedule", schedule)
