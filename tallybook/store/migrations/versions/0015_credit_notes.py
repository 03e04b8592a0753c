"""Credit notes: `credit_notes` and `credit_note_lines` (tallybook/creditnotes/sql.py), and
`credit_note_syncs`, where each one stands in Stripe (tallybook/stripe/sql_sync.py).

New tables only: nothing existing is rewritten.

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-08
"""

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects.postgresql import JSONB

revision = "0015"
down_revision = "0014"
branch_labels = None
depends_on = None

JSON_TYPE = sa.JSON().with_variant(JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "credit_notes",
        sa.Column("id", sa.Text(), primary_key=True),
        sa.Column("seq", sa.BigInteger(), nullable=False, unique=True),
        sa.Column("invoice_id", sa.Text(), nullable=False),
        sa.Column("customer_id", sa.Text(), nullable=False),
        sa.Column("customer", JSON_TYPE, nullable=False),
        sa.Column("currency", sa.Text(), nullable=False),
        sa.Column("reason", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("total", sa.Text(), nullable=False),
        sa.Column("memo", sa.Text(), nullable=True),
        sa.Column("issued_us", sa.BigInteger(), nullable=False),
        sa.Column("voided_us", sa.BigInteger(), nullable=True),
    )
    op.create_index("ix_credit_notes_invoice", "credit_notes", ["invoice_id"])
    op.create_index("ix_credit_notes_customer", "credit_notes", ["customer_id", "seq"])
    op.create_table(
        "credit_note_lines",
        sa.Column("credit_note_id", sa.Text(), primary_key=True),
        sa.Column("position", sa.Integer(), primary_key=True),
        sa.Column("kind", sa.Text(), nullable=False),
        sa.Column("name", sa.Text(), nullable=False),
        sa.Column("subscription_id", sa.Text(), nullable=True),
        sa.Column("rate_card_key", sa.Text(), nullable=True),
        sa.Column("meter", sa.Text(), nullable=True),
        sa.Column("period_start_us", sa.BigInteger(), nullable=False),
        sa.Column("period_end_us", sa.BigInteger(), nullable=False),
        sa.Column("quantity", sa.Text(), nullable=True),
        sa.Column("unit_price", sa.Text(), nullable=True),
        sa.Column("amount", sa.Text(), nullable=False),
        sa.Column("tax_code", sa.Text(), nullable=True),
        sa.Column("description", sa.Text(), nullable=True),
        sa.Column("corrects_invoice_id", sa.Text(), nullable=True),
        sa.Column("detail", JSON_TYPE, nullable=True),
    )
    op.create_index("ix_credit_note_lines_subscription", "credit_note_lines", ["subscription_id"])
    op.create_index("ix_credit_note_lines_corrects", "credit_note_lines", ["corrects_invoice_id"])
    op.create_table(
        "credit_note_syncs",
        sa.Column("credit_note_id", sa.Text(), primary_key=True),
        sa.Column("app", sa.Text(), nullable=False),
        sa.Column("status", sa.Text(), nullable=False),
        sa.Column("external_id", sa.Text(), nullable=True, unique=True),
        sa.Column("number", sa.Text(), nullable=True),
        sa.Column("synced_status", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("next_attempt_us", sa.BigInteger(), nullable=True),
        sa.Column("error", JSON_TYPE, nullable=True),
        sa.Column("created_us", sa.BigInteger(), nullable=False),
        sa.Column("updated_us", sa.BigInteger(), nullable=False),
    )
    op.create_index("ix_credit_note_syncs_due", "credit_note_syncs", ["status", "next_attempt_us"])


def downgrade() -> None:
    op.drop_index("ix_credit_note_syncs_due", table_name="credit_note_syncs")
    op.drop_table("credit_note_syncs")
    op.drop_index("ix_credit_note_lines_corrects", table_name="credit_note_lines")
    op.drop_index("ix_credit_note_lines_subscription", table_name="credit_note_lines")
    op.drop_table("credit_note_lines")
    op.drop_index("ix_credit_notes_customer", table_name="credit_notes")
    op.drop_index("ix_credit_notes_invoice", table_name="credit_notes")
    op.drop_table("credit_notes")
