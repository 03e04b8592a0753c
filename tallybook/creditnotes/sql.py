"""The credit note tables and their SQL adapter (both engines).

A credit note and its lines are written in one transaction together with its outbox event
(`invoice.credit_note.created`), after the invoice's row is locked (PostgreSQL) so two credit notes
for one invoice cannot together credit more than it billed. Numbers come from one sequence (`seq`,
unique): credit note creation takes a transaction-scoped advisory lock on PostgreSQL, and SQLite
serialises writers, so `max(seq) + 1` is never taken twice. Money is decimal text, instants epoch
microseconds, like the invoice tables.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import datetime
from decimal import Decimal
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
    func,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.billing.periods import Period
from tallybook.clock import from_micros, to_micros
from tallybook.creditnotes.export import credit_note_json
from tallybook.creditnotes.model import (
    CORRECTION,
    CREDIT,
    CREDITABLE,
    ISSUED,
    VOID,
    CreditedInvoice,
    CreditNote,
    CreditNoteConflict,
    CreditNoteLine,
    CreditNoteQuery,
    FeeCredit,
    UsageCredit,
    number_of,
)
from tallybook.exact import total
from tallybook.store.base import SqlStore
from tallybook.store.billing import invoices
from tallybook.store.schema import metadata
from tallybook.webhooks.service import OutboxMessage, WebhookService
from tallybook.webhooks.settings import INVOICE_CREDIT_NOTE_CREATED

JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")
PAGE = 500
_NUMBER_LOCK = 7_310_220_452  # PostgreSQL advisory lock: one credit note numbered at a time

credit_notes = Table(
    "credit_notes",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("seq", BigInteger, nullable=False, unique=True),  # the number: CN-{seq:06d}
    Column("invoice_id", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("customer", JSON_TYPE, nullable=False),  # the invoice's customer snapshot
    Column("currency", Text, nullable=False),
    Column("reason", Text, nullable=False),  # cancellation | plan_change | usage_correction
    Column("status", Text, nullable=False),  # issued | void
    Column("total", Text, nullable=False),
    Column("memo", Text, nullable=True),
    Column("issued_us", BigInteger, nullable=False),
    Column("voided_us", BigInteger, nullable=True),
)
Index("ix_credit_notes_invoice", credit_notes.c.invoice_id)
Index("ix_credit_notes_customer", credit_notes.c.customer_id, credit_notes.c.seq)

credit_note_lines = Table(
    "credit_note_lines",
    metadata,
    Column("credit_note_id", Text, primary_key=True),
    Column("position", Integer, primary_key=True),
    Column("kind", Text, nullable=False),  # credit | correction
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
    Column("corrects_invoice_id", Text, nullable=True),  # correction: whose usage line it corrects
    Column("detail", JSON_TYPE, nullable=True),
)
Index("ix_credit_note_lines_subscription", credit_note_lines.c.subscription_id)
Index("ix_credit_note_lines_corrects", credit_note_lines.c.corrects_invoice_id)


def _line_row(note_id: str, position: int, line: CreditNoteLine) -> dict[str, Any]:
    return {
        "credit_note_id": note_id,
        "position": position,
        "kind": line.kind,
        "name": line.name,
        "subscription_id": line.subscription_id,
        "rate_card_key": line.rate_card_key,
        "meter": line.meter,
        "period_start_us": to_micros(line.period.start),
        "period_end_us": to_micros(line.period.end),
        "quantity": None if line.quantity is None else str(line.quantity),
        "unit_price": None if line.unit_price is None else str(line.unit_price),
        "amount": str(line.amount),
        "tax_code": line.tax_code,
        "description": line.description,
        "corrects_invoice_id": line.corrects_invoice_id,
        "detail": line.detail,
    }


def _line(row: Any) -> CreditNoteLine:
    return CreditNoteLine(
        kind=row.kind,
        name=row.name,
        period=Period(from_micros(row.period_start_us), from_micros(row.period_end_us)),
        amount=Decimal(row.amount),
        subscription_id=row.subscription_id,
        rate_card_key=row.rate_card_key,
        meter=row.meter,
        quantity=None if row.quantity is None else Decimal(row.quantity),
        unit_price=None if row.unit_price is None else Decimal(row.unit_price),
        tax_code=row.tax_code,
        description=row.description,
        corrects_invoice_id=row.corrects_invoice_id,
        detail=row.detail,
    )


def _notes(conn: Connection, rows: Sequence[Any]) -> list[CreditNote]:
    lines: dict[str, list[CreditNoteLine]] = {r.id: [] for r in rows}
    ids = list(lines)
    for start in range(0, len(ids), PAGE):
        query = (
            select(credit_note_lines)
            .where(credit_note_lines.c.credit_note_id.in_(ids[start : start + PAGE]))
            .order_by(credit_note_lines.c.credit_note_id, credit_note_lines.c.position)
        )
        for line in conn.execute(query):
            lines[line.credit_note_id].append(_line(line))
    return [
        CreditNote(
            id=r.id,
            number=number_of(int(r.seq)),
            invoice_id=r.invoice_id,
            customer_id=r.customer_id,
            customer=dict(r.customer),
            currency=r.currency,
            reason=r.reason,
            status=r.status,
            lines=tuple(lines[r.id]),
            total=Decimal(r.total),
            issued_at=from_micros(r.issued_us),
            memo=r.memo,
            voided_at=None if r.voided_us is None else from_micros(r.voided_us),
        )
        for r in rows
    ]


def void_of_invoice(conn: Connection, invoice_id: str, now: datetime) -> int:
    """Void the issued credit notes of an invoice (called in the transaction that voids it)."""
    result = conn.execute(
        update(credit_notes)
        .where(credit_notes.c.invoice_id == invoice_id, credit_notes.c.status == ISSUED)
        .values(status=VOID, voided_us=to_micros(now))
    )
    return int(result.rowcount or 0)


class SqlCreditNotes:
    """The credit note store (CreditNoteStore) and invoice reader (InvoiceReader) on the database."""

    def __init__(self, store: SqlStore, webhooks: WebhookService) -> None:
        self.store = store
        self.webhooks = webhooks

    def add(self, note: CreditNote, limit: Decimal) -> CreditNote:
        with self.store.write() as conn:
            locked = select(invoices.c.status).where(invoices.c.id == note.invoice_id)
            if conn.dialect.name == "postgresql":
                conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _NUMBER_LOCK})
                locked = locked.with_for_update()
            status = conn.execute(locked).scalar_one_or_none()
            if status not in CREDITABLE:  # voided (or gone) since it was read: nothing to lower
                raise CreditNoteConflict(
                    f"invoice {note.invoice_id} is {status}; only {', '.join(CREDITABLE)} invoices take credit notes",
                    invoiceStatus=status,
                )
            existing = conn.execute(
                select(credit_notes.c.total).where(
                    credit_notes.c.invoice_id == note.invoice_id, credit_notes.c.status == ISSUED
                )
            )
            credited = total(Decimal(r.total) for r in existing)
            if credited + note.total > limit:
                raise CreditNoteConflict(
                    f"invoice {note.invoice_id} totals {limit}; with {credited} credited already it cannot take "
                    f"{note.total} more",
                    invoiceId=note.invoice_id,
                )
            seq = int(conn.execute(select(func.coalesce(func.max(credit_notes.c.seq), 0))).scalar_one()) + 1
            stored = replace(note, number=number_of(seq))
            conn.execute(
                credit_notes.insert().values(
                    id=note.id,
                    seq=seq,
                    invoice_id=note.invoice_id,
                    customer_id=note.customer_id,
                    customer=note.customer,
                    currency=note.currency,
                    reason=note.reason,
                    status=note.status,
                    total=str(note.total),
                    memo=note.memo,
                    issued_us=to_micros(note.issued_at),
                    voided_us=None,
                )
            )
            conn.execute(credit_note_lines.insert(), [_line_row(note.id, i, ln) for i, ln in enumerate(note.lines)])
            targets = self.webhooks.destinations(conn, INVOICE_CREDIT_NOTE_CREATED)
            if targets:
                message = OutboxMessage(
                    type=INVOICE_CREDIT_NOTE_CREATED,
                    dedup_key=f"{INVOICE_CREDIT_NOTE_CREATED}:{note.id}",
                    payload={
                        "type": INVOICE_CREDIT_NOTE_CREATED,
                        "creditNote": credit_note_json(stored),
                        "created": int(note.issued_at.timestamp()),
                    },
                    subject=note.customer_id,
                )
                self.webhooks.enqueue(conn, message, targets, note.issued_at)
        return stored

    def get(self, credit_note_id: str) -> CreditNote | None:
        with self.store.read() as conn:
            row = conn.execute(select(credit_notes).where(credit_notes.c.id == credit_note_id)).first()
            return None if row is None else _notes(conn, [row])[0]

    def search(self, query: CreditNoteQuery) -> tuple[int, list[CreditNote]]:
        c = credit_notes.c
        conditions: list[Any] = []
        if query.customer_id is not None:
            conditions.append(c.customer_id == query.customer_id)
        if query.invoice_id is not None:
            conditions.append(c.invoice_id == query.invoice_id)
        if query.statuses is not None:
            conditions.append(c.status.in_(list(query.statuses)))
        with self.store.read() as conn:
            count = int(conn.execute(select(func.count()).select_from(credit_notes).where(*conditions)).scalar_one())
            rows = conn.execute(
                select(credit_notes).where(*conditions).order_by(c.seq.desc()).offset(query.offset).limit(query.limit)
            ).all()
            return count, _notes(conn, rows)

    def fee_credits(self, subscription_ids: Sequence[str]) -> list[FeeCredit]:
        out: list[FeeCredit] = []
        ids = list(dict.fromkeys(subscription_ids))
        ln, cn = credit_note_lines.c, credit_notes.c
        with self.store.read() as conn:
            for start in range(0, len(ids), PAGE):
                query = (
                    select(cn.invoice_id, ln.subscription_id, ln.rate_card_key, ln.period_start_us, ln.period_end_us)
                    .add_columns(ln.amount)
                    .join(credit_notes, cn.id == ln.credit_note_id)
                    .where(
                        ln.subscription_id.in_(ids[start : start + PAGE]),
                        ln.kind == CREDIT,
                        ln.rate_card_key.is_not(None),
                        cn.status == ISSUED,
                    )
                )
                for r in conn.execute(query):
                    period = Period(from_micros(r.period_start_us), from_micros(r.period_end_us))
                    out.append(FeeCredit(r.invoice_id, r.subscription_id, r.rate_card_key, period, Decimal(r.amount)))
        return out

    def usage_credits(self, invoice_ids: Sequence[str]) -> list[UsageCredit]:
        out: list[UsageCredit] = []
        ids = list(dict.fromkeys(invoice_ids))
        ln, cn = credit_note_lines.c, credit_notes.c
        with self.store.read() as conn:
            for start in range(0, len(ids), PAGE):
                query = (
                    select(ln.corrects_invoice_id, ln.subscription_id, ln.rate_card_key, ln.quantity)
                    .join(credit_notes, cn.id == ln.credit_note_id)
                    .where(
                        ln.corrects_invoice_id.in_(ids[start : start + PAGE]),
                        ln.kind == CORRECTION,
                        ln.quantity.is_not(None),
                        cn.status == ISSUED,
                    )
                )
                for r in conn.execute(query):
                    credit = UsageCredit(r.corrects_invoice_id, r.subscription_id, r.rate_card_key, Decimal(r.quantity))
                    out.append(credit)
        return out

    def credited_totals(self, invoice_ids: Sequence[str]) -> dict[str, Decimal]:
        out: dict[str, Decimal] = {}
        ids = list(dict.fromkeys(invoice_ids))
        cn = credit_notes.c
        with self.store.read() as conn:
            for start in range(0, len(ids), PAGE):
                query = select(cn.invoice_id, cn.total).where(
                    cn.invoice_id.in_(ids[start : start + PAGE]), cn.status == ISSUED
                )
                for r in conn.execute(query):
                    out[r.invoice_id] = total([Decimal(r.total)], out.get(r.invoice_id, Decimal(0)))
        return out

    def credited_invoice(self, invoice_id: str) -> CreditedInvoice | None:
        with self.store.read() as conn:
            row = conn.execute(select(invoices).where(invoices.c.id == invoice_id)).first()
        if row is None:
            return None
        return CreditedInvoice(
            id=row.id,
            customer_id=row.customer_id,
            customer=dict(row.customer),
            currency=row.currency,
            status=row.status,
            total=Decimal(row.total),
        )


__all__ = ["SqlCreditNotes", "credit_note_lines", "credit_notes", "void_of_invoice"]
