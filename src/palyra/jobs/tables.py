"""The scheduler's tables. Migration 0005 creates them; code reads them from here.

Times are Unix seconds (double precision), like every other table. A slot is the time a job was
scheduled for (before jitter); claiming one is an insert of ``cron_runs`` behind a compare-and-set on
the job's ``next_slot_at``, so exactly one replica wins it.
"""

from __future__ import annotations

from sqlalchemy import (
    Boolean,
    Column,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Table,
    Text,
    UniqueConstraint,
)

from palyra.storage.schema import metadata

cron_jobs = Table(
    "cron_jobs",
    metadata,
    Column("job_id", String(128), primary_key=True),
    Column("kind", String(16), nullable=False),  # interval | cron
    Column("interval_s", Float, nullable=True),
    Column("cron_expr", String(200), nullable=True),
    Column("timezone", String(64), nullable=False),
    Column("enabled", Boolean, nullable=False),
    Column("overlap_policy", String(16), nullable=False),
    Column("misfire_policy", String(16), nullable=False),
    Column("jitter_s", Float, nullable=False),
    Column("misfire_grace_s", Float, nullable=False),
    # The next slot, and when it fires (slot + deterministic jitter). Persisted so restarts keep timers.
    Column("next_slot_at", Float, nullable=True),
    Column("next_run_at", Float, nullable=True),
    Column("last_slot_at", Float, nullable=True),
    Column("last_run_id", String(64), nullable=True),
    Column("settings", Text, nullable=True),
    Column("created_at", Float, nullable=False),
    Column("updated_at", Float, nullable=False),
)
Index("ix_cron_jobs_due", cron_jobs.c.enabled, cron_jobs.c.next_run_at)

cron_runs = Table(
    "cron_runs",
    metadata,
    Column("run_id", String(64), primary_key=True),
    Column("job_id", String(128), ForeignKey("cron_jobs.job_id", ondelete="CASCADE"), nullable=False),
    Column("slot_at", Float, nullable=False),
    Column("trigger", String(16), nullable=False),  # scheduled | manual | catch_up
    # queued | running | succeeded | failed | skipped | cancelled
    Column("status", String(16), nullable=False),
    Column("replica_id", String(128), nullable=True),
    Column("created_at", Float, nullable=False),
    Column("started_at", Float, nullable=True),
    Column("finished_at", Float, nullable=True),
    Column("duration_ms", Float, nullable=True),
    Column("heartbeat_at", Float, nullable=True),
    Column("missed_slots", Integer, nullable=False, default=0, server_default="0"),
    Column("summary", Text, nullable=True),
    Column("error", Text, nullable=True),
    UniqueConstraint("job_id", "slot_at", "trigger", name="uq_cron_runs_slot"),
)
Index("ix_cron_runs_job_created", cron_runs.c.job_id, cron_runs.c.created_at)
Index("ix_cron_runs_created", cron_runs.c.created_at)
Index("ix_cron_runs_status_heartbeat", cron_runs.c.status, cron_runs.c.heartbeat_at)

CRON_TABLES = (cron_jobs, cron_runs)
