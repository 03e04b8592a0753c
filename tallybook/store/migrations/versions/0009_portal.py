"""Portal tokens: hashed, bound to one customer or subject, with an expiry and allowed meters.

Revision ID: 0009
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0009"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "portal_tokens",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("token_hash", sa.Text(), nullable=False, unique=True),
        sa.Column("prefix", sa.Text(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("customer_id", sa.Text(), nullable=True),
        sa.Column("allowed_meters", JSON_TYPE, nullable=True),
        sa.Column("expires_us", sa.BigInteger(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("invalidated_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_portal_tokens_subject", "portal_tokens", ["subject"])
    op.create_index("ix_portal_tokens_created", "portal_tokens", ["created_us"])


def downgrade() -> None:
    op.drop_index("ix_portal_tokens_created", table_name="portal_tokens")
    op.drop_index("ix_portal_tokens_subject", table_name="portal_tokens")
    op.drop_table("portal_tokens")
