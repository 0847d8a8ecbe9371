"""Pure scheduling logic: slots, cron parsing, jitter, misfire plans, overlap decisions, JobSpec checks."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from palyra.errors import ConfigError
from palyra.jobs import JobContext, JobSpec, Schedule, ScheduleError
from palyra.jobs.overlap import Action, decide_overlap
from palyra.jobs.schedule import fire_time, jitter_offset, plan_due

DAY = 86_400.0


def ts(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


async def noop(_ctx: JobContext) -> dict[str, Any]:
    return {}


def test_interval_slots_sit_on_an_epoch_grid() -> None:
    s = Schedule.every(300)
    assert s.next_after(1_000_000.0) == 1_000_200.0
    assert s.next_after(1_000_200.0) == 1_000_500.0  # strictly after
    assert s.latest_at_or_before(1_000_200.0) == 1_000_200.0
    assert s.latest_at_or_before(1_000_499.9) == 1_000_200.0
    assert s.count_slots(1_000_200.0, 1_001_700.0) == 6


def test_cron_every_five_minutes_utc() -> None:
    s = Schedule.cron_expr("*/5 * * * *")
    assert s.next_after(ts("2026-03-01T10:02:30")) == ts("2026-03-01T10:05:00")
    assert s.next_after(ts("2026-03-01T10:05:00")) == ts("2026-03-01T10:10:00")
    assert s.latest_at_or_before(ts("2026-03-01T10:05:00")) == ts("2026-03-01T10:05:00")
    assert s.latest_at_or_before(ts("2026-03-01T10:09:59.5")) == ts("2026-03-01T10:05:00")
    assert s.count_slots(ts("2026-03-01T10:00:00"), ts("2026-03-01T11:00:00")) == 13
    assert s.min_gap_s() == 300


def test_cron_steps_lists_and_day_or_semantics() -> None:
    # "5/15" is 5, 20, 35, 50 (the reference read it as minute 5 only).
    s = Schedule.cron_expr("5/15 * * * *")
    t = ts("2026-03-01T10:00:00")
    got = []
    for _ in range(4):
        t = s.next_after(t)
        got.append(datetime.fromtimestamp(t, UTC).minute)
    assert got == [5, 20, 35, 50]
    # Day-of-month and weekday both set: either matches (Vixie cron).
    s = Schedule.cron_expr("0 9 1 * 1")
    t = ts("2026-01-01T00:00:00")
    days = []
    for _ in range(4):
        t = s.next_after(t)
        days.append(datetime.fromtimestamp(t, UTC).strftime("%a %d"))
    assert days == ["Thu 01", "Mon 05", "Mon 12", "Mon 19"]


@pytest.mark.parametrize(
    "expr",
    [
        "*/0 * * * *",  # step 0
        "0 0 * * 0 *",  # six fields: accepted by some parsers, would break the loop later (quirk 10)
        "0 0 0 * * * 2030",
        "61 * * * *",
        "",
        "0 0 30 2 *",  # 30 February never comes
    ],
)
def test_bad_cron_expressions_are_refused_at_registration(expr: str) -> None:
    with pytest.raises(ScheduleError) as info:
        JobSpec("j", noop, cron=expr)
    assert "job 'j'" in str(info.value)
    assert isinstance(info.value, ConfigError)  # `palyra serve` reports it like any config error


def test_jobspec_validation() -> None:
    with pytest.raises(ScheduleError, match="exactly one"):
        JobSpec("j", noop)
    with pytest.raises(ScheduleError, match="exactly one"):
        JobSpec("j", noop, interval_s=60, cron="* * * * *")
    with pytest.raises(ScheduleError, match="at least 1"):
        JobSpec("j", noop, interval_s=0.5)
    with pytest.raises(ScheduleError, match="jitter_s"):
        JobSpec("j", noop, interval_s=60, jitter_s=60)
    with pytest.raises(ScheduleError, match="jitter_s"):
        JobSpec("j", noop, cron="*/5 * * * *", jitter_s=300)
    with pytest.raises(ScheduleError, match="overlap"):
        JobSpec("j", noop, interval_s=60, overlap="parallel")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="misfire"):
        JobSpec("j", noop, interval_s=60, misfire="catch_up")  # type: ignore[arg-type]
    with pytest.raises(ScheduleError, match="job name"):
        JobSpec("Bad Name", noop, interval_s=60)
    assert JobSpec("j", noop, cron="@hourly", jitter_s=3599).schedule.min_gap_s() == 3600


def test_jitter_is_deterministic_per_slot_and_bounded() -> None:
    offsets = [jitter_offset("memory_maintenance", 300.0 * k, 30) for k in range(500)]
    assert offsets == [jitter_offset("memory_maintenance", 300.0 * k, 30) for k in range(500)]
    assert all(0 <= o <= 30 for o in offsets)
    assert len(set(offsets)) > 100  # spread, not constant
    assert jitter_offset("j", 300.0, 0) == 0.0
    assert fire_time("j", 300.0, 10) == 300.0 + jitter_offset("j", 300.0, 10)


def test_plan_on_time_runs_the_slot() -> None:
    s = Schedule.every(60)
    plan = plan_due(s, job_id="j", next_slot=600, now=600.5, jitter_s=0, grace_s=60, misfire="skip")
    assert (plan.run_slot, plan.trigger, plan.missed, plan.next_slot) == (600, "scheduled", 0, 660)


def test_plan_reference_cases() -> None:
    # Every 1 s, slot 1 due, now 3.5: slots 1, 2, 3 have passed.
    s = Schedule.every(1)
    skip = plan_due(s, job_id="j", next_slot=1, now=3.5, jitter_s=0, grace_s=0.1, misfire="skip")
    assert skip.run_slot is None and skip.missed == 3 and skip.next_slot == 4
    catch = plan_due(s, job_id="j", next_slot=1, now=3.5, jitter_s=0, grace_s=0.1, misfire="catch_up_once")
    assert (catch.run_slot, catch.trigger, catch.missed, catch.next_slot) == (3, "catch_up", 3, 4)
    # Every 60 s, a 10-minute outage: 10 slots missed (0 … 540), next 660 — never a backlog of runs.
    s = Schedule.every(60)
    plan = plan_due(s, job_id="j", next_slot=0, now=630, jitter_s=0, grace_s=10, misfire="catch_up_once")
    assert (plan.run_slot, plan.missed, plan.next_slot) == (600, 11, 660)


def test_plan_latest_slot_on_time_still_runs_after_an_outage() -> None:
    s = Schedule.every(60)
    plan = plan_due(s, job_id="j", next_slot=0, now=605, jitter_s=0, grace_s=60, misfire="skip")
    assert plan.run_slot == 600 and plan.trigger == "scheduled"
    assert (plan.missed, plan.first_missed, plan.last_missed) == (10, 0, 540)


def test_plan_respects_jitter_of_the_latest_slot() -> None:
    s = Schedule.every(60)
    jitter = 50.0
    j600 = jitter_offset("j", 600, jitter)
    # Just before slot 600 fires (its jitter not elapsed): slot 540 is the latest due one.
    now = 600 + j600 - 0.001  # past 540's fire time: its jitter is at most 50
    plan = plan_due(s, job_id="j", next_slot=540, now=now, jitter_s=jitter, grace_s=120, misfire="skip")
    assert plan.run_slot == 540 and plan.missed == 0 and plan.next_slot == 600
    assert plan.next_run_at == 600 + j600


def test_plan_cron_outage() -> None:
    s = Schedule.cron_expr("*/5 * * * *")
    start = ts("2026-03-01T10:00:00")
    now = start + 3600 + 120  # an hour and two minutes later
    plan = plan_due(s, job_id="j", next_slot=start, now=now, jitter_s=0, grace_s=60, misfire="catch_up_once")
    assert plan.run_slot == start + 3600 and plan.trigger == "catch_up" and plan.missed == 13
    assert plan.next_slot == start + 3900


@pytest.mark.parametrize(
    ("policy", "manual", "active", "queued", "action", "replace"),
    [
        ("forbid", False, False, False, Action.START, False),
        ("forbid", False, True, False, Action.SKIP, False),
        ("forbid", True, True, False, Action.REFUSE, False),
        ("queue_one", False, True, False, Action.QUEUE, False),
        ("queue_one", True, True, False, Action.QUEUE, False),
        ("queue_one", False, True, True, Action.SKIP, False),
        ("queue_one", True, True, True, Action.REFUSE, False),
        ("queue_one", False, False, True, Action.SKIP, False),
        ("replace", False, True, False, Action.START, True),
        ("replace", True, False, False, Action.START, False),
    ],
)
def test_overlap_matrix(
    policy: Any, manual: bool, active: bool, queued: bool, action: Action, replace: bool
) -> None:
    d = decide_overlap(policy, manual=manual, active=active, queued=queued)
    assert (d.action, d.replace) == (action, replace)
