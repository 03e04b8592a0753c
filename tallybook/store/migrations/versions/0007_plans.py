"""Plans and their versions (catalog).

Revision ID: 0007
Revises: 0005
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision = "0007"
down_revision = "0005"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "plans",
        sa.Column("key", sa.Text(), primary_key=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
    )
    op.create_table(
        "plan_versions",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("plan_key", sa.Text(), sa.ForeignKey("plans.key"), nullable=False),
        sa.Column("version", sa.Integer(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("metadata", JSON_TYPE, nullable=True),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("billing_cadence", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("document", JSON_TYPE, nullable=False),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
        sa.Column("published_us", sa.BigInteger(), nullable=True),
        sa.Column("archived_us", sa.BigInteger(), nullable=True),
        sa.Column("deleted_us", sa.BigInteger(), nullable=True),
        sa.UniqueConstraint("plan_key", "version", name="uq_plan_versions_key_version"),
    )
    op.create_index(
        "uq_plan_versions_one_draft",
        "plan_versions",
        ["plan_key"],
        unique=True,
        sqlite_where=sa.text("status = 'draft' AND deleted_us IS NULL"),
        postgresql_where=sa.text("status = 'draft' AND deleted_us IS NULL"),
    )
    op.create_index(
        "uq_plan_versions_one_published",
        "plan_versions",
        ["plan_key"],
        unique=True,
        sqlite_where=sa.text("status = 'published'"),
        postgresql_where=sa.text("status = 'published'"),
    )


def downgrade() -> None:
    op.drop_index("uq_plan_versions_one_published", table_name="plan_versions")
    op.drop_index("uq_plan_versions_one_draft", table_name="plan_versions")
    op.drop_table("plan_versions")
    op.drop_table("plans")
