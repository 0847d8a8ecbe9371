"""Agent memory: items with their vectors and embedding provenance, and the jobs' state.

Revision ID: 0006
Revises: 0005
"""

import sqlalchemy as sa
from alembic import op

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "memory_items",
        sa.Column("item_id", sa.String(64), primary_key=True),
        sa.Column("agent_id", sa.String(128), nullable=False),
        sa.Column("text", sa.Text, nullable=False),
        sa.Column("tags_json", sa.Text, nullable=False),
        sa.Column("metadata_json", sa.Text, nullable=True),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("expires_at", sa.Float, nullable=True),
        sa.Column("size_bytes", sa.Integer, nullable=False),
        sa.Column("vector", sa.LargeBinary, nullable=True),
        sa.Column("embedding_model", sa.String(256), nullable=True),
        sa.Column("embedding_dims", sa.Integer, nullable=True),
        sa.Column("embedding_version", sa.Integer, nullable=True),
        sa.Column("embedded_at", sa.Float, nullable=True),
        sa.Column("embedding_error", sa.String(300), nullable=True),
    )
    op.create_index("ix_memory_items_agent_created", "memory_items", ["agent_id", "created_at"])
    op.create_index("ix_memory_items_created", "memory_items", ["created_at"])
    op.create_index("ix_memory_items_expires", "memory_items", ["expires_at"])
    op.create_table(
        "memory_state",
        sa.Column("key", sa.String(64), primary_key=True),
        sa.Column("value_json", sa.Text, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("memory_state")
    op.drop_table("memory_items")
