"""Invoice documents: the number an issued invoice gets from its billing profile's series, the
seller snapshot it was issued with, and the ingest watermark its quantities were counted at.

`invoice_number_series` holds the last number given per prefix; issuing increments it in the
issue's own transaction, so a rolled-back issue gives its number back (no gaps) and concurrent
issues take turns on the row (no duplicates; the unique index on `invoices.number` is the
backstop). Existing invoices keep no number: they were issued without one.

Revision ID: 0017
Revises: 0014
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0017"
down_revision = "0016"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")


def upgrade() -> None:
    # Nullable columns without a default: a catalog change on both engines, no table rewrite.
    op.add_column("invoices", sa.Column("number", sa.Text(), nullable=True))
    op.add_column("invoices", sa.Column("seller", JSON_TYPE, nullable=True))
    op.add_column("invoices", sa.Column("as_of_seq", sa.BigInteger(), nullable=True))
    op.create_index("uq_invoices_number", "invoices", ["number"], unique=True)
    op.create_table(
        "invoice_number_series",
        sa.Column("prefix", sa.Text(), primary_key=True),
        sa.Column("last_number", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )


def downgrade() -> None:
    op.drop_table("invoice_number_series")
    op.drop_index("uq_invoices_number", table_name="invoices")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_column("seller")
        batch.drop_column("as_of_seq")
        batch.drop_column("number")
