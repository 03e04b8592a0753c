"""Customers and subject attribution.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "customers",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("key", sa.Text(), nullable=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("primary_email", sa.Text(), nullable=True),
        sa.Column("currency", sa.Text(), nullable=True),
        sa.Column("timezone", sa.Text(), nullable=True),
        sa.Column("billing_address", JSON_TYPE, nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
    )
    op.create_index(
        "uq_customers_live_key",
        "customers",
        ["key"],
        unique=True,
        sqlite_where=sa.text("deleted_us IS NULL"),
        postgresql_where=sa.text("deleted_us IS NULL"),
    )
    op.create_table(
        "customer_subjects",
        sa.Column("subject", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), sa.ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
    )
    op.create_index("ix_customer_subjects_customer", "customer_subjects", ["customer_id"])


def downgrade() -> None:
    op.drop_index("ix_customer_subjects_customer", table_name="customer_subjects")
    op.drop_table("customer_subjects")
    op.drop_index("uq_customers_live_key", table_name="customers")
    op.drop_table("customers")
