"""Subscriptions, invoices and invoice lines.

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "subscriptions",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("plan_key", sa.Text(), nullable=False),
        sa.Column("plan_version", sa.Integer(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("cadence", sa.Text(), nullable=False),
        sa.Column("cadence_days", sa.Integer(), nullable=True),
        sa.Column("alignment", sa.Text(), nullable=False),
        sa.Column("anchor_us", sa.BigInteger(), nullable=False),
        sa.Column("timezone", sa.Text(), nullable=False),
        sa.Column("active_from_us", sa.BigInteger(), nullable=False),
        sa.Column("active_to_us", sa.BigInteger(), nullable=True),
        sa.Column("canceled_us", sa.BigInteger(), nullable=True),
        sa.Column("previous_id", sa.Text(), nullable=True),
        sa.Column("next_id", sa.Text(), nullable=True),
        sa.Column("billed_through_us", sa.BigInteger(), nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_subscriptions_customer", "subscriptions", ["customer_id", "active_from_us"])
    op.create_table(
        "invoices",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("period_end_us", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("customer", JSON_TYPE, nullable=False),
        sa.Column("subtotal", sa.Text(), nullable=False),
        sa.Column("commitments", sa.Text(), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        sa.Column("as_of_us", sa.BigInteger(), nullable=False),
        sa.Column("revision", sa.Integer(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("issued_us", sa.BigInteger(), nullable=True),
        sa.Column("paid_us", sa.BigInteger(), nullable=True),
        sa.Column("voided_us", sa.BigInteger(), nullable=True),
        sa.Column("uncollectible_us", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("customer_id", "currency", "period_start_us", "period_end_us", name="uq_invoices_period"),
    )
    op.create_index("ix_invoices_status", "invoices", ["status", "period_end_us"])
    op.create_table(
        "invoice_lines",
        sa.Column("invoice_id", sa.Text(), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=True),
        sa.Column("rate_card_key", sa.Text(), nullable=True),
        sa.Column("meter", sa.Text(), nullable=True),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("period_end_us", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=True),
        sa.Column("unit_price", sa.Text(), nullable=True),
        sa.Column("amount", sa.Text(), nullable=False),
        sa.Column("tax_code", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("corrects_invoice_id", sa.Text(), nullable=True),
        sa.Column("detail", JSON_TYPE, nullable=True),
    )
    op.create_index("ix_invoice_lines_corrects", "invoice_lines", ["corrects_invoice_id"])


def downgrade() -> None:
    op.drop_index("ix_invoice_lines_corrects", table_name="invoice_lines")
    op.drop_table("invoice_lines")
    op.drop_index("ix_invoices_status", table_name="invoices")
    op.drop_table("invoices")
    op.drop_index("ix_subscriptions_customer", table_name="subscriptions")
    op.drop_table("subscriptions")
