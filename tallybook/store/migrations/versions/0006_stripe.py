"""Stripe: customer links, meter links, the usage report ledger and its attempts.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQUENCE_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "stripe_customers",
        sa.Column("customer_id", sa.Text(), primary_key=True),
        sa.Column("stripe_customer_id", sa.Text(), nullable=False, unique=True),
        sa.Column("stripe_default_payment_method_id", sa.Text(), nullable=True),
        sa.Column("period_start_us", sa.BigInteger(), nullable=True),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "stripe_meter_links",
        sa.Column("meter", sa.Text(), primary_key=True),
        sa.Column("event_name", sa.Text(), nullable=True),
        sa.Column("stripe_meter_id", sa.Text(), nullable=True),
        sa.Column("price_id", sa.Text(), nullable=True),
        sa.Column("formula", sa.Text(), nullable=True),
        sa.Column("mode", sa.Text(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "stripe_reports",
        sa.Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
        sa.Column("meter", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("stripe_customer_id", sa.Text(), nullable=False),
        sa.Column("window_start_us", sa.BigInteger(), nullable=False),
        sa.Column("window_end_us", sa.BigInteger(), nullable=False),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("identifier", sa.Text(), nullable=False, unique=True),
        sa.Column("value", sa.Text(), nullable=False),
        sa.Column("target", sa.Text(), nullable=False),
        sa.Column("cancels", sa.Text(), nullable=True),
        sa.Column("cancelled", sa.Boolean(), nullable=False),
        sa.Column("timestamp_us", sa.BigInteger(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=True),
        sa.Column("request", JSON_TYPE, nullable=True),
        sa.Column("response", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("sent_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_stripe_reports_key", "stripe_reports", ["meter", "customer_id", "window_start_us"])
    op.create_index("ix_stripe_reports_due", "stripe_reports", ["status", "next_attempt_us"])
    op.create_table(
        "stripe_report_attempts",
        sa.Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
        sa.Column("report_id", sa.BigInteger(), nullable=False),
        sa.Column("attempted_us", sa.BigInteger(), nullable=False),
        sa.Column("outcome", sa.Text(), nullable=False),
        sa.Column("http_status", sa.Integer(), nullable=True),
        sa.Column("response", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
    )
    op.create_index("ix_stripe_report_attempts_report", "stripe_report_attempts", ["report_id"])


def downgrade() -> None:
    op.drop_index("ix_stripe_report_attempts_report", table_name="stripe_report_attempts")
    op.drop_table("stripe_report_attempts")
    op.drop_index("ix_stripe_reports_due", table_name="stripe_reports")
    op.drop_index("ix_stripe_reports_key", table_name="stripe_reports")
    op.drop_table("stripe_reports")
    op.drop_table("stripe_meter_links")
    op.drop_table("stripe_customers")
