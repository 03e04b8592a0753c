"""Checks that a database (a restored one, typically) is whole and consistent, on either engine.

Every check is a query over some room's tables (counts, anti-joins, a pass over invoices and their
lines), and verify reads them all as stored, so the module is an SQL adapter through and through.

Each check is cheap next to reading the data once: counts, index-backed anti-joins, and one
streaming pass over invoices and their lines. A check that cannot run (a table missing because
the schema is behind) is reported as a failure of that check; the others still run.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from functools import cache
from typing import Any

from sqlalchemy import Connection, func, select

from tallybook.customers.sql import customers
from tallybook.exact import CONTEXT as EXACT
from tallybook.meters.tables import meters
from tallybook.store.base import SqlStore
from tallybook.store.billing import invoice_lines, invoices
from tallybook.store.schema import events
from tallybook.store.tables import all_tables

_INVOICE_PAGE = 500
_SHOWN = 5  # ids named per failed check


@cache
def _script() -> Any:
    from alembic.script import ScriptDirectory

    from tallybook.store.migrate import alembic_config

    return ScriptDirectory.from_config(alembic_config())


def known_revisions() -> frozenset[str]:
    return frozenset(rev.revision for rev in _script().walk_revisions())


def head_revisions() -> str:
    return ", ".join(sorted(_script().get_heads()))


@dataclass(frozen=True, slots=True)
class Check:
    name: str
    ok: bool
    detail: str


@dataclass
class VerifyReport:
    revision: str | None
    head: str
    counts: dict[str, int | None] = field(default_factory=dict)  # None: the table is missing
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)


def verify(store: SqlStore) -> VerifyReport:
    from tallybook.store.migrate import current_revision

    report = VerifyReport(current_revision(store.engine), head_revisions())
    at_head = report.revision == report.head
    report.checks.append(
        Check(
            "schema revision",
            at_head,
            f"at {report.revision} (head)"
            if at_head
            else f"at {report.revision or 'none'}, head is {report.head}: run `tallybook db upgrade`",
        )
    )
    for table in all_tables().sorted_tables:
        report.counts[table.name] = _row_count(store, table)
    missing = sorted(t for t, n in report.counts.items() if n is None)
    report.checks.append(
        Check("tables", not missing, "all present" if not missing else f"missing: {', '.join(missing)}")
    )
    checks: list[tuple[str, Callable[[Connection], Check]]] = [
        ("meter cursors", _meter_cursors),
        ("invoice totals", _invoice_totals),
        ("invoice lines", _orphan_lines),
        ("invoice customers", _invoice_customers),
    ]
    if store.dialect_name == "sqlite":
        checks.insert(0, ("sqlite integrity", _sqlite_quick_check))
    for name, run in checks:
        try:
            with store.read() as conn:
                report.checks.append(run(conn))
        except Exception as exc:  # a damaged or old database: say which check could not run, run the rest
            report.checks.append(Check(name, False, f"could not run: {type(exc).__name__}: {exc}".splitlines()[0]))
    return report


def _count(table: Any) -> Any:
    return select(func.count()).select_from(table)


def _row_count(store: SqlStore, table: Any) -> int | None:
    """None when the table is missing (a schema behind head)."""
    try:
        with store.read() as conn:
            return int(conn.execute(_count(table)).scalar_one())
    except Exception:
        return None


def _sqlite_quick_check(conn: Connection) -> Check:
    problems = [row[0] for row in conn.exec_driver_sql("PRAGMA quick_check")]
    ok = problems == ["ok"]
    return Check("sqlite integrity", ok, "PRAGMA quick_check: ok" if ok else "; ".join(problems[:_SHOWN]))


def _meter_cursors(conn: Connection) -> Check:
    """The materializer's cursor never points past the last stored event (it would skip events
    ingested later, e.g. after restoring an older backup under a newer database's cursors)."""
    max_seq = int(conn.execute(select(func.coalesce(func.max(events.c.seq), 0))).scalar_one())
    ahead = conn.execute(
        select(meters.c.slug, meters.c.projected_seq).where(meters.c.projected_seq > max_seq).order_by(meters.c.slug)
    ).all()
    if not ahead:
        return Check("meter cursors", True, f"every meter's projected_seq <= max event seq {max_seq}")
    named = ", ".join(f"{slug} at {seq}" for slug, seq in ahead[:_SHOWN])
    return Check("meter cursors", False, f"{len(ahead)} meter(s) past max event seq {max_seq}: {named}")


def _invoice_totals(conn: Connection) -> Check:
    """Every invoice's stored subtotal, commitments and total equal the sums of its stored lines
    (commitment lines make `commitments`, the others `subtotal`; total = subtotal + commitments)."""
    checked = 0
    wrong: list[str] = []
    i = invoices.c
    result = conn.execution_options(yield_per=_INVOICE_PAGE).execute(
        select(i.id, i.subtotal, i.commitments, i.total).order_by(i.id)
    )
    for page in result.partitions():
        sums: dict[str, list[Decimal]] = {row[0]: [Decimal(0), Decimal(0)] for row in page}
        lines = conn.execute(
            select(invoice_lines.c.invoice_id, invoice_lines.c.kind, invoice_lines.c.amount).where(
                invoice_lines.c.invoice_id.in_(list(sums))
            )
        )
        for invoice_id, kind, amount in lines:
            part = 1 if kind == "commitment" else 0
            sums[invoice_id][part] = EXACT.add(sums[invoice_id][part], _decimal(amount))  # any number of digits
        for invoice_id, subtotal, commitments, total in page:
            lines_subtotal, lines_commitments = sums[invoice_id]
            stored = (_decimal(subtotal), _decimal(commitments), _decimal(total))
            lines_total = EXACT.add(lines_subtotal, lines_commitments)
            if stored != (lines_subtotal, lines_commitments, lines_total):
                wrong.append(f"{invoice_id} (total {total}, lines sum to {lines_total})")
            checked += 1
    if not wrong:
        return Check("invoice totals", True, f"{checked} invoice(s): totals equal the sum of their lines")
    return Check("invoice totals", False, f"{len(wrong)} of {checked} differ: {'; '.join(wrong[:_SHOWN])}")


def _decimal(text: Any) -> Decimal:
    try:
        return Decimal(str(text))
    except InvalidOperation:
        return Decimal("NaN")  # never equal to anything: reported as a difference


def _orphan_lines(conn: Connection) -> Check:
    orphans = conn.execute(
        select(invoice_lines.c.invoice_id)
        .distinct()
        .where(~select(invoices.c.id).where(invoices.c.id == invoice_lines.c.invoice_id).exists())
        .limit(_SHOWN + 1)
    ).scalars()
    ids = list(orphans)
    if not ids:
        return Check("invoice lines", True, "every line belongs to a stored invoice")
    return Check("invoice lines", False, f"lines of missing invoices: {', '.join(ids[:_SHOWN])}")


def _invoice_customers(conn: Connection) -> Check:
    # Deleted customers are soft-deleted (the row stays), so every invoice's customer must exist.
    missing = list(
        conn.execute(
            select(invoices.c.id)
            .where(~select(customers.c.id).where(customers.c.id == invoices.c.customer_id).exists())
            .limit(_SHOWN + 1)
        ).scalars()
    )
    if not missing:
        return Check("invoice customers", True, "every invoice's customer is stored")
    return Check("invoice customers", False, f"invoices of missing customers: {', '.join(missing[:_SHOWN])}")
