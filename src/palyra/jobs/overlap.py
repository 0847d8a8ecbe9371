"""What a new run does when the job is already busy: the overlap policy as a pure decision."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from typing import Literal

OverlapPolicy = Literal["forbid", "queue_one", "replace"]


class Action(StrEnum):
    START = "start"
    """Start now (with ``replace``: after cancelling the active runs)."""
    QUEUE = "queue"
    """Record a queued run; it starts when the active one ends."""
    SKIP = "skip"
    """Record a skipped run with the reason (scheduled slots, so the history shows the gap)."""
    REFUSE = "refuse"
    """Record nothing and tell the caller (manual runs: HTTP 409)."""


@dataclass(frozen=True, slots=True)
class Decision:
    action: Action
    reason: str | None = None
    replace: bool = False


def decide_overlap(policy: OverlapPolicy, *, manual: bool, active: bool, queued: bool) -> Decision:
    """``active``: a run of the job is running on some replica (fresh heartbeat); ``queued``: one waits."""
    if policy == "replace":
        return Decision(Action.START, replace=active)
    if policy == "forbid":
        if not active:
            return Decision(Action.START)
        return Decision(Action.REFUSE if manual else Action.SKIP, "overlap_forbid")
    # queue_one: a waiting run counts as busy too, so the queue never holds two.
    if not active and not queued:
        return Decision(Action.START)
    if not queued:
        return Decision(Action.QUEUE)
    return Decision(Action.REFUSE if manual else Action.SKIP, "overlap_queue_full")


REASON_TEXT = {
    "overlap_forbid": "a run of this job is still active and its overlap policy is forbid",
    "overlap_queue_full": "a run of this job is active and one more is already queued (queue_one)",
    "misfire_skipped": "slots were missed while no replica was running (misfire policy skip)",
}
