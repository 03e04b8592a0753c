"""The SQL of invoicing: reads and writes of invoices, their lines and the number series, and the
SQL adapter of the invoicing ports (`SqlInvoiceStorage`, tallybook/billing/invoicing_ports.py).

The tables are declared in tallybook/store/billing.py (see there why) and re-exported here; the
subscription and customer reads the adapter offers are store/billing.py's too. Every list of ids
is read in pages of `PAGE`, so no statement grows with the number of customers.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    delete,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite

from tallybook.billing.invoicing_ports import InvoiceRecord, InvoiceSearch, StoredKey
from tallybook.meters import definitions_sql, materializer_sql
from tallybook.meters.tables import meter_usage
from tallybook.meters.usage_sql import customer_subject_map
from tallybook.store import billing as subscription_sql
from tallybook.store.base import SqlStore
from tallybook.store.billing import LINE_COLUMNS, PAGE, invoice_lines, invoice_number_series, invoices
from tallybook.store.schema import events
from tallybook.voids.sql import latest_void_us
from tallybook.webhooks.service import Destination, OutboxMessage, WebhookService


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


def existing_invoice_keys(conn: Connection, period_end_us: Iterable[int]) -> dict[StoredKey, dict[str, Any]]:
    """Invoices for these period ends, by (customer, currency, period start, period end, kind)."""
    ends = sorted(set(period_end_us))
    found: dict[StoredKey, dict[str, Any]] = {}
    for start in range(0, len(ends), PAGE):
        query = select(invoices).where(invoices.c.period_end_us.in_(ends[start : start + PAGE]))
        for r in conn.execute(query):
            found[(r.customer_id, r.currency, r.period_start_us, r.period_end_us, r.kind)] = dict(r._mapping)
    return found


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


def latest_ingest_us(conn: Connection) -> int | None:
    """When usage last changed: the newest event's ingest or the newest void (None when neither
    happened). Both reads use an index."""
    value = conn.execute(select(func.max(events.c.ingested_us))).scalar_one()
    voided = latest_void_us(conn)
    changes = [int(v) for v in (value, voided) if v is not None]
    return max(changes) if changes else None


def next_number(conn: Connection, prefix: str, now_us: int) -> int:
    """The next number of `prefix`'s series, taken in the caller's transaction (which holds the row
    until it ends: a concurrent issue waits, and sees the incremented value)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(invoice_number_series)
        .values(prefix=prefix, last_number=0, updated_us=now_us)
        .on_conflict_do_nothing(index_elements=["prefix"])
    )
    series = invoice_number_series.c
    return int(
        conn.execute(
            update(invoice_number_series)
            .where(series.prefix == prefix)
            .values(last_number=series.last_number + 1, updated_us=now_us)
            .returning(series.last_number)
        ).scalar_one()
    )


def store_document(conn: Connection, invoice_id: str, number: str | None, seller: dict[str, Any] | None) -> None:
    """Write an issued invoice's number and seller (when they are taken after its row was updated)."""
    conn.execute(update(invoices).where(invoices.c.id == invoice_id).values(number=number, seller=seller))


def usage_changes(
    conn: Connection,
    meter_slug: str,
    subjects: Sequence[str],
    start_us: int,
    end_us: int,
    as_of_us: int,
    as_of_seq: int | None,
) -> tuple[int, int]:
    """(events counted now but not at the cutoff, events counted at the cutoff but voided since) of
    a meter's usage by these subjects in [start, end) (verification: what changed since issuing)."""
    meter = definitions_sql.meter_row(conn, meter_slug)
    if meter is None or meter["usage_key"] is None or not subjects:
        return 0, 0  # a meter in its first build has no rows queries could have counted
    u = meter_usage.c
    base = [
        u.meter_key == meter["usage_key"],
        u.subject.in_(list(subjects)),
        u.time_us >= start_us,
        u.time_us < end_us,
        u.error.is_(None),
    ]
    after = u.ingested_us > as_of_us if as_of_seq is None else u.event_seq > as_of_seq
    before = u.ingested_us <= as_of_us if as_of_seq is None else u.event_seq <= as_of_seq
    late = conn.execute(select(func.count()).where(*base, after, u.voided_us.is_(None))).scalar_one()
    voided = conn.execute(select(func.count()).where(*base, before, u.voided_us > as_of_us)).scalar_one()
    return int(late), int(voided)


VoidHook = Callable[[Connection, str, datetime], Any]


class SqlInvoiceTransaction:
    """The invoicing unit of work on one SQL transaction (see invoicing_ports.InvoiceTransaction)."""

    def __init__(self, conn: Connection, webhooks: WebhookService | None, on_void: Sequence[VoidHook]) -> None:
        self.conn = conn
        self.webhooks = webhooks
        self.on_void = on_void

    def get_invoice(self, invoice_id: str, for_update: bool = False) -> InvoiceRecord | None:
        return get_invoice(self.conn, invoice_id, for_update)

    def search_invoices(self, search: InvoiceSearch, with_lines: bool = True) -> tuple[int, list[InvoiceRecord]]:
        return search_invoices(self.conn, search, with_lines)

    def existing_invoice_keys(self, period_end_us: Iterable[int]) -> dict[StoredKey, dict[str, Any]]:
        return existing_invoice_keys(self.conn, period_end_us)

    def in_advance_fee_lines(self, subscription_ids: Sequence[str], kinds: Sequence[str]) -> list[dict[str, Any]]:
        return in_advance_fee_lines(self.conn, subscription_ids, kinds=kinds)

    def corrections_of(self, invoice_ids: Sequence[str]) -> list[dict[str, Any]]:
        return corrections_of(self.conn, invoice_ids)

    def invoice_totals(self, invoice_ids: Sequence[str]) -> dict[str, str]:
        return invoice_totals(self.conn, invoice_ids)

    def unbilled_subscriptions(self, cutoff_us: int) -> list[dict[str, Any]]:
        return subscription_sql.unbilled_subscriptions(self.conn, cutoff_us)

    def unopened_subscriptions(self, now_us: int) -> list[dict[str, Any]]:
        return subscription_sql.unopened_subscriptions(self.conn, now_us)

    def list_subscriptions(
        self, customer_ids: Sequence[str] | None, overlapping: tuple[int | None, int | None] | None = None
    ) -> list[dict[str, Any]]:
        return subscription_sql.list_subscriptions(self.conn, customer_ids, overlapping=overlapping)

    def customer_rows(self, customer_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return subscription_sql.customer_rows(self.conn, customer_ids)

    def live_customer_ids(self, customer_ids: Sequence[str]) -> set[str]:
        return subscription_sql.live_customer_ids(self.conn, customer_ids)

    def latest_ingest_us(self) -> int | None:
        return latest_ingest_us(self.conn)

    def customer_subjects(self, customer_id: str) -> list[str]:
        return list(customer_subject_map(self.conn, [customer_id])[0])

    def usage_changes(
        self, meter: str, subjects: Sequence[str], start_us: int, end_us: int, as_of_us: int, as_of_seq: int | None
    ) -> tuple[int, int]:
        return usage_changes(self.conn, meter, subjects, start_us, end_us, as_of_us, as_of_seq)

    @contextmanager
    def savepoint(self) -> Iterator[None]:
        with self.conn.begin_nested():
            yield

    def insert_invoices(self, records: Sequence[InvoiceRecord]) -> None:
        insert_invoices(self.conn, records)

    def update_invoice(
        self, invoice_id: str, revision: int, values: dict[str, Any], lines: Sequence[dict[str, Any]] | None = None
    ) -> bool:
        return update_invoice(self.conn, invoice_id, revision, values, lines)

    def set_billed_through(self, marks: Sequence[tuple[str, int]]) -> None:
        subscription_sql.set_billed_through(self.conn, marks)

    def next_number(self, prefix: str, now_us: int) -> int:
        return next_number(self.conn, prefix, now_us)

    def store_document(self, invoice_id: str, number: str | None, seller: dict[str, Any] | None) -> None:
        store_document(self.conn, invoice_id, number, seller)

    def webhook_destinations(self, event_type: str) -> list[Destination]:
        return [] if self.webhooks is None else self.webhooks.destinations(self.conn, event_type)

    def enqueue_webhook(self, message: OutboxMessage, targets: list[Destination], now: datetime) -> None:
        if self.webhooks is not None:
            self.webhooks.enqueue(self.conn, message, targets, now)

    def invoice_voided(self, invoice_id: str, now: datetime) -> None:
        for hook in self.on_void:
            hook(self.conn, invoice_id, now)

    def lock_materializer(self) -> None:
        materializer_sql.lock_materializer(self.conn)

    def settled_horizon(self) -> int:
        return materializer_sql.settled_horizon(self.conn)


class SqlInvoiceStorage:
    """Invoicing's storage on the SQL store. `webhooks` writes the outbox in the same transaction;
    `on_void` hooks run in the transaction that voids an invoice (e.g. voiding its credit notes)."""

    def __init__(
        self, store: SqlStore, webhooks: WebhookService | None = None, on_void: Sequence[VoidHook] = ()
    ) -> None:
        self.store = store
        self.webhooks = webhooks
        self.on_void: list[VoidHook] = list(on_void)

    @contextmanager
    def reading(self) -> Iterator[SqlInvoiceTransaction]:
        with self.store.read() as conn:
            yield SqlInvoiceTransaction(conn, self.webhooks, self.on_void)

    @contextmanager
    def writing(self) -> Iterator[SqlInvoiceTransaction]:
        with self.store.write() as conn:
            yield SqlInvoiceTransaction(conn, self.webhooks, self.on_void)


__all__ = [
    "SqlInvoiceStorage",
    "SqlInvoiceTransaction",
    "corrections_of",
    "existing_invoice_keys",
    "get_invoice",
    "in_advance_fee_lines",
    "insert_invoices",
    "invoice_lines",
    "invoice_number_series",
    "invoice_totals",
    "invoices",
    "latest_ingest_us",
    "next_number",
    "search_invoices",
    "store_document",
    "update_invoice",
    "usage_changes",
]
