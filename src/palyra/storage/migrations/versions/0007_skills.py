"""Skills: installed skill versions and the publisher trust store.

Revision ID: 0007
Revises: 0006
"""

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "skill_publishers",
        sa.Column("publisher", sa.String(64), primary_key=True),
        sa.Column("key_id", sa.String(16), primary_key=True),
        sa.Column("public_key", sa.String(64), nullable=False),
        sa.Column("added_at", sa.Float, nullable=False),
    )
    op.create_table(
        "skills",
        sa.Column("skill_id", sa.String(64), primary_key=True),
        sa.Column("version", sa.String(64), primary_key=True),
        sa.Column("publisher", sa.String(64), nullable=False),
        sa.Column("key_id", sa.String(16), nullable=False),
        sa.Column("description", sa.Text, nullable=False),
        sa.Column("capabilities", sa.Text, nullable=False),
        sa.Column("path", sa.String(1000), nullable=False),
        sa.Column("files", sa.Text, nullable=False),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("installed_at", sa.Float, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("quarantine_reasons", sa.Text, nullable=True),
        sa.Column("quarantined_at", sa.Float, nullable=True),
        sa.Column("last_audit_at", sa.Float, nullable=True),
        sa.Column("current", sa.Boolean, nullable=False),
    )
    op.create_index("ix_skills_current", "skills", ["skill_id", "current"])


def downgrade() -> None:
    op.drop_index("ix_skills_current", table_name="skills")
    op.drop_table("skills")
    op.drop_table("skill_publishers")
