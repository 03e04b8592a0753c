"""The invoice sync table: where each Tallybook invoice stands in the app that collects it.

One row per invoice handed to an invoicing app (Stripe). `synced_revision` is the Tallybook
revision last mirrored; a row whose invoice has a newer revision, or whose `next_attempt_us` has
come, is due. The external id is written before anything else is created under it, so a crash
can never leave a second external invoice behind (see tallybook/stripe/invoices.py).
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
    and_,
    exists,
    or_,
    select,
)
from sqlalchemy import update as update_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.store.billing import invoices
from tallybook.store.schema import metadata

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

# Sync states.
PENDING = "pending"  # not (fully) mirrored yet, or retrying after a temporary error
SYNCED = "synced"  # the app holds this revision (a draft, or a finalized invoice still open)
TAX_LOCATION_REQUIRED = "tax_location_required"  # Stripe Tax needs the customer's address first
FAILED = "failed"  # the app refused it; see `error` (retried with backoff, or after a fix)
DONE = "done"  # paid or void on both sides: nothing left to do

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
    for start in range(0, len(ids), 500):  # SQLite's bound-parameter limit
        page = ids[start : start + 500]
        for row in conn.execute(select(invoice_syncs).where(invoice_syncs.c.invoice_id.in_(page))):
            out[row.invoice_id] = dict(row._mapping)
    return out


def ensure(conn: Connection, invoice_id: str, app: str, now_us: int) -> None:
    """The invoice's sync row, created as `pending` if it has none (concurrent callers: one wins)."""
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    statement = (
        dialect.insert(invoice_syncs)
        .values(
            invoice_id=invoice_id,
            app=app,
            status=PENDING,
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
        .where(s.status != DONE)
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
