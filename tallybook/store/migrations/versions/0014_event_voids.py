"""Voided events: who voided which events, when and why (`event_voids`), the void stamp on
`events`, and the same stamp on `meter_usage` so usage queries skip voided rows without a join.

The covering index of whole-period scans gains `voided_us`, so those scans stay index-only.

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0014"
down_revision = "0013"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "event_voids",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("actor_type", sa.Text(), nullable=False),
        sa.Column("actor_id", sa.Text(), nullable=True),
        sa.Column("actor_name", sa.Text(), nullable=True),
        sa.Column("selection", JSON_TYPE, nullable=False),
        sa.Column("event_count", sa.Integer(), nullable=False),
        sa.Column("replacement_source", sa.Text(), nullable=True),
        sa.Column("replacement_id", sa.Text(), nullable=True),
    )
    op.create_index("ix_event_voids_created", "event_voids", ["created_us"])
    # Nullable columns without a default: a catalog change on both engines, no table rewrite.
    op.add_column("events", sa.Column("voided_us", sa.BigInteger(), nullable=True))
    op.add_column("events", sa.Column("void_id", sa.Text(), nullable=True))
    op.create_index(
        "ix_events_void",
        "events",
        ["void_id"],
        sqlite_where=sa.text("void_id IS NOT NULL"),
        postgresql_where=sa.text("void_id IS NOT NULL"),
    )
    op.add_column("meter_usage", sa.Column("voided_us", sa.BigInteger(), nullable=True))
    op.drop_index("ix_meter_usage_time", table_name="meter_usage")
    op.create_index(
        "ix_meter_usage_time", "meter_usage", ["meter_key", "time_us", "ingested_us", "num", "ukey", "voided_us"]
    )


def downgrade() -> None:
    op.drop_index("ix_meter_usage_time", table_name="meter_usage")
    op.create_index("ix_meter_usage_time", "meter_usage", ["meter_key", "time_us", "ingested_us", "num", "ukey"])
    with op.batch_alter_table("meter_usage") as batch:
        batch.drop_column("voided_us")
    op.drop_index("ix_events_void", table_name="events")
    with op.batch_alter_table("events") as batch:
        batch.drop_column("void_id")
        batch.drop_column("voided_us")
    op.drop_index("ix_event_voids_created", table_name="event_voids")
    op.drop_table("event_voids")
