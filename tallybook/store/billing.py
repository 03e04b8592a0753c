"""Subscription, invoice and invoice-line tables, and the SQL that reads and writes them.

Money is stored as decimal text (exact on both engines, the digits the service rounded); instants
are epoch microseconds like every other table. An invoice is unique per customer, currency and
billing period and kind (period or opening; voided ones included), which is what makes the
scheduler's drafting idempotent.
`revision` grows on every change of an invoice; updates name the revision they read, so a
concurrent change (the scheduler refreshing a draft while someone approves it) is detected.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
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
    delete,
    func,
    or_,
    select,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.customers.sql import customers
from tallybook.store.schema import events, metadata
from tallybook.voids.sql import latest_void_us

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

SUBSCRIPTION_COLUMNS = tuple(c.name for c in subscriptions.columns)
INVOICE_COLUMNS = tuple(c.name for c in invoices.columns)
LINE_COLUMNS = tuple(c.name for c in invoice_lines.columns if c.name != "invoice_id")


@dataclass(frozen=True, slots=True)
class InvoiceRecord:
    row: dict[str, Any]
    lines: list[dict[str, Any]]


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


# -- invoices ----------------------------------------------------------------------------------------------
def _line_rows(invoice_id: str, lines: Iterable[dict[str, Any]]) -> list[dict[str, Any]]:
    return [
        {"invoice_id": invoice_id, "position": i, **{k: line.get(k) for k in LINE_COLUMNS if k != "position"}}
        for i, line in enumerate(lines)
    ]


def insert_invoices(conn: Connection, records: Sequence[InvoiceRecord]) -> None:
    if not records:
        return
    for start in range(0, len(records), PAGE):
        page = records[start : start + PAGE]
        conn.execute(invoices.insert(), [r.row for r in page])
        lines = [line for r in page for line in _line_rows(r.row["id"], r.lines)]
        for line_start in range(0, len(lines), PAGE * 4):
            conn.execute(invoice_lines.insert(), lines[line_start : line_start + PAGE * 4])


def update_invoice(
    conn: Connection,
    invoice_id: str,
    revision: int,
    values: dict[str, Any],
    lines: Sequence[dict[str, Any]] | None = None,
) -> bool:
    """Apply `values` (and replace the lines) if the invoice is still at `revision`; bumps it."""
    result = conn.execute(
        update(invoices)
        .where(invoices.c.id == invoice_id, invoices.c.revision == revision)
        .values(**values, revision=revision + 1)
    )
    if result.rowcount == 0:
        return False
    if lines is not None:
        conn.execute(delete(invoice_lines).where(invoice_lines.c.invoice_id == invoice_id))
        rows = _line_rows(invoice_id, lines)
        if rows:
            conn.execute(invoice_lines.insert(), rows)
    return True


def _with_lines(conn: Connection, rows: list[dict[str, Any]]) -> list[InvoiceRecord]:
    by_id: dict[str, list[dict[str, Any]]] = {r["id"]: [] for r in rows}
    ids = list(by_id)
    for start in range(0, len(ids), PAGE):
        query = (
            select(invoice_lines)
            .where(invoice_lines.c.invoice_id.in_(ids[start : start + PAGE]))
            .order_by(invoice_lines.c.invoice_id, invoice_lines.c.position)
        )
        for line in conn.execute(query):
            by_id[line.invoice_id].append(dict(line._mapping))
    return [InvoiceRecord(r, by_id[r["id"]]) for r in rows]


def get_invoice(conn: Connection, invoice_id: str, for_update: bool = False) -> InvoiceRecord | None:
    query = select(invoices).where(invoices.c.id == invoice_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    if row is None:
        return None
    return _with_lines(conn, [dict(row._mapping)])[0]


@dataclass(frozen=True, slots=True)
class InvoiceSearch:
    customer_ids: tuple[str, ...] | None = None
    statuses: tuple[str, ...] | None = None
    period_end_from_us: int | None = None  # inclusive
    period_end_to_us: int | None = None  # inclusive
    limit: int | None = None
    offset: int = 0
    newest_first: bool = True


def search_invoices(
    conn: Connection, search: InvoiceSearch, with_lines: bool = True
) -> tuple[int, list[InvoiceRecord]]:
    i = invoices.c
    conditions: list[Any] = []
    if search.customer_ids is not None:
        conditions.append(i.customer_id.in_(list(search.customer_ids)))
    if search.statuses is not None:
        conditions.append(i.status.in_(list(search.statuses)))
    if search.period_end_from_us is not None:
        conditions.append(i.period_end_us >= search.period_end_from_us)
    if search.period_end_to_us is not None:
        conditions.append(i.period_end_us <= search.period_end_to_us)
    total = int(conn.execute(select(func.count()).select_from(invoices).where(*conditions)).scalar_one())
    order = (i.period_end_us.desc(), i.id.desc()) if search.newest_first else (i.period_end_us, i.id)
    query = select(invoices).where(*conditions).order_by(*order).offset(search.offset)
    if search.limit is not None:
        query = query.limit(search.limit)
    rows = [dict(r._mapping) for r in conn.execute(query)]
    if not with_lines:
        return total, [InvoiceRecord(r, []) for r in rows]
    return total, _with_lines(conn, rows)


def existing_invoice_keys(
    conn: Connection, period_end_us: Iterable[int]
) -> dict[tuple[str, str, int, int, str], dict[str, Any]]:
    """Invoices for these period ends, by (customer, currency, period start, period end, kind)."""
    ends = sorted(set(period_end_us))
    found: dict[tuple[str, str, int, int, str], dict[str, Any]] = {}
    for start in range(0, len(ends), PAGE):
        query = select(invoices).where(invoices.c.period_end_us.in_(ends[start : start + PAGE]))
        for r in conn.execute(query):
            found[(r.customer_id, r.currency, r.period_start_us, r.period_end_us, r.kind)] = dict(r._mapping)
    return found


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


def in_advance_fee_lines(
    conn: Connection,
    subscription_ids: Sequence[str],
    exclude_invoice_ids: Sequence[str] = (),
    kinds: Sequence[str] = ("flat_fee",),
) -> list[dict[str, Any]]:
    """Lines of these kinds (flat fees; with "credit", the credits for unused in-advance time too)
    of these subscriptions on invoices that are not void (nor excluded), with their invoice's id,
    kind, status and period end; the caller keeps those whose detail says `in_advance`."""
    out: list[dict[str, Any]] = []
    ids = list(dict.fromkeys(subscription_ids))
    excluded = list(exclude_invoice_ids)
    for start in range(0, len(ids), PAGE):
        conditions: list[Any] = [
            invoice_lines.c.subscription_id.in_(ids[start : start + PAGE]),
            invoice_lines.c.kind.in_(list(kinds)),
            invoices.c.status != "void",
        ]
        if excluded:
            conditions.append(invoices.c.id.not_in(excluded))
        query = (
            select(
                invoice_lines,
                invoices.c.kind.label("invoice_kind"),
                invoices.c.status.label("invoice_status"),
                invoices.c.period_end_us.label("invoice_period_end_us"),
            )
            .join(invoices, invoices.c.id == invoice_lines.c.invoice_id)
            .where(*conditions)
        )
        out.extend(dict(r._mapping) for r in conn.execute(query))
    return out


def corrections_of(conn: Connection, invoice_ids: Sequence[str]) -> list[dict[str, Any]]:
    """Correction lines (on any invoice) that correct these invoices, with their invoice's status."""
    out: list[dict[str, Any]] = []
    ids = list(invoice_ids)
    for start in range(0, len(ids), PAGE):
        query = (
            select(invoice_lines, invoices.c.status.label("invoice_status"))
            .join(invoices, invoices.c.id == invoice_lines.c.invoice_id)
            .where(invoice_lines.c.corrects_invoice_id.in_(ids[start : start + PAGE]))
        )
        out.extend(dict(r._mapping) for r in conn.execute(query))
    return out


def invoice_totals(conn: Connection, invoice_ids: Sequence[str]) -> dict[str, str]:
    """The stored total of each of these invoices (decimal text), by id."""
    ids = list(dict.fromkeys(invoice_ids))
    found: dict[str, str] = {}
    for start in range(0, len(ids), PAGE):
        query = select(invoices.c.id, invoices.c.total).where(invoices.c.id.in_(ids[start : start + PAGE]))
        found.update({r.id: r.total for r in conn.execute(query)})
    return found


def customer_rows(conn: Connection, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    """Customers by id (deleted ones too), for invoice snapshots; one query per page of ids."""
    ids = list(dict.fromkeys(customer_ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(ids), PAGE):
        query = select(customers).where(customers.c.id.in_(ids[start : start + PAGE]))
        for r in conn.execute(query):
            found[r.id] = dict(r._mapping)
    return found


def latest_ingest_us(conn: Connection) -> int | None:
    """When usage last changed: the newest event's ingest or the newest void (None when neither
    happened). Both reads use an index."""
    value = conn.execute(select(func.max(events.c.ingested_us))).scalar_one()
    voided = latest_void_us(conn)
    changes = [int(v) for v in (value, voided) if v is not None]
    return max(changes) if changes else None


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
    "InvoiceRecord",
    "InvoiceSearch",
    "corrections_of",
    "customer_rows",
    "existing_invoice_keys",
    "get_invoice",
    "get_subscription",
    "in_advance_fee_lines",
    "insert_invoices",
    "insert_subscription",
    "invoice_lines",
    "invoice_totals",
    "invoices",
    "latest_ingest_us",
    "list_subscriptions",
    "live_customer_ids",
    "search_invoices",
    "set_billed_through",
    "subscriptions",
    "unbilled_subscriptions",
    "unopened_subscriptions",
    "update_invoice",
    "update_subscription",
]
