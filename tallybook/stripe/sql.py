"""The Stripe room's tables and their SQL: customer links, meter links and the report ledger.

The ledger (`stripe_reports`) has one row per thing sent to Stripe about one (meter, customer,
window): a meter event, a cancel adjustment or a usage record. A row is written as PENDING before
the request goes out (the intent), and updated with Stripe's answer afterwards. Its `identifier`
is deterministic, so resending a PENDING row after a crash can never count twice at Stripe.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    Index,
    Integer,
    Table,
    Text,
    and_,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from tallybook.jobs.sql import JobStore
from tallybook.store.base import SqlStore
from tallybook.store.schema import SEQUENCE_TYPE, metadata
from tallybook.stripe.model import (
    PENDING,
    CustomerLink,
    MeterLink,
    ReportFilter,
    ReportRow,
    StripeCustomerTaken,
)

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

INSERT_PAGE = 500  # rows per statement (SQLite's bound-parameter limit)

stripe_customers = Table(
    "stripe_customers",
    metadata,
    Column("customer_id", Text, primary_key=True),  # Tallybook customer ULID
    Column("stripe_customer_id", Text, nullable=False, unique=True),
    Column("stripe_default_payment_method_id", Text, nullable=True),
    # Start of the customer's current Stripe billing period, when known (webhook or setup).
    Column("period_start_us", BigInteger, nullable=True),
    Column("updated_us", BigInteger, nullable=False),
)

stripe_meter_links = Table(
    "stripe_meter_links",
    metadata,
    Column("meter", Text, primary_key=True),  # Tallybook meter slug
    Column("event_name", Text, nullable=True),
    Column("stripe_meter_id", Text, nullable=True),
    Column("price_id", Text, nullable=True),
    Column("formula", Text, nullable=True),  # sum | last
    Column("mode", Text, nullable=False),  # billing_meter | usage_record
    Column("updated_us", BigInteger, nullable=False),
)

stripe_reports = Table(
    "stripe_reports",
    metadata,
    Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column("meter", Text, nullable=False),
    Column("customer_id", Text, nullable=False),
    Column("stripe_customer_id", Text, nullable=False),
    Column("window_start_us", BigInteger, nullable=False),
    Column("window_end_us", BigInteger, nullable=False),
    Column("kind", Text, nullable=False),
    Column("version", Integer, nullable=False),  # 1, 2, ... per (meter, customer, window)
    Column("identifier", Text, nullable=False, unique=True),
    Column("value", Text, nullable=False),  # exact decimal text sent
    Column("target", Text, nullable=False),  # what Stripe should hold for the window afterwards
    Column("cancels", Text, nullable=True),  # identifier cancelled by a CANCEL row
    Column("cancelled", Boolean, nullable=False, default=False),  # an EVENT later cancelled
    Column("timestamp_us", BigInteger, nullable=False),  # the timestamp given to Stripe
    Column("status", Text, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("next_attempt_us", BigInteger, nullable=True),
    Column("request", JSON_TYPE, nullable=True),
    Column("response", JSON_TYPE, nullable=True),
    Column("error", Text, nullable=True),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("sent_us", BigInteger, nullable=True),  # when Stripe accepted it (cancel window)
    # Usage records: the part of `value` that is usage of earlier periods (exact decimal text).
    Column("carried", Text, nullable=True),
)
Index(
    "ix_stripe_reports_key",
    stripe_reports.c.meter,
    stripe_reports.c.customer_id,
    stripe_reports.c.window_start_us,
)
Index("ix_stripe_reports_due", stripe_reports.c.status, stripe_reports.c.next_attempt_us)

# One row per request made for a ledger row: when, how it ended, Stripe's answer.
stripe_report_attempts = Table(
    "stripe_report_attempts",
    metadata,
    Column("id", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column("report_id", BigInteger, nullable=False),
    Column("attempted_us", BigInteger, nullable=False),
    Column("outcome", Text, nullable=False),  # SENT, ALREADY_RECEIVED, RETRY, REJECTED
    Column("http_status", Integer, nullable=True),
    Column("response", JSON_TYPE, nullable=True),
    Column("error", Text, nullable=True),
)
Index("ix_stripe_report_attempts_report", stripe_report_attempts.c.report_id)


def _report(row: Any) -> ReportRow:
    m = row._mapping
    carried = None if m["carried"] is None else Decimal(m["carried"])
    return ReportRow(**{**m, "value": Decimal(m["value"]), "target": Decimal(m["target"]), "carried": carried})


def _upsert(dialect: str, table: Table, values: dict[str, Any], keys: list[str]) -> Any:
    statement: Any = (postgresql if dialect == "postgresql" else sqlite).insert(table).values(**values)
    changes = {k: statement.excluded[k] for k in values if k not in keys}
    return statement.on_conflict_do_update(index_elements=keys, set_=changes)


class SqlLedgerTransaction:
    """`ports.LedgerTransaction` on one connection: the ledger's writes and the reporting cursors."""

    def __init__(self, conn: Connection, jobs: JobStore) -> None:
        self.conn = conn
        self.jobs = jobs

    def cursor(self, name: str) -> int | None:
        return self.jobs.get_cursor(self.conn, name)

    def set_cursor(self, name: str, value_us: int) -> None:
        self.jobs.set_cursor(self.conn, name, value_us)

    def insert_reports(self, rows: Sequence[dict[str, Any]]) -> list[int]:
        """Write intents (PENDING rows) in the caller's transaction; returns their ids in order."""
        if not rows:
            return []
        for start in range(0, len(rows), INSERT_PAGE):
            self.conn.execute(stripe_reports.insert(), list(rows[start : start + INSERT_PAGE]))
        identifiers = [r["identifier"] for r in rows]
        ids: dict[str, int] = {}
        for start in range(0, len(identifiers), INSERT_PAGE):
            page = identifiers[start : start + INSERT_PAGE]
            query = select(stripe_reports.c.identifier, stripe_reports.c.id).where(
                stripe_reports.c.identifier.in_(page)
            )
            ids.update((str(r[0]), int(r[1])) for r in self.conn.execute(query))
        return [ids[identifier] for identifier in identifiers]

    def record_outcome(self, report_id: int, values: dict[str, Any]) -> None:
        self.conn.execute(update(stripe_reports).where(stripe_reports.c.id == report_id).values(**values))

    def insert_attempts(self, rows: Sequence[dict[str, Any]]) -> None:
        for start in range(0, len(rows), INSERT_PAGE):
            self.conn.execute(stripe_report_attempts.insert(), list(rows[start : start + INSERT_PAGE]))

    def mark_cancelled(self, identifier: str, now_us: int) -> None:
        self.conn.execute(
            update(stripe_reports)
            .where(stripe_reports.c.identifier == identifier)
            .values(cancelled=True, updated_us=now_us)
        )


class SqlStripeStorage:
    """`ports.StripeStorage` on the SQL store: links and ledger reads (each its own transaction), and
    `reading()`/`writing()` units of work for the ledger's writes."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store
        self.jobs = JobStore(store)

    @contextmanager
    def reading(self) -> Iterator[SqlLedgerTransaction]:
        with self.store.read() as conn:
            yield SqlLedgerTransaction(conn, self.jobs)

    @contextmanager
    def writing(self) -> Iterator[SqlLedgerTransaction]:
        with self.store.write() as conn:
            yield SqlLedgerTransaction(conn, self.jobs)

    @property
    def _dialect(self) -> str:
        return str(self.store.engine.dialect.name)

    # -- customer links -----------------------------------------------------------------------------
    def put_customer(self, link: CustomerLink) -> None:
        values = {
            "customer_id": link.customer_id,
            "stripe_customer_id": link.stripe_customer_id,
            "stripe_default_payment_method_id": link.stripe_default_payment_method_id,
            "updated_us": link.updated_us,
        }
        try:
            with self.store.write() as conn:
                conn.execute(_upsert(self._dialect, stripe_customers, values, ["customer_id"]))
        except IntegrityError:
            raise StripeCustomerTaken(link.stripe_customer_id) from None

    def customer_owning(self, stripe_customer_id: str) -> CustomerLink | None:
        with self.store.read() as conn:
            row = conn.execute(
                select(stripe_customers).where(stripe_customers.c.stripe_customer_id == stripe_customer_id)
            ).first()
        return CustomerLink(**row._mapping) if row else None

    def get_customer(self, customer_id: str) -> CustomerLink | None:
        with self.store.read() as conn:
            row = conn.execute(select(stripe_customers).where(stripe_customers.c.customer_id == customer_id)).first()
        return CustomerLink(**row._mapping) if row else None

    def customers(self, customer_ids: Sequence[str] | None = None) -> dict[str, CustomerLink]:
        query = select(stripe_customers)
        if customer_ids is not None:
            query = query.where(stripe_customers.c.customer_id.in_(list(customer_ids)))
        with self.store.read() as conn:
            return {r.customer_id: CustomerLink(**r._mapping) for r in conn.execute(query)}

    def set_period_start(self, customer_id: str, period_start_us: int, now_us: int) -> None:
        with self.store.write() as conn:
            conn.execute(
                update(stripe_customers)
                .where(stripe_customers.c.customer_id == customer_id)
                .values(period_start_us=period_start_us, updated_us=now_us)
            )

    # -- meter links --------------------------------------------------------------------------------
    def put_meter_link(self, link: MeterLink) -> None:
        values = {
            "meter": link.meter,
            "event_name": link.event_name,
            "stripe_meter_id": link.stripe_meter_id,
            "price_id": link.price_id,
            "formula": link.formula,
            "mode": link.mode,
            "updated_us": link.updated_us,
        }
        with self.store.write() as conn:
            conn.execute(_upsert(self._dialect, stripe_meter_links, values, ["meter"]))

    def meter_links(self) -> list[MeterLink]:
        with self.store.read() as conn:
            rows = conn.execute(select(stripe_meter_links).order_by(stripe_meter_links.c.meter))
            return [MeterLink(**r._mapping) for r in rows]

    # -- the ledger ---------------------------------------------------------------------------------
    def attempts_of(self, report_ids: Sequence[int]) -> dict[int, list[dict[str, Any]]]:
        found: dict[int, list[dict[str, Any]]] = {}
        if not report_ids:
            return found
        with self.store.read() as conn:
            for start in range(0, len(report_ids), INSERT_PAGE):
                page = list(report_ids[start : start + INSERT_PAGE])
                query = (
                    select(stripe_report_attempts)
                    .where(stripe_report_attempts.c.report_id.in_(page))
                    .order_by(stripe_report_attempts.c.id)
                )
                for row in conn.execute(query):
                    found.setdefault(int(row.report_id), []).append(dict(row._mapping))
        return found

    def due_pending(self, now_us: int, meter: str | None = None, limit: int = 10_000) -> list[ReportRow]:
        """PENDING rows whose next attempt is due, oldest first (a cancel before its replacement)."""
        conditions = [stripe_reports.c.status == PENDING, stripe_reports.c.next_attempt_us <= now_us]
        if meter is not None:
            conditions.append(stripe_reports.c.meter == meter)
        query = select(stripe_reports).where(*conditions).order_by(stripe_reports.c.id).limit(limit)
        with self.store.read() as conn:
            return [_report(r) for r in conn.execute(query)]

    def latest_per_window(
        self, meter: str, from_us: int, to_us: int, customer_ids: Sequence[str] | None = None
    ) -> dict[tuple[str, int], list[ReportRow]]:
        """Every ledger row of `meter` for windows starting in [from_us, to_us), per (customer, window)."""
        conditions = [
            stripe_reports.c.meter == meter,
            stripe_reports.c.window_start_us >= from_us,
            stripe_reports.c.window_start_us < to_us,
        ]
        if customer_ids is not None:
            conditions.append(stripe_reports.c.customer_id.in_(list(customer_ids)))
        query = select(stripe_reports).where(and_(*conditions)).order_by(stripe_reports.c.id)
        found: dict[tuple[str, int], list[ReportRow]] = {}
        with self.store.read() as conn:
            for row in conn.execute(query):
                report = _report(row)
                found.setdefault((report.customer_id, report.window_start_us), []).append(report)
        return found

    def item_rows(self, meter: str, customer_id: str, item_key: str) -> list[ReportRow]:
        """Every usage-record row of one subscription item (`cancels` = "ur:<item>"), all periods,
        oldest first."""
        query = (
            select(stripe_reports)
            .where(
                stripe_reports.c.meter == meter,
                stripe_reports.c.customer_id == customer_id,
                stripe_reports.c.cancels == item_key,
            )
            .order_by(stripe_reports.c.id)
        )
        with self.store.read() as conn:
            return [_report(r) for r in conn.execute(query)]

    def list_reports(self, flt: ReportFilter) -> tuple[int, list[ReportRow]]:
        conditions: list[Any] = []
        if flt.meter is not None:
            conditions.append(stripe_reports.c.meter == flt.meter)
        if flt.customer_id is not None:
            conditions.append(stripe_reports.c.customer_id == flt.customer_id)
        if flt.status is not None:
            conditions.append(stripe_reports.c.status == flt.status)
        if flt.from_us is not None:
            conditions.append(stripe_reports.c.window_start_us >= flt.from_us)
        if flt.to_us is not None:
            conditions.append(stripe_reports.c.window_start_us < flt.to_us)
        with self.store.read() as conn:
            total = conn.execute(select(func.count()).select_from(stripe_reports).where(*conditions)).scalar_one()
            rows = conn.execute(
                select(stripe_reports)
                .where(*conditions)
                .order_by(stripe_reports.c.id.desc())
                .limit(flt.limit)
                .offset(flt.offset)
            )
            return int(total), [_report(r) for r in rows]

    def status_counts(self) -> dict[str, int]:
        with self.store.read() as conn:
            rows = conn.execute(select(stripe_reports.c.status, func.count()).group_by(stripe_reports.c.status))
            return {str(r[0]): int(r[1]) for r in rows}

    # -- default payment method (checkout onboarding) -------------------------------------------------
    def set_default_payment_method(
        self, customer_id: str, stripe_customer_id: str, payment_method_id: str, now_us: int
    ) -> bool:
        """Store the customer's default payment method, only while it is still linked to
        `stripe_customer_id` (a method belongs to that Stripe customer). False if the link moved."""
        with self.store.write() as conn:
            result = conn.execute(
                update(stripe_customers)
                .where(
                    stripe_customers.c.customer_id == customer_id,
                    stripe_customers.c.stripe_customer_id == stripe_customer_id,
                )
                .values(stripe_default_payment_method_id=payment_method_id, updated_us=now_us)
            )
            return bool(result.rowcount)
