"""Job items that failed: one row per (job, item kind, item id) until the item next succeeds, and
how many items the last run of each job skipped.

Revision ID: 0013
Revises: 0012_value_domain
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0013"
down_revision = "0012_value_domain"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(postgresql.JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    op.create_table(
        "job_failures",
        sa.Column("job", sa.Text(), primary_key=True),
        sa.Column("item_kind", sa.Text(), primary_key=True),
        sa.Column("item_id", sa.Text(), primary_key=True),
        sa.Column("error", sa.Text(), nullable=False),
        sa.Column("context", JSON_TYPE, nullable=True),
        sa.Column("first_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("last_seen_us", sa.BigInteger(), nullable=False),
        sa.Column("count", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_job_failures_last_seen", "job_failures", ["last_seen_us"])
    op.add_column("job_runs", sa.Column("last_failed_items", sa.BigInteger(), nullable=True))


def downgrade() -> None:
    op.drop_column("job_runs", "last_failed_items")
    op.drop_index("ix_job_failures_last_seen", table_name="job_failures")
    op.drop_table("job_failures")
