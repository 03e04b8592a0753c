"""Entitlements (issue 17): features, entitlements, grants and resets; the settings and state of
entitlement notification rules (balance thresholds, resets).

Amounts are decimal text, so both engines keep the exact figures. Nothing here is ever deleted:
features are archived, entitlements ended, grants voided.

Revision ID: 0018
Revises: 0014
Create Date: 2026-12-10
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0018"
down_revision = "0017"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "features",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("key", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("meter_slug", sa.Text(), nullable=True),
        sa.Column("meter_group_by_filters", JSON_TYPE, nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("archived_us", sa.BigInteger(), nullable=True),
    )
    op.create_index(
        "uq_features_live_key",
        "features",
        ["key"],
        unique=True,
        sqlite_where=sa.text("archived_us IS NULL"),
        postgresql_where=sa.text("archived_us IS NULL"),
    )
    op.create_table(
        "entitlements",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("type", sa.Text(), nullable=False),
        sa.Column("feature_id", sa.Text(), nullable=False),
        sa.Column("feature_key", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("subject_key", sa.Text(), nullable=False),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("annotations", JSON_TYPE, nullable=True),
        sa.Column("active_from_us", sa.BigInteger(), nullable=False),
        sa.Column("active_to_us", sa.BigInteger(), nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
        sa.Column("measure_usage_from_us", sa.BigInteger(), nullable=True),
        sa.Column("usage_period_interval", sa.Text(), nullable=True),
        sa.Column("usage_period_anchor_us", sa.BigInteger(), nullable=True),
        sa.Column("is_soft_limit", sa.Boolean(), nullable=False),
        sa.Column("issue_after_reset", sa.Text(), nullable=True),
        sa.Column("issue_after_reset_priority", sa.Integer(), nullable=True),
        sa.Column("preserve_overage_at_reset", sa.Boolean(), nullable=False),
        sa.Column("config", sa.Text(), nullable=True),
    )
    op.create_index("ix_entitlements_customer_feature", "entitlements", ["customer_id", "feature_key"])
    op.create_table(
        "entitlement_grants",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("entitlement_id", sa.Text(), nullable=False),
        sa.Column("amount", sa.Text(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("effective_us", sa.BigInteger(), nullable=False),
        sa.Column("expiration_duration", sa.Text(), nullable=True),
        sa.Column("expiration_count", sa.Integer(), nullable=True),
        sa.Column("expires_us", sa.BigInteger(), nullable=True),
        sa.Column("min_rollover", sa.Text(), nullable=False),
        sa.Column("max_rollover", sa.Text(), nullable=False),
        sa.Column("recurrence_interval", sa.Text(), nullable=True),
        sa.Column("recurrence_anchor_us", sa.BigInteger(), nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("annotations", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("voided_us", sa.BigInteger(), nullable=True),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_entitlement_grants_entitlement", "entitlement_grants", ["entitlement_id"])
    op.create_table(
        "entitlement_resets",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("entitlement_id", sa.Text(), nullable=False),
        sa.Column("at_us", sa.BigInteger(), nullable=False),
        sa.Column("retain_anchor", sa.Boolean(), nullable=False),
        sa.Column("preserve_overage", sa.Boolean(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_entitlement_resets_entitlement", "entitlement_resets", ["entitlement_id", "at_us"])
    op.create_table(
        "entitlement_rule_settings",
        sa.Column("rule_id", sa.Text(), primary_key=True),
        sa.Column("features", JSON_TYPE, nullable=True),
        sa.Column("thresholds", JSON_TYPE, nullable=True),
    )
    op.create_table(
        "entitlement_threshold_state",
        sa.Column("rule_id", sa.Text(), primary_key=True),
        sa.Column("entitlement_id", sa.Text(), primary_key=True),
        sa.Column("period_start_us", sa.BigInteger(), primary_key=True),
        sa.Column("threshold", sa.Text(), primary_key=True),
        sa.Column("crossed", sa.Boolean(), nullable=False),
        sa.Column("crossings", sa.Integer(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "entitlement_reset_sent",
        sa.Column("entitlement_id", sa.Text(), primary_key=True),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("period_end_us", sa.BigInteger(), nullable=True),
    )
    op.create_table(
        "entitlement_notifier_state",
        sa.Column("name", sa.Text(), primary_key=True),
        sa.Column("value", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    for table in (
        "entitlement_notifier_state",
        "entitlement_reset_sent",
        "entitlement_threshold_state",
        "entitlement_rule_settings",
        "entitlement_resets",
        "entitlement_grants",
        "entitlements",
        "features",
    ):
        op.drop_table(table)
