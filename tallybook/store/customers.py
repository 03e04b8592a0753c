"""Customer tables.

`customer_subjects` is the attribution map: one row per subject that belongs to a customer (the
subjects in usageAttribution.subjectKeys, and the customer's own key). The primary key on
`subject` is what guarantees a subject belongs to at most one customer. Meter queries join it to
filter and group by customer.
"""

from __future__ import annotations

from sqlalchemy import JSON, BigInteger, Column, ForeignKey, Index, Table, Text
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.store.schema import metadata

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

customers = Table(
    "customers",
    metadata,
    Column("id", Text, primary_key=True),  # ULID, as OpenMeter
    Column("key", Text, nullable=True),  # the user's own identifier; unique among live customers
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("primary_email", Text, nullable=True),
    Column("currency", Text, nullable=True),  # ISO 4217
    Column("timezone", Text, nullable=True),  # IANA name; billing periods are computed in it
    Column("billing_address", JSON_TYPE, nullable=True),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),  # soft delete: invoices keep pointing at it
)
Index(
    "uq_customers_live_key",
    customers.c.key,
    unique=True,
    sqlite_where=customers.c.deleted_us.is_(None),
    postgresql_where=customers.c.deleted_us.is_(None),
)

customer_subjects = Table(
    "customer_subjects",
    metadata,
    Column("subject", Text, primary_key=True),
    Column("customer_id", Text, ForeignKey("customers.id", ondelete="CASCADE"), nullable=False),
)
Index("ix_customer_subjects_customer", customer_subjects.c.customer_id)
