"""`stripe_reports.carried`: for a legacy usage record, the part of its quantity that is usage of
earlier billing periods (their tails after the last whole window, and their late events).

Stripe closes a period to usage records when the subscription renews, so that usage is billed in
the next period; the next carry is computed from what each period billed of its own usage
(quantity - carried), so nothing is billed twice.

Revision ID: 0016
Revises: 0014
Create Date: 2026-12-07
"""

import sqlalchemy as sa
from alembic import op

revision = "0016"
down_revision = "0015"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # A nullable column without a default: a catalog change on both engines, no table rewrite.
    op.add_column("stripe_reports", sa.Column("carried", sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("stripe_reports") as batch:
        batch.drop_column("carried")
