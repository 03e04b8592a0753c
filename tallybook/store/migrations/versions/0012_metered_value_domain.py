"""Usage rows whose value is outside the metered value domain stop being counted.

Before ingest checked the domain (tallybook/ingest/limits.py), SQLite accepted values such as
1e999999999 and the materializer stored them; adding them up raised decimal.Overflow, so every
query of that meter failed. PostgreSQL never stored such values (its numeric refuses them).

On SQLite a projected value is stored as INTEGER when it is integral and below 2^62, else as its
decimal text. Text with an exponent ('1E+999999999', '1E-20') or without a decimal point (an
integer of 2^62 or more) is outside the domain (|v| < 10^12, at most 6 digits after the point),
so those rows become "not counted" with a reason, as the materializer now records such values.

Revision ID: 0012_value_domain
Revises: 0011
Create Date: 2026-12-07
"""

from alembic import op

revision = "0012_value_domain"
down_revision = "0011"
branch_labels = None
depends_on = None

REASON = (
    "the value is outside the numbers meters count (at most 12 digits before the decimal point and 6 "
    "after it); it was stored before Tallybook checked this and is not counted"
)


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    op.execute(
        "UPDATE meter_usage SET num = NULL, error = '" + REASON + "' "
        "WHERE typeof(num) = 'text' AND (instr(upper(num), 'E') > 0 OR instr(num, '.') = 0)"
    )


def downgrade() -> None:
    pass  # the refused values are not restored: they could only break queries again
