"""Join the customers, meters and webhooks branches into one head.

They were written side by side off 0002; later migrations revise this one.

Revision ID: 0005
Revises: 0003_customers, 0003_meters, 0004
Create Date: 2026-11-23
"""

revision = "0005"
down_revision = ("0003_customers", "0003_meters", "0004")
branch_labels = None
depends_on = None


def upgrade() -> None:
    """Nothing to change: this revision only merges the branches."""


def downgrade() -> None:
    """Nothing to change: this revision only merges the branches."""
