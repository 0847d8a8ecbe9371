"""Governance: alerts, admin-defined budgets and prices, routing decisions, per-token routing mode.

Revision ID: 0004
Revises: 0003
"""

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "alerts",
        sa.Column("alert_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("kind", sa.String(32), nullable=False),
        sa.Column("subject", sa.String(256), nullable=False),
        sa.Column("window_key", sa.String(32), nullable=False),
        sa.Column("message", sa.Text, nullable=False),
        sa.Column("details", sa.Text, nullable=True),
        sa.Column("webhook_status", sa.String(32), nullable=True),
        sa.UniqueConstraint("kind", "subject", "window_key", name="uq_alerts_dedup"),
    )
    op.create_index("ix_alerts_at", "alerts", ["at"])
    op.create_table(
        "budget_policies",
        sa.Column("policy_id", sa.String(128), primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "price_overrides",
        sa.Column("model_id", sa.String(256), primary_key=True),
        sa.Column("effective_from", sa.String(32), primary_key=True),
        sa.Column("definition", sa.Text, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
    )
    op.create_table(
        "routing_decisions",
        sa.Column("request_id", sa.String(64), primary_key=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("mode", sa.String(16), nullable=False),
        sa.Column("requested_model", sa.String(256), nullable=True),
        sa.Column("recommended_model", sa.String(256), nullable=True),
        sa.Column("served_model", sa.String(256), nullable=True),
        sa.Column("score", sa.Float, nullable=True),
        sa.Column("tier", sa.String(16), nullable=True),
        sa.Column("reason_codes", sa.Text, nullable=True),
        sa.Column("features", sa.Text, nullable=True),
        sa.Column("candidates", sa.Text, nullable=True),
        sa.Column("actual_cost_usd", sa.Float, nullable=True),
        sa.Column("requested_cost_usd", sa.Float, nullable=True),
        sa.Column("recommended_cost_usd", sa.Float, nullable=True),
        sa.Column("saving_usd", sa.Float, nullable=True),
    )
    op.create_index("ix_routing_decisions_at", "routing_decisions", ["at"])
    with op.batch_alter_table("api_tokens") as batch:
        batch.add_column(sa.Column("routing_mode", sa.String(16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("api_tokens") as batch:
        batch.drop_column("routing_mode")
    op.drop_table("routing_decisions")
    op.drop_table("price_overrides")
    op.drop_table("budget_policies")
    op.drop_table("alerts")
