"""Auth profiles (credentials point into the vault) and the audit log.

Revision ID: 0003
Revises: 0002
"""

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "auth_profiles",
        sa.Column("profile_id", sa.String(128), primary_key=True),
        sa.Column("provider", sa.String(32), nullable=False),
        sa.Column("custom_name", sa.String(64), nullable=True),
        sa.Column("profile_name", sa.String(256), nullable=False),
        sa.Column("agent_id", sa.String(128), nullable=True),
        sa.Column("credential_type", sa.String(16), nullable=False),
        sa.Column("api_key_ref", sa.String(300), nullable=True),
        sa.Column("access_token_ref", sa.String(300), nullable=True),
        sa.Column("refresh_token_ref", sa.String(300), nullable=True),
        sa.Column("client_secret_ref", sa.String(300), nullable=True),
        sa.Column("client_id", sa.String(256), nullable=True),
        sa.Column("token_url", sa.String(1000), nullable=True),
        sa.Column("revoke_url", sa.String(1000), nullable=True),
        sa.Column("scopes", sa.String(1000), nullable=True),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("refresh_failures", sa.Integer, nullable=False, server_default="0"),
        sa.Column("refresh_last_error", sa.String(200), nullable=True),
        sa.Column("refresh_last_attempt", sa.Float, nullable=True),
        sa.Column("refresh_last_success", sa.Float, nullable=True),
        sa.Column("refresh_next_allowed", sa.Float, nullable=True),
        sa.Column("failure_count", sa.Integer, nullable=False, server_default="0"),
        sa.Column("last_failure_kind", sa.String(32), nullable=True),
        sa.Column("last_failure_at", sa.Float, nullable=True),
        sa.Column("cooldown_until", sa.Float, nullable=True),
        sa.Column("last_success_at", sa.Float, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )
    op.create_index("ix_auth_profiles_provider_agent", "auth_profiles", ["provider", "agent_id"])
    op.create_table(
        "audit_events",
        sa.Column("event_id", sa.Integer, primary_key=True, autoincrement=True),
        sa.Column("at", sa.Float, nullable=False),
        sa.Column("action", sa.String(64), nullable=False),
        sa.Column("actor", sa.String(128), nullable=False),
        sa.Column("target", sa.String(300), nullable=True),
        sa.Column("details", sa.Text, nullable=True),
    )
    op.create_index("ix_audit_events_at", "audit_events", ["at"])


def downgrade() -> None:
    op.drop_table("audit_events")
    op.drop_table("auth_profiles")
