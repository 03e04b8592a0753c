"""customer_subjects.explicit: whether a subject was listed in usageAttribution.subjectKeys.

A customer's own key is attributed to it as a subject too, with explicit = false unless the key is
also listed. The API returns only the explicit subjects as subjectKeys, so that a read-modify-write
of a customer (GET, change the key, PUT) does not pin the old key as a subject.

Revision ID: 0003_customers
Revises: 0002
Create Date: 2026-11-23
"""

import sqlalchemy as sa
from alembic import op

revision = "0003_customers"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column(
        "customer_subjects",
        sa.Column("explicit", sa.Boolean(), nullable=False, server_default=sa.true()),
    )


def downgrade() -> None:
    with op.batch_alter_table("customer_subjects") as batch:
        batch.drop_column("explicit")
