"""Webhooks: notification channels and rules, the outbox, delivery attempts, job bookkeeping.

Revision ID: 0004
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0004"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
SEQUENCE_TYPE = sa.BigInteger().with_variant(sa.Integer(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "notification_channels",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("signing_secret", sa.Text(), nullable=False),
        sa.Column("custom_headers", JSON_TYPE, nullable=True),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("disabled_reason", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("source", sa.Text(), nullable=False),
        sa.Column("event_types", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "notification_rules",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("disabled", sa.Boolean(), nullable=False),
        sa.Column("channel_ids", JSON_TYPE, nullable=False),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "notification_events",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("dedup_key", sa.Text(), nullable=False, unique=True),
        sa.Column("subject", sa.Text(), nullable=True),
        sa.Column("rule_id", sa.Text(), nullable=True),
        sa.Column("body", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_notification_events_created", "notification_events", ["created_us"])
    op.create_table(
        "notification_deliveries",
        sa.Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
        sa.Column(
            "event_id",
            sa.Text(),
            sa.ForeignKey("notification_events.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("channel_id", sa.Text(), sa.ForeignKey("notification_channels.id"), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("attempt_count", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=True),
        sa.Column("lease_until_us", sa.BigInteger(), nullable=True),
        sa.Column("claim_token", sa.Text(), nullable=True),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.UniqueConstraint("event_id", "channel_id", name="uq_notification_deliveries_event_channel"),
    )
    op.create_index("ix_notification_deliveries_due", "notification_deliveries", ["state", "next_attempt_us"])
    op.create_table(
        "notification_attempts",
        sa.Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
        sa.Column(
            "delivery_id",
            SEQUENCE_TYPE,
            sa.ForeignKey("notification_deliveries.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("attempted_us", sa.BigInteger(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("status_code", sa.Integer(), nullable=True),
        sa.Column("duration_ms", sa.Integer(), nullable=False),
        sa.Column("url", sa.Text(), nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("response_body", sa.Text(), nullable=True),
    )
    op.create_index("ix_notification_attempts_delivery", "notification_attempts", ["delivery_id"])
    op.create_table(
        "aggregation_sent",
        sa.Column("subject", sa.Text(), primary_key=True),
        sa.Column("period", sa.Text(), primary_key=True),
        sa.Column("period_start_us", sa.BigInteger(), primary_key=True),
        sa.Column("channel_id", sa.Text(), primary_key=True),
        sa.Column("period_end_us", sa.BigInteger(), nullable=False),
        sa.Column("figures", JSON_TYPE, nullable=False),
        sa.Column("event_id", sa.Text(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "job_runs",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("next_run_us", sa.BigInteger(), nullable=True),
        sa.Column("locked_by", sa.Text(), nullable=True),
        sa.Column("locked_until_us", sa.BigInteger(), nullable=True),
        sa.Column("last_started_us", sa.BigInteger(), nullable=True),
        sa.Column("last_finished_us", sa.BigInteger(), nullable=True),
        sa.Column("last_error", sa.Text(), nullable=True),
    )
    op.create_table(
        "job_cursors",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value_us", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("job_cursors")
    op.drop_table("job_runs")
    op.drop_table("aggregation_sent")
    op.drop_index("ix_notification_attempts_delivery", table_name="notification_attempts")
    op.drop_table("notification_attempts")
    op.drop_index("ix_notification_deliveries_due", table_name="notification_deliveries")
    op.drop_table("notification_deliveries")
    op.drop_index("ix_notification_events_created", table_name="notification_events")
    op.drop_table("notification_events")
    op.drop_table("notification_rules")
    op.drop_table("notification_channels")
