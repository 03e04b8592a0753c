"""Meters and their usage projection.

Revision ID: 0003_meters
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql
from sqlalchemy.types import UserDefinedType

revision = "0003_meters"
down_revision = "0002"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


class _SqliteAnyValue(UserDefinedType):
    # Declared BLOB: no type affinity, so integers stay INTEGER and decimal text stays TEXT.
    cache_ok = True

    def get_col_spec(self, **_kw):
        return "BLOB"


VALUE_TYPE = sa.Numeric().with_variant(_SqliteAnyValue(), "sqlite")


def upgrade() -> None:
    op.create_table(
        "meters",
        sa.Column("key", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True, autoincrement=True),
        sa.Column("id", sa.Text(), nullable=False, unique=True),
        sa.Column("slug", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("event_type", sa.Text(), nullable=False),
        sa.Column("aggregation", sa.Text(), nullable=False),
        sa.Column("value_property", sa.Text(), nullable=True),
        sa.Column("group_by", JSON_TYPE, nullable=False),
        sa.Column("event_from_us", sa.BigInteger(), nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("managed_by", sa.Text(), nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
        sa.Column("locked_us", sa.BigInteger(), nullable=True),
        sa.Column("projected_seq", sa.BigInteger(), nullable=False, server_default=sa.text("0")),
    )
    op.create_index(
        "uq_meters_live_slug",
        "meters",
        ["slug"],
        unique=True,
        sqlite_where=sa.text("deleted_us IS NULL"),
        postgresql_where=sa.text("deleted_us IS NULL"),
    )
    op.create_table(
        "meter_usage",
        sa.Column("meter_key", sa.BigInteger(), nullable=False),
        sa.Column("subject", sa.Text(), nullable=False),
        sa.Column("time_us", sa.BigInteger(), nullable=False),
        sa.Column("event_seq", sa.BigInteger(), nullable=False),
        sa.Column("ingested_us", sa.BigInteger(), nullable=False),
        sa.Column("num", VALUE_TYPE, nullable=True),
        sa.Column("ukey", sa.Text(), nullable=True),
        sa.Column("groups", JSON_TYPE, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("meter_key", "subject", "time_us", "event_seq", name="pk_meter_usage"),
        sqlite_with_rowid=False,
    )
    op.create_index("ix_meter_usage_time", "meter_usage", ["meter_key", "time_us", "ingested_us", "num", "ukey"])
    op.create_index(
        "ix_meter_usage_errors",
        "meter_usage",
        ["event_seq"],
        sqlite_where=sa.text("error IS NOT NULL"),
        postgresql_where=sa.text("error IS NOT NULL"),
    )
    op.create_index(
        "ix_meter_usage_error_meters",
        "meter_usage",
        ["meter_key"],
        sqlite_where=sa.text("error IS NOT NULL"),
        postgresql_where=sa.text("error IS NOT NULL"),
    )


def downgrade() -> None:
    op.drop_index("ix_meter_usage_error_meters", table_name="meter_usage")
    op.drop_index("ix_meter_usage_errors", table_name="meter_usage")
    op.drop_index("ix_meter_usage_time", table_name="meter_usage")
    op.drop_table("meter_usage")
    op.drop_index("uq_meters_live_slug", table_name="meters")
    op.drop_table("meters")
