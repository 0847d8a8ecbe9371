"""The vault: envelope-encrypted secrets.

Revision ID: 0002
Revises: 0001
"""

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "vault_secrets",
        sa.Column("scope", sa.String(160), primary_key=True),
        sa.Column("key", sa.String(128), primary_key=True),
        sa.Column("kek_id", sa.String(16), nullable=False),
        sa.Column("value_nonce", sa.LargeBinary, nullable=False),
        sa.Column("value_ciphertext", sa.LargeBinary, nullable=False),
        sa.Column("dek_nonce", sa.LargeBinary, nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary, nullable=False),
        sa.Column("value_bytes", sa.Integer, nullable=False),
        sa.Column("created_at", sa.Float, nullable=False),
        sa.Column("updated_at", sa.Float, nullable=False),
    )


def downgrade() -> None:
    op.drop_table("vault_secrets")
