"""The subscription, invoice, invoice-line and invoice-number tables; the SQL that reads and writes
subscriptions, plus the customer reads billing snapshots and rates from.

The invoice tables are declared here, with the other tables every engine builds from the shared
metadata (store/__init__.py imports this module before anything reads the tables: several store and
ops modules join them); the SQL that reads and writes them is invoicing's, in
tallybook/billing/invoicing_sql.py.

Money is stored as decimal text (exact on both engines, the digits the service rounded); instants
are epoch microseconds like every other table. An invoice is unique per customer, currency and
billing period and kind (period, opening or correction; voided ones included), which is what makes
the scheduler's drafting idempotent. `revision` grows on every change of an invoice; updates name
the revision they read, so a concurrent change (the scheduler refreshing a draft while someone
approves it) is detected. The number series (tallybook/billing/documents.py) is a row per prefix
incremented in the issuing transaction: a rolled-back issue gives its number back.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.customers.sql import customers
from tallybook.store.schema import metadata

JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
PAGE = 500

subscriptions = Table(
    "subscriptions",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("customer_id", Text, nullable=False),
    Column("name", Text, nullable=False),
    Column("plan_key", Text, nullable=False),
    Column("plan_version", Integer, nullable=False),
    Column("currency", Text, nullable=False),
    Column("cadence", Text, nullable=False),
    Column("cadence_days", Integer, nullable=True),
    Column("alignment", Text, nullable=False),  # calendar | anniversary
    Column("anchor_us", BigInteger, nullable=False),
    Column("timezone", Text, nullable=False),  # the customer's zone when the subscription started
    Column("active_from_us", BigInteger, nullable=False),
    Column("active_to_us", BigInteger, nullable=True),
    Column("canceled_us", BigInteger, nullable=True),
    Column("previous_id", Text, nullable=True),  # plan change: the subscription this one replaced
    Column("next_id", Text, nullable=True),
    Column("billed_through_us", BigInteger, nullable=True),  # end of the last period drafted
    Column("metadata", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)
Index("ix_subscriptions_customer", subscriptions.c.customer_id, subscriptions.c.active_from_us)

invoices = Table(
    "invoices",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("customer_id", Text, nullable=False),
    Column("currency", Text, nullable=False),
    # period: drafted when `period` (the billing period) ended; its usage and in-arrears fees, plus
    # the next period's in-advance fees. opening: drafted when a subscription started; `period` is
    # the subscription's start to the end of its first billing period, and it holds only the
    # in-advance fees for that span.
    Column("kind", Text, nullable=False, server_default="period"),
    Column("period_start_us", BigInteger, nullable=False),
    Column("period_end_us", BigInteger, nullable=False),
    Column("status", Text, nullable=False),  # draft | issued | paid | void | uncollectible
    Column("customer", JSON_TYPE, nullable=False),  # snapshot: id, key, name, email, address, timezone
    Column("subtotal", Text, nullable=False),
    Column("commitments", Text, nullable=False),
    Column("total", Text, nullable=False),
    Column("as_of_us", BigInteger, nullable=False),  # usage counted: events ingested at or before this
    Column("revision", Integer, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("issued_us", BigInteger, nullable=True),
    Column("paid_us", BigInteger, nullable=True),
    Column("voided_us", BigInteger, nullable=True),
    Column("uncollectible_us", BigInteger, nullable=True),
    # Set when issued (tallybook/billing/documents.py): the number from the profile's series (None
    # for invoices Stripe numbers, and those issued before numbering), and the seller snapshot.
    Column("number", Text, nullable=True),
    Column("seller", JSON_TYPE, nullable=True),  # billingProfileId, supplier, timezone, locale, dueAt
    # The ingest watermark usage was counted at: events stored with seq <= this (with as_of_us for
    # voids); None for invoices computed before it was recorded (as_of_us alone then).
    Column("as_of_seq", BigInteger, nullable=True),
    UniqueConstraint("customer_id", "currency", "kind", "period_start_us", "period_end_us", name="uq_invoices_period"),
)
Index("ix_invoices_status", invoices.c.status, invoices.c.period_end_us)
Index("uq_invoices_number", invoices.c.number, unique=True)

invoice_lines = Table(
    "invoice_lines",
    metadata,
    Column("invoice_id", Text, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("kind", Text, nullable=False),  # flat_fee | usage | commitment | correction | credit
    Column("name", Text, nullable=False),
    Column("subscription_id", Text, nullable=True),
    Column("rate_card_key", Text, nullable=True),
    Column("meter", Text, nullable=True),
    Column("period_start_us", BigInteger, nullable=False),
    Column("period_end_us", BigInteger, nullable=False),
    Column("quantity", Text, nullable=True),
    Column("unit_price", Text, nullable=True),
    Column("amount", Text, nullable=False),
    Column("tax_code", Text, nullable=True),
    Column("description", Text, nullable=True),
    Column("corrects_invoice_id", Text, nullable=True),
    Column("detail", JSON_TYPE, nullable=True),  # tiers, proration, commitment reason, ...
)
Index("ix_invoice_lines_corrects", invoice_lines.c.corrects_invoice_id)

invoice_number_series = Table(
    "invoice_number_series",
    metadata,
    Column("prefix", Text, primary_key=True),
    Column("last_number", BigInteger, nullable=False),  # the last number given (0: none yet)
    Column("updated_us", BigInteger, nullable=False),
)

SUBSCRIPTION_COLUMNS = tuple(c.name for c in subscriptions.columns)
INVOICE_COLUMNS = tuple(c.name for c in invoices.columns)
LINE_COLUMNS = tuple(c.name for c in invoice_lines.columns if c.name != "invoice_id")


# -- subscriptions ---------------------------------------------------------------------------------------
def insert_subscription(conn: Connection, row: dict[str, Any]) -> None:
    conn.execute(subscriptions.insert().values(**row))


def update_subscription(conn: Connection, subscription_id: str, values: dict[str, Any]) -> None:
    conn.execute(update(subscriptions).where(subscriptions.c.id == subscription_id).values(**values))


def set_billed_through(conn: Connection, marks: Sequence[tuple[str, int]]) -> None:
    """Move `billed_through_us` forward for many subscriptions (never backward).

    Subscriptions on the same cadence share period ends, so one UPDATE per end and page of ids.
    """
    by_end: dict[int, list[str]] = {}
    for subscription_id, end_us in marks:
        by_end.setdefault(end_us, []).append(subscription_id)
    s = subscriptions.c
    for end_us, ids in by_end.items():
        for start in range(0, len(ids), PAGE):
            conn.execute(
                update(subscriptions)
                .where(
                    s.id.in_(ids[start : start + PAGE]),
                    or_(s.billed_through_us.is_(None), s.billed_through_us < end_us),
                )
                .values(billed_through_us=end_us)
            )


def get_subscription(conn: Connection, subscription_id: str, for_update: bool = False) -> dict[str, Any] | None:
    query = select(subscriptions).where(subscriptions.c.id == subscription_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return dict(row._mapping) if row else None


def list_subscriptions(
    conn: Connection,
    customer_ids: Sequence[str] | None = None,
    overlapping: tuple[int | None, int | None] | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[dict[str, Any]]:
    """Subscriptions (of these customers; active at some point in [start, end)), oldest first."""
    query = select(subscriptions)
    if customer_ids is not None:
        query = query.where(subscriptions.c.customer_id.in_(list(customer_ids)))
    if overlapping is not None:
        start_us, end_us = overlapping
        if end_us is not None:
            query = query.where(subscriptions.c.active_from_us < end_us)
        if start_us is not None:
            query = query.where(
                or_(subscriptions.c.active_to_us.is_(None), subscriptions.c.active_to_us > start_us),
                or_(
                    subscriptions.c.active_to_us.is_(None),
                    subscriptions.c.active_to_us > subscriptions.c.active_from_us,
                ),
            )
    query = query.order_by(subscriptions.c.active_from_us, subscriptions.c.id).offset(offset)
    if limit is not None:
        query = query.limit(limit)
    return [dict(r._mapping) for r in conn.execute(query)]


def unbilled_subscriptions(conn: Connection, cutoff_us: int) -> list[dict[str, Any]]:
    """Subscriptions that may have a period ending at or before `cutoff_us` not drafted yet."""
    s = subscriptions.c
    query = select(subscriptions).where(
        s.active_from_us < cutoff_us,
        or_(s.active_to_us.is_(None), s.active_to_us > s.active_from_us),
        or_(s.billed_through_us.is_(None), s.billed_through_us < cutoff_us),
        or_(s.billed_through_us.is_(None), s.active_to_us.is_(None), s.billed_through_us < s.active_to_us),
    )
    return [dict(r._mapping) for r in conn.execute(query.order_by(s.id))]


def unopened_subscriptions(conn: Connection, now_us: int) -> list[dict[str, Any]]:
    """Subscriptions that started (not plan-change successors) and have no period drafted yet: each
    may still need its opening invoice (the invoice key tells whether it exists)."""
    s = subscriptions.c
    query = select(subscriptions).where(
        s.active_from_us <= now_us,
        s.previous_id.is_(None),
        s.billed_through_us.is_(None),
        or_(s.active_to_us.is_(None), s.active_to_us > s.active_from_us),
    )
    return [dict(r._mapping) for r in conn.execute(query.order_by(s.id))]


def customer_rows(conn: Connection, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Customers by id (deleted ones too), for invoice snapshots; one query per page of ids."""
    ids = list(dict.fromkeys(customer_ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), PAGE):
        query = select(customers).where(customers.c.id.in_(ids[start : start + PAGE]))
        for r in conn.execute(query):
            found[r.id] = dict(r._mapping)
    return found


def live_customer_ids(conn: Connection, customer_ids: Sequence[str]) -> set[str]:
    """The ids among these that belong to customers not deleted."""
    ids = list(dict.fromkeys(customer_ids))
    found: set[str] = set()
    for start in range(0, len(ids), PAGE):
        query = select(customers.c.id).where(
            customers.c.id.in_(ids[start : start + PAGE]), customers.c.deleted_us.is_(None)
        )
        found.update(r[0] for r in conn.execute(query))
    return found


__all__ = [
    "INVOICE_COLUMNS",
    "LINE_COLUMNS",
    "customer_rows",
    "get_subscription",
    "insert_subscription",
    "invoice_lines",
    "invoice_number_series",
    "invoices",
    "list_subscriptions",
    "live_customer_ids",
    "set_billed_through",
    "subscriptions",
    "unbilled_subscriptions",
    "unopened_subscriptions",
    "update_subscription",
]
