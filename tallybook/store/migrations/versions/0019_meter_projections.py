"""Meter projections by generation (issue 16): a changed meter's projection is built beside the one
queries read, in the background, and swapped in once caught up.

`meter_projections` holds one row per (meter, generation) with the definition it was built with and
its materializer cursor; `meters.usage_key` names the projection queries read. Existing meters get
generation 0, whose usage key is the meter's own key, so no `meter_usage` row moves.

Revision ID: 0019
Revises: 0018
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0019"
down_revision = "0018"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "meter_projections",
        sa.Column("usage_key", sa.BigInteger(), autoincrement=False, nullable=False),
        sa.Column("meter_key", sa.BigInteger(), nullable=False),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("aggregation", sa.Text(), nullable=False),
        sa.Column("value_property", sa.Text(), nullable=True),
        sa.Column("group_by", JSON_TYPE, nullable=False),
        sa.Column("event_from_us", sa.BigInteger(), nullable=True),
        sa.Column("projected_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
        sa.Column("started_us", sa.BigInteger(), nullable=False),
        sa.Column("ready_us", sa.BigInteger(), nullable=True),
        sa.PrimaryKeyConstraint("usage_key", name="pk_meter_projections"),
    )
    op.create_index("uq_meter_projections_generation", "meter_projections", ["meter_key", "generation"], unique=True)
    op.add_column("meters", sa.Column("usage_key", sa.BigInteger(), nullable=True))
    # Every live meter's projection so far becomes its generation 0, ready, with its cursor.
    op.execute(
        "INSERT INTO meter_projections (usage_key, meter_key, generation, state, event_type, aggregation, "
        "value_property, group_by, event_from_us, projected_seq, started_us, ready_us) "
        "SELECT key, key, 0, 'ready', event_type, aggregation, value_property, group_by, event_from_us, "
        "projected_seq, created_us, updated_us FROM meters WHERE deleted_us IS NULL"
    )
    op.execute("UPDATE meters SET usage_key = key WHERE deleted_us IS NULL")


def downgrade() -> None:
    # Back to one projection per meter under its own key: drop the rows of builds and retired
    # projections, move each ready projection's rows to the meter's key (usage key mod 2**32), and
    # restart from scratch the meters whose first build had not finished.
    op.execute(
        "DELETE FROM meter_usage WHERE meter_key IN (SELECT usage_key FROM meter_projections WHERE state <> 'ready')"
    )
    op.execute("UPDATE meter_usage SET meter_key = meter_key % 4294967296 WHERE meter_key >= 4294967296")
    op.execute("UPDATE meters SET projected_seq = 0 WHERE usage_key IS NULL")
    with op.batch_alter_table("meters") as batch:
        batch.drop_column("usage_key")
    op.drop_index("uq_meter_projections_generation", table_name="meter_projections")
    op.drop_table("meter_projections")
