"""Invoices get a `kind`: `period` (drafted when a billing period ends) or `opening` (drafted when a
subscription starts, holding its first period's in-advance fees). The unique key includes it, so
an opening invoice and the period invoice of the same span can both exist, each exactly once.

Revision ID: 0010
Revises: 0006, 0008, 0009
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0010"
down_revision = ("0006", "0008", "0009")
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("invoices") as batch:
        batch.add_column(sa.Column("kind", sa.Text(), nullable=False, server_default="period"))
        batch.drop_constraint("uq_invoices_period", type_="unique")
        batch.create_unique_constraint(
            "uq_invoices_period", ["customer_id", "currency", "kind", "period_start_us", "period_end_us"]
        )


def downgrade() -> None:
    op.execute("DELETE FROM invoice_lines WHERE invoice_id IN (SELECT id FROM invoices WHERE kind = 'opening')")
    op.execute("DELETE FROM invoices WHERE kind = 'opening'")
    with op.batch_alter_table("invoices") as batch:
        batch.drop_constraint("uq_invoices_period", type_="unique")
        batch.create_unique_constraint(
            "uq_invoices_period", ["customer_id", "currency", "period_start_us", "period_end_us"]
        )
        batch.drop_column("kind")
