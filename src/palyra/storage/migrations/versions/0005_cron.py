"""Scheduler: job definitions with persisted timers, and run history (one row per claimed slot).

Revision ID: 0005
Revises: 0004
"""

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "cron_jobs",
        sa.Column("job_id", sa.String(128), primary_key=True),
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("interval_s", sa.Float, nullable=True),
        sa.Column("cron_expr", sa.String(200), nullable=True),
        sa.Column("timezone", sa.String(64), nullable=False),
        sa.Column("enabled", sa.Boolean, nullable=False),
        sa.Column("overlap_policy", sa.String(16), nullable=False),
        sa.Column("misfire_policy", sa.String(16), nullable=False),
        sa.Column("jitter_s", sa.Float, nullable=False),
        sa.Column("misfire_grace_s", sa.Float, nullable=False),
        sa.Column("next_slot_at", sa.Float, nullable=True),
        sa.Column("next_run_at", sa.Float, nullable=True),
        sa.Column("last_slot_at", sa.Float, nullable=True),
        sa.Column("last_run_id", sa.String(64), nullable=True),
        sa.Column("settings", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_cron_jobs_due", "cron_jobs", ["enabled", "next_run_at"])
    op.create_table(
        "cron_runs",
        sa.Column("run_id", sa.String(64), primary_key=True),
        sa.Column(
            "job_id",
            sa.String(128),
            sa.ForeignKey("cron_jobs.job_id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("slot_at", sa.Float, nullable=False),
        sa.Column("trigger", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("replica_id", sa.String(128), nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("started_at", sa.Float, nullable=True),
        sa.Column("finished_at", sa.Float, nullable=True),
        sa.Column("duration_ms", sa.Float, nullable=True),
        sa.Column("heartbeat_at", sa.Float, nullable=True),
        sa.Column("missed_slots", sa.Integer, nullable=False, server_default="0"),
        sa.Column("summary", sa.Text, nullable=True),
        sa.Column("error", sa.Text, nullable=True),
        sa.UniqueConstraint("job_id", "slot_at", "trigger", name="uq_cron_runs_slot"),
    )
    op.create_index("ix_cron_runs_job_created", "cron_runs", ["job_id", "created_at"])
    op.create_index("ix_cron_runs_created", "cron_runs", ["created_at"])
    op.create_index("ix_cron_runs_status_heartbeat", "cron_runs", ["status", "heartbeat_at"])


def downgrade() -> None:
    op.drop_table("cron_runs")
    op.drop_table("cron_jobs")
