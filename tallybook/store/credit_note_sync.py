"""The credit note sync table: where each credit note stands in the app that collects its invoice.

One row per credit note handed to Stripe (its invoice is collected by Stripe). A credit note is
created in Stripe once, against the finalized Stripe invoice; `external_id` is kept so a retry
never creates a second one (see tallybook/stripe/credit_notes.py).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy import JSON, BigInteger, Column, Connection, Index, Integer, Table, Text, and_, exists, or_, select
from sqlalchemy import update as update_
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.creditnotes.sql import credit_notes
from tallybook.store.invoice_sync import invoice_syncs
from tallybook.store.schema import metadata

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

PENDING = "pending"  # not in Stripe yet (its invoice not finalized there yet, or a temporary error)
FAILED = "failed"  # Stripe refused it; see `error` (retried with backoff)
DONE = "done"  # created in Stripe (and voided there too if it was voided here)

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


def get(conn: Connection, credit_note_id: str) -> dict[str, Any] | None:
    row = conn.execute(select(credit_note_syncs).where(credit_note_syncs.c.credit_note_id == credit_note_id)).first()
    return None if row is None else dict(row._mapping)


def rows_for(conn: Connection, credit_note_ids: list[str]) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    for start in range(0, len(credit_note_ids), 500):
        page = credit_note_ids[start : start + 500]
        for row in conn.execute(select(credit_note_syncs).where(credit_note_syncs.c.credit_note_id.in_(page))):
            out[row.credit_note_id] = dict(row._mapping)
    return out


def ensure(conn: Connection, credit_note_id: str, app: str, now_us: int) -> None:
    dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
    conn.execute(
        dialect.insert(credit_note_syncs)
        .values(
            credit_note_id=credit_note_id,
            app=app,
            status=PENDING,
            attempts=0,
            created_us=now_us,
            updated_us=now_us,
        )
        .on_conflict_do_nothing(index_elements=["credit_note_id"])
    )


def update(conn: Connection, credit_note_id: str, values: dict[str, Any]) -> None:
    conn.execute(
        update_(credit_note_syncs).where(credit_note_syncs.c.credit_note_id == credit_note_id).values(**values)
    )


def due(conn: Connection, now_us: int, limit: int) -> list[str]:
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
                and_(s.status != DONE, or_(s.next_attempt_us.is_(None), s.next_attempt_us <= now_us)),
                and_(s.status == DONE, s.external_id.is_not(None), s.synced_status != c.status),
            )
        )
    )
    rows = conn.execute(fresh.union_all(retry).order_by("seq").limit(limit))
    return [r.id for r in rows]


__all__ = ["DONE", "FAILED", "PENDING", "credit_note_syncs", "due", "ensure", "get", "rows_for", "update"]
