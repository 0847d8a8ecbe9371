"""Scheduled jobs: interval or cron schedules, persisted timers and history, one run per slot.

Code registers ``JobSpec``s on the ``Scheduler`` the composition root builds; the admin API
(``palyra.surface.admin_cron``) and ``palyra cron`` (``palyra.jobs.cli``) operate it.
"""

from palyra.jobs.overlap import OverlapPolicy
from palyra.jobs.schedule import MisfirePolicy, Schedule, ScheduleError
from palyra.jobs.scheduler import JobConflict, ManualRun, Scheduler
from palyra.jobs.spec import Handler, JobContext, JobSpec
from palyra.jobs.store import CronStore

__all__ = [
    "CronStore",
    "Handler",
    "JobConflict",
    "JobContext",
    "JobSpec",
    "ManualRun",
    "MisfirePolicy",
    "OverlapPolicy",
    "Schedule",
    "ScheduleError",
    "Scheduler",
]
