"""The sync tables: where each Tallybook invoice and credit note stands in the app that collects it.

One row per invoice handed to an invoicing app (Stripe). `synced_revision` is the Tallybook
revision last mirrored; a row whose invoice has a newer revision, or whose `next_attempt_us` has
come, is due. The external id is written before anything else is created under it, so a crash
can never leave a second external invoice behind (see tallybook/stripe/invoices.py). Credit notes
of invoices Stripe holds get a row each too (`credit_note_syncs`, tallybook/stripe/credit_notes.py).

`SqlSyncStorage` is the adapter behind `ports.SyncStorage`: one transaction that reads and writes
both tables and queues the invoice webhooks the sync sends, in the same commit.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
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
    and_,
    exists,
    or_,
    select,
)
from sqlalchemy import update as update_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.creditnotes.sql import credit_notes
from tallybook.store.base import SqlStore
from tallybook.store.billing import invoices
from tallybook.store.schema import metadata
from tallybook.stripe.model import SYNC_DONE, SYNC_PENDING
from tallybook.webhooks.service import OutboxMessage, WebhookService

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")
PAGE = 500  # ids per IN (...) (SQLite's bound-parameter limit)

invoice_syncs = Table(
    "invoice_syncs",
    metadata,
    Column("invoice_id", Text, primary_key=True),
    Column("app", Text, nullable=False),  # stripe
    # pending | synced | tax_location_required | failed | done (terminal: paid/void mirrored)
    Column("status", Text, nullable=False),
    Column("external_id", Text, nullable=True, unique=True),  # in_...
    Column("external_customer_id", Text, nullable=True),  # cus_...
    Column("number", Text, nullable=True),  # the app's invoice number, once finalized
    Column("external_status", Text, nullable=True),  # draft | open | paid | void | uncollectible
    Column("hosted_url", Text, nullable=True),
    Column("pdf_url", Text, nullable=True),
    Column("tax_status", Text, nullable=True),  # complete | requires_location_inputs | failed
    Column("tax_amount", Text, nullable=True),  # exact decimal, major units
    Column("total", Text, nullable=True),  # the app's total incl. tax, major units
    Column("payment_status", Text, nullable=True),  # failed | paid | None
    Column("payment_error", JSON_TYPE, nullable=True),
    Column("synced_revision", Integer, nullable=False, default=0),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_us", BigInteger, nullable=True),
    Column("error", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)
Index("ix_invoice_syncs_due", invoice_syncs.c.status, invoice_syncs.c.next_attempt_us)

credit_note_syncs = Table(
    "credit_note_syncs",
    metadata,
    Column("credit_note_id", Text, primary_key=True),
    Column("app", Text, nullable=False),  # stripe
    Column("status", Text, nullable=False),  # pending | failed | done
    Column("external_id", Text, nullable=True, unique=True),  # cn_...
    Column("number", Text, nullable=True),  # Stripe's credit note number
    Column("synced_status", Text, nullable=True),  # the Tallybook status last mirrored: issued | void
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_us", BigInteger, nullable=True),
    Column("error", JSON_TYPE, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)
Index("ix_credit_note_syncs_due", credit_note_syncs.c.status, credit_note_syncs.c.next_attempt_us)


def _insert(conn: Connection) -> Any:
    return (postgresql if conn.dialect.name == "postgresql" else sqlite).insert


# -- invoice_syncs ---------------------------------------------------------------------------------------
def get(conn: Connection, invoice_id: str, for_update: bool = False) -> dict[str, Any] | None:
    query = select(invoice_syncs).where(invoice_syncs.c.invoice_id == invoice_id)
    if for_update and conn.dialect.name == "postgresql":
        query = query.with_for_update()
    row = conn.execute(query).first()
    return None if row is None else dict(row._mapping)


def by_external_id(conn: Connection, external_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(invoice_syncs).where(invoice_syncs.c.external_id == external_id)).first()
    return None if row is None else dict(row._mapping)


def rows_for(conn: Connection, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ids = list(dict.fromkeys(invoice_ids))
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        for row in conn.execute(select(invoice_syncs).where(invoice_syncs.c.invoice_id.in_(page))):
            out[row.invoice_id] = dict(row._mapping)
    return out


def ensure(conn: Connection, invoice_id: str, app: str, now_us: int) -> None:
    """The invoice's sync row, created as `pending` if it has none (concurrent callers: one wins)."""
    statement = (
        _insert(conn)(invoice_syncs)
        .values(
            invoice_id=invoice_id,
            app=app,
            status=SYNC_PENDING,
            synced_revision=0,
            attempts=0,
            created_us=now_us,
            updated_us=now_us,
        )
        .on_conflict_do_nothing(index_elements=["invoice_id"])
    )
    conn.execute(statement)


def update(conn: Connection, invoice_id: str, values: dict[str, Any]) -> None:
    conn.execute(update_(invoice_syncs).where(invoice_syncs.c.invoice_id == invoice_id).values(**values))


def changed(conn: Connection, now_us: int, limit: int) -> list[str]:
    """Invoices already handed to an app that changed since (a newer revision) or whose retry time
    has come, oldest first."""
    s, i = invoice_syncs.c, invoices.c
    query = (
        select(i.id)
        .join(invoice_syncs, s.invoice_id == i.id)
        .where(s.status != SYNC_DONE)
        .where(or_(i.revision > s.synced_revision, and_(s.next_attempt_us.is_not(None), s.next_attempt_us <= now_us)))
        .order_by(i.created_us, i.id)
        .limit(limit)
    )
    return [r.id for r in conn.execute(query)]


def never_synced(conn: Connection, open_statuses: Sequence[str]) -> list[tuple[str, str]]:
    """(invoice id, customer id) of open invoices no app has seen yet, oldest first. The caller
    keeps those whose customer's billing profile names an app."""
    s, i = invoice_syncs.c, invoices.c
    query = (
        select(i.id, i.customer_id)
        .where(i.status.in_(list(open_statuses)))
        .where(~exists().where(s.invoice_id == i.id))
        .order_by(i.created_us, i.id)
    )
    return [(r.id, r.customer_id) for r in conn.execute(query)]


# -- credit_note_syncs -----------------------------------------------------------------------------------
def credit_note_get(conn: Connection, credit_note_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(credit_note_syncs).where(credit_note_syncs.c.credit_note_id == credit_note_id)).first()
    return None if row is None else dict(row._mapping)


def credit_note_rows_for(conn: Connection, credit_note_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    ids = list(credit_note_ids)
    for start in range(0, len(ids), PAGE):
        page = ids[start : start + PAGE]
        for row in conn.execute(select(credit_note_syncs).where(credit_note_syncs.c.credit_note_id.in_(page))):
            out[row.credit_note_id] = dict(row._mapping)
    return out


def credit_note_ensure(conn: Connection, credit_note_id: str, app: str, now_us: int) -> None:
    conn.execute(
        _insert(conn)(credit_note_syncs)
        .values(
            credit_note_id=credit_note_id,
            app=app,
            status=SYNC_PENDING,
            attempts=0,
            created_us=now_us,
            updated_us=now_us,
        )
        .on_conflict_do_nothing(index_elements=["credit_note_id"])
    )


def credit_note_update(conn: Connection, credit_note_id: str, values: dict[str, Any]) -> None:
    conn.execute(
        update_(credit_note_syncs).where(credit_note_syncs.c.credit_note_id == credit_note_id).values(**values)
    )


def credit_notes_due(conn: Connection, now_us: int, limit: int) -> list[str]:
    """Credit notes to hand to Stripe (or to update there), oldest first: those of invoices Stripe
    holds that have no sync row yet, those whose retry time has come, and those voided here since."""
    s, c, i = credit_note_syncs.c, credit_notes.c, invoice_syncs.c
    on_stripe = exists().where(i.invoice_id == c.invoice_id, i.external_id.is_not(None))
    fresh = select(c.id, c.seq).where(on_stripe, ~exists().where(s.credit_note_id == c.id))
    retry = (
        select(c.id, c.seq)
        .join(credit_note_syncs, s.credit_note_id == c.id)
        .where(
            or_(
                and_(s.status != SYNC_DONE, or_(s.next_attempt_us.is_(None), s.next_attempt_us <= now_us)),
                and_(s.status == SYNC_DONE, s.external_id.is_not(None), s.synced_status != c.status),
            )
        )
    )
    rows = conn.execute(fresh.union_all(retry).order_by("seq").limit(limit))
    return [r.id for r in rows]


# -- the adapter -------------------------------------------------------------------------------------------
class SqlSyncTransaction:
    """`ports.SyncTransaction` on one connection (its transaction is the caller's `with`)."""

    def __init__(self, conn: Connection, webhooks: WebhookService) -> None:
        self.conn = conn
        self.webhooks = webhooks

    def invoice_row(self, invoice_id: str, for_update: bool = False) -> dict[str, Any] | None:
        return get(self.conn, invoice_id, for_update=for_update)

    def invoice_row_by_external_id(self, external_id: str) -> dict[str, Any] | None:
        return by_external_id(self.conn, external_id)

    def invoice_rows(self, invoice_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return rows_for(self.conn, invoice_ids)

    def ensure_invoice_row(self, invoice_id: str, app: str, now_us: int) -> None:
        ensure(self.conn, invoice_id, app, now_us)

    def update_invoice_row(self, invoice_id: str, values: dict[str, Any]) -> None:
        update(self.conn, invoice_id, values)

    def changed_invoices(self, now_us: int, limit: int) -> list[str]:
        return changed(self.conn, now_us, limit)

    def never_synced_invoices(self, open_statuses: Sequence[str]) -> list[tuple[str, str]]:
        return never_synced(self.conn, open_statuses)

    def credit_note_row(self, credit_note_id: str) -> dict[str, Any] | None:
        return credit_note_get(self.conn, credit_note_id)

    def credit_note_rows(self, credit_note_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        return credit_note_rows_for(self.conn, credit_note_ids)

    def ensure_credit_note_row(self, credit_note_id: str, app: str, now_us: int) -> None:
        credit_note_ensure(self.conn, credit_note_id, app, now_us)

    def update_credit_note_row(self, credit_note_id: str, values: dict[str, Any]) -> None:
        credit_note_update(self.conn, credit_note_id, values)

    def due_credit_notes(self, now_us: int, limit: int) -> list[str]:
        return credit_notes_due(self.conn, now_us, limit)

    def webhook_targets(self, event_type: str) -> Sequence[object]:
        return self.webhooks.destinations(self.conn, event_type)

    def enqueue_webhook(
        self,
        event_type: str,
        dedup_key: str,
        payload: dict[str, Any],
        subject: str | None,
        targets: Sequence[object],
        now: datetime,
    ) -> None:
        message = OutboxMessage(type=event_type, dedup_key=dedup_key, payload=payload, subject=subject)
        self.webhooks.enqueue(self.conn, message, targets, now)  # type: ignore[arg-type]


class SqlSyncStorage:
    """`ports.SyncStorage` on the store: each `reading()`/`writing()` is one transaction."""

    def __init__(self, store: SqlStore, webhooks: WebhookService) -> None:
        self.store = store
        self.webhooks = webhooks

    @contextmanager
    def reading(self) -> Iterator[SqlSyncTransaction]:
        with self.store.read() as conn:
            yield SqlSyncTransaction(conn, self.webhooks)

    @contextmanager
    def writing(self) -> Iterator[SqlSyncTransaction]:
        with self.store.write() as conn:
            yield SqlSyncTransaction(conn, self.webhooks)


__all__ = [
    "SqlSyncStorage",
    "SqlSyncTransaction",
    "by_external_id",
    "changed",
    "credit_note_syncs",
    "ensure",
    "get",
    "invoice_syncs",
    "never_synced",
    "rows_for",
    "update",
]
