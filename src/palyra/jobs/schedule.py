"""When a job runs: interval or cron slots (UTC), deterministic jitter, and the misfire plan.

Pure functions of their arguments, so every replica computes the same slots and the same jitter.
Interval slots sit on a grid counted from the Unix epoch (every 300 s means :00, :05, …): replicas and
restarts agree on them without coordinating.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from palyra.errors import ConfigError


def _cron() -> Any:
    """croniter (and dateutil under it, ~2 MB) is imported by the first cron schedule, not at start:
    the built-in jobs run on intervals."""
    import croniter  # type: ignore[import-untyped, unused-ignore]

    return croniter


ScheduleKind = Literal["interval", "cron"]
MisfirePolicy = Literal["skip", "catch_up_once"]
Trigger = Literal["scheduled", "manual", "catch_up"]

MIN_INTERVAL_S = 1.0
# Beyond this many missed slots a cron backlog is reported as "at least" this many.
MISSED_COUNT_CAP = 10_000
# Cron slots are scanned over a year from here to find the smallest gap (jitter must stay below it);
# a leap year, so 29 February schedules are found.
_GAP_SCAN_FROM = datetime(2028, 1, 1, tzinfo=UTC).timestamp()
_GAP_SCAN_SLOTS = 2_000


class ScheduleError(ConfigError, ValueError):
    """A job definition that cannot run. Raised at registration, never later in the loop."""


@dataclass(frozen=True, slots=True)
class Schedule:
    kind: ScheduleKind
    interval_s: float | None = None
    cron: str | None = None

    @classmethod
    def every(cls, seconds: float) -> Schedule:
        if not math.isfinite(seconds) or seconds < MIN_INTERVAL_S:
            raise ScheduleError(f"interval must be at least {MIN_INTERVAL_S:g} s, not {seconds!r}")
        return cls("interval", interval_s=float(seconds))

    @classmethod
    def cron_expr(cls, expression: str) -> Schedule:
        """A five-field cron expression (minute hour day-of-month month day-of-week), UTC.

        Validated by the same library that computes the slots, so an expression accepted here never
        fails later in the loop. Seconds and year fields are refused rather than half-supported.
        """
        text = " ".join(expression.split())
        if not text:
            raise ScheduleError("cron expression is empty")
        if not text.startswith("@") and len(text.split(" ")) != 5:
            raise ScheduleError(
                f"cron expression {expression!r} has {len(text.split(' '))} fields; use 5: "
                "minute hour day-of-month month day-of-week (e.g. '*/5 * * * *')"
            )
        if not _cron().croniter.is_valid(text):
            raise ScheduleError(f"cron expression {expression!r} is not valid (e.g. '0 3 * * *')")
        schedule = cls("cron", cron=text)
        try:
            schedule.next_after(_GAP_SCAN_FROM)
        except (_cron().CroniterError, ValueError) as exc:
            raise ScheduleError(f"cron expression {expression!r} never fires: {exc}") from None
        return schedule

    @classmethod
    def from_row(cls, row: Any) -> Schedule:
        if row.kind == "cron":
            return cls.cron_expr(row.cron_expr)
        return cls.every(row.interval_s)

    def describe(self) -> str:
        return f"every {self.interval_s:g} s" if self.kind == "interval" else f"cron '{self.cron}' (UTC)"

    def next_after(self, t: float) -> float:
        """The first slot strictly after ``t``."""
        if self.interval_s is not None:
            return (math.floor(t / self.interval_s) + 1) * self.interval_s
        return float(_cron().croniter(self.cron, t).get_next(float))

    def latest_at_or_before(self, t: float) -> float:
        """The last slot at or before ``t``."""
        if self.interval_s is not None:
            return math.floor(t / self.interval_s) * self.interval_s
        # Cron slots fall on whole seconds; get_prev is strictly-before, so start one second on.
        return float(_cron().croniter(self.cron, t).get_prev(float, start_time=math.floor(t) + 1))

    def previous_before(self, slot: float) -> float:
        if self.interval_s is not None:
            return slot - self.interval_s
        return float(_cron().croniter(self.cron, slot).get_prev(float))

    def count_slots(self, first: float, last: float) -> int:
        """How many slots lie in [first, last] (``first`` a slot), capped at ``MISSED_COUNT_CAP``."""
        if last < first:
            return 0
        if self.interval_s is not None:
            return min(MISSED_COUNT_CAP, round((last - first) / self.interval_s) + 1)
        it = _cron().croniter(self.cron, first - 1)
        count = 0
        while count < MISSED_COUNT_CAP and it.get_next(float) <= last:
            count += 1
        return count

    def min_gap_s(self) -> float:
        if self.interval_s is not None:
            return self.interval_s
        it = _cron().croniter(self.cron, _GAP_SCAN_FROM)
        prev = it.get_next(float)
        gap = math.inf
        horizon = _GAP_SCAN_FROM + 366 * 86_400
        for _ in range(_GAP_SCAN_SLOTS):
            nxt = it.get_next(float)
            gap = min(gap, nxt - prev)
            if nxt > horizon or gap <= 60:
                break
            prev = nxt
        return gap


def jitter_offset(job_id: str, slot: float, jitter_s: float) -> float:
    """A stable offset in [0, jitter_s] for this job and slot: the same on every replica and restart."""
    if jitter_s <= 0:
        return 0.0
    key = f"{job_id}\x00{round(slot * 1000)}".encode()
    digest = hashlib.blake2b(key, digest_size=8).digest()
    span_ms = int(jitter_s * 1000) + 1
    return (int.from_bytes(digest, "big") % span_ms) / 1000.0


def fire_time(job_id: str, slot: float, jitter_s: float) -> float:
    return slot + jitter_offset(job_id, slot, jitter_s)


@dataclass(frozen=True, slots=True)
class SlotPlan:
    """What a due job does now, and where its timer moves.

    ``run_slot`` is the slot to run (None: run nothing); ``missed`` counts the slots that were not
    run on time, from ``first_missed`` to ``last_missed``. With ``skip`` those are recorded as one
    skipped run; with ``catch_up_once`` the run covers them.
    """

    run_slot: float | None
    trigger: Trigger
    missed: int
    first_missed: float | None
    last_missed: float | None
    next_slot: float
    next_run_at: float


def plan_due(
    schedule: Schedule,
    *,
    job_id: str,
    next_slot: float,
    now: float,
    jitter_s: float,
    grace_s: float,
    misfire: MisfirePolicy,
) -> SlotPlan:
    """The plan for a job whose timer (``next_slot`` plus jitter) has come due at ``now``.

    The latest due slot runs if it is within ``grace_s`` of its fire time. Slots before it, or it too
    when late, were missed (the daemon was down or stalled): ``skip`` runs nothing for them,
    ``catch_up_once`` runs once for all of them. Either way the timer moves to the first future slot.
    """
    latest = schedule.latest_at_or_before(now)
    if latest > next_slot and fire_time(job_id, latest, jitter_s) > now:
        latest = schedule.previous_before(latest)  # its jitter has not elapsed yet
    latest = max(latest, next_slot)
    upcoming = schedule.next_after(latest)
    on_time = now - fire_time(job_id, latest, jitter_s) <= grace_s
    last_missed = (
        latest if not on_time else (schedule.previous_before(latest) if latest > next_slot else None)
    )
    missed = 0 if last_missed is None else schedule.count_slots(next_slot, last_missed)
    if on_time:
        run_slot: float | None = latest
        trigger: Trigger = "scheduled"
    elif misfire == "catch_up_once":
        run_slot, trigger = latest, "catch_up"
    else:
        run_slot, trigger = None, "scheduled"
    return SlotPlan(
        run_slot=run_slot,
        trigger=trigger,
        missed=missed,
        first_missed=next_slot if missed else None,
        last_missed=last_missed if missed else None,
        next_slot=upcoming,
        next_run_at=fire_time(job_id, upcoming, jitter_s),
    )
