"""Customer tables, and the SQL adapter of the customers port (ports.CustomerRepository).

`customer_subjects` is the attribution map: one row per subject that belongs to a customer (the
subjects in usageAttribution.subjectKeys, and the customer's own key). The primary key on
`subject` is what guarantees a subject belongs to at most one customer. Meter queries join it to
filter and group by customer. `explicit` tells the two kinds apart: true when the subject is listed
in subjectKeys, false for a key that is attributed only because it is the customer's key.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    Column,
    Connection,
    ForeignKey,
    Index,
    Table,
    Text,
    bindparam,
    delete,
    exists,
    func,
    select,
    true,
    update,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.exc import IntegrityError

from tallybook.customers.model import CustomerRow, CustomerSearch, KeyTaken, SubjectTaken, WriteContended
from tallybook.store.schema import events, metadata

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore

# none_as_null: Python None is stored as SQL NULL, not as the JSON text 'null'.
JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

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
    # Migration 0003. Listed in usageAttribution.subjectKeys (true) or only the customer's key (false).
    Column("explicit", Boolean, nullable=False, server_default=true()),
)
Index("ix_customer_subjects_customer", customer_subjects.c.customer_id)

# Bound parameters per IN (...) list; SQLite allows 32,766 per statement.
_LOOKUP_PAGE = 500
# Writes that lose a uniqueness race are retried: the retry's checks then see the winner and
# raise KeyTaken/SubjectTaken with its id, which is more useful than a bare constraint error.
_WRITE_ATTEMPTS = 3

T = TypeVar("T")


def _chunks(values: Sequence[str]) -> Iterable[Sequence[str]]:
    for start in range(0, len(values), _LOOKUP_PAGE):
        yield values[start : start + _LOOKUP_PAGE]


class SqlCustomerRepository:
    """The customers port (ports.CustomerRepository) on SQLite and PostgreSQL."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- writes -------------------------------------------------------------------------------------
    def insert(self, row: CustomerRow) -> None:
        """Insert a customer and its subject rows atomically.

        Raises KeyTaken when a live customer has the key, SubjectTaken when any attributed subject
        (listed or the key itself) belongs to another customer. Two concurrent inserts claiming
        one subject cannot both commit: the primary key on customer_subjects.subject refuses the
        second, whose retry then reports the winner.
        """

        def work(conn: Connection) -> None:
            self._check_free(conn, row)
            conn.execute(customers.insert().values(**_customer_values(row)))
            self._insert_subjects(conn, row)

        self._write_with_retries(work)

    def replace(self, row: CustomerRow) -> bool:
        """Replace a live customer's fields and its whole subject set in one transaction.

        Keeps created_us. Returns False when no live customer has row.id (nothing is changed).
        """

        def work(conn: Connection) -> bool:
            live = customers.c.id == row.id, customers.c.deleted_us.is_(None)
            # FOR UPDATE (PostgreSQL) holds off a concurrent delete; SQLite writers are serialised.
            if conn.execute(select(customers.c.id).where(*live).with_for_update()).first() is None:
                return False
            # Check before writing: a key clash found by the unique index would only say "conflict".
            self._check_free(conn, row)
            values = _customer_values(row)
            del values["id"], values["created_us"], values["deleted_us"]
            conn.execute(update(customers).where(*live).values(**values))
            conn.execute(delete(customer_subjects).where(customer_subjects.c.customer_id == row.id))
            self._insert_subjects(conn, row)
            return True

        return self._write_with_retries(work)

    def soft_delete(self, customer_id: str, deleted_us: int) -> bool:
        """Mark a live customer deleted and free its subjects. False when it was not live."""
        with self.store.write() as conn:
            changed = conn.execute(
                update(customers)
                .where(customers.c.id == customer_id, customers.c.deleted_us.is_(None))
                .values(deleted_us=deleted_us, updated_us=deleted_us)
            ).rowcount
            if changed:
                conn.execute(delete(customer_subjects).where(customer_subjects.c.customer_id == customer_id))
            return bool(changed)

    def _write_with_retries(self, work: Callable[[Connection], T]) -> T:
        for attempt in range(_WRITE_ATTEMPTS):
            try:
                with self.store.write() as conn:
                    return work(conn)
            except IntegrityError:
                if attempt == _WRITE_ATTEMPTS - 1:
                    raise WriteContended("the customer could not be written: concurrent changes") from None
        raise AssertionError("unreachable")

    def _check_free(self, conn: Connection, row: CustomerRow) -> None:
        if row.key is not None:
            owner = conn.execute(
                select(customers.c.id).where(
                    customers.c.key == row.key, customers.c.deleted_us.is_(None), customers.c.id != row.id
                )
            ).first()
            if owner is not None:
                raise KeyTaken(row.key, owner[0])
        wanted = sorted(row.attributed_subjects())
        for page in _chunks(wanted):
            taken = conn.execute(
                select(customer_subjects.c.subject, customers.c.id, customers.c.key)
                .join(customers, customers.c.id == customer_subjects.c.customer_id)
                .where(customer_subjects.c.subject.in_(page), customer_subjects.c.customer_id != row.id)
                .order_by(customer_subjects.c.subject)
                .limit(1)
            ).first()
            if taken is not None:
                raise SubjectTaken(taken[0], taken[1], taken[2])

    def _insert_subjects(self, conn: Connection, row: CustomerRow) -> None:
        listed = set(row.subject_keys)
        rows = [
            {"subject": subject, "customer_id": row.id, "explicit": subject in listed}
            for subject in sorted(row.attributed_subjects())
        ]
        # Multi-row VALUES statements rather than executemany: a refused row then fails one plain
        # statement (psycopg runs executemany in pipeline mode, which logs noise when aborted).
        for start in range(0, len(rows), _LOOKUP_PAGE):
            conn.execute(customer_subjects.insert().values(rows[start : start + _LOOKUP_PAGE]))

    # -- reads ---------------------------------------------------------------------------------------
    def by_id(self, customer_id: str) -> CustomerRow | None:
        """The customer with this id, deleted or not."""
        with self.store.read() as conn:
            found = self._rows(conn, select(customers).where(customers.c.id == customer_id))
        return found[0] if found else None

    def live_by_key(self, key: str) -> CustomerRow | None:
        with self.store.read() as conn:
            found = self._rows(conn, _LIVE_BY_KEY, {"key": key})
        return found[0] if found else None

    def search(self, query: CustomerSearch) -> tuple[list[CustomerRow], int]:
        """One page of customers and the number of customers matching the filters."""
        conditions = _search_conditions(query)
        orderings: dict[str, list[Any]] = {
            "id": [customers.c.id],
            "name": [func.lower(customers.c.name), customers.c.name, customers.c.id],
            "created": [customers.c.created_us, customers.c.id],
        }
        order_columns = orderings[query.order_by]
        ordering = [c.desc() for c in order_columns] if query.descending else order_columns
        page_query = select(customers).where(*conditions).order_by(*ordering).offset(query.offset).limit(query.limit)
        count_query = select(func.count()).select_from(customers).where(*conditions)
        with self.store.read() as conn:
            total = int(conn.execute(count_query).scalar_one())
            rows = self._rows(conn, page_query)
        return rows, total

    def live_ids(self, customer_ids: Sequence[str]) -> set[str]:
        found: set[str] = set()
        with self.store.read() as conn:
            for page in _chunks(list(dict.fromkeys(customer_ids))):
                result = conn.execute(
                    select(customers.c.id).where(customers.c.id.in_(page), customers.c.deleted_us.is_(None))
                )
                found.update(r[0] for r in result)
        return found

    def subjects_of(self, customer_ids: Sequence[str]) -> dict[str, list[str]]:
        """Customer id -> every subject attributed to it (listed and key), sorted."""
        found: dict[str, list[str]] = {}
        with self.store.read() as conn:
            for page in _chunks(list(dict.fromkeys(customer_ids))):
                result = conn.execute(
                    select(customer_subjects.c.customer_id, customer_subjects.c.subject)
                    .where(customer_subjects.c.customer_id.in_(page))
                    .order_by(customer_subjects.c.customer_id, customer_subjects.c.subject)
                )
                for customer_id, subject in result:
                    found.setdefault(customer_id, []).append(subject)
        return found

    def owners_of(self, subjects: Sequence[str]) -> dict[str, str]:
        """Subject -> owning customer id, for the subjects that are attributed."""
        found: dict[str, str] = {}
        with self.store.read() as conn:
            for page in _chunks(list(dict.fromkeys(subjects))):
                result = conn.execute(
                    select(customer_subjects.c.subject, customer_subjects.c.customer_id).where(
                        customer_subjects.c.subject.in_(page)
                    )
                )
                found.update((subject, owner) for subject, owner in result)
        return found

    def seen_subjects(
        self, event_types: Sequence[str] | None = None, from_us: int | None = None, to_us: int | None = None
    ) -> list[tuple[str, str | None]]:
        """Distinct event subjects, sorted, each with the customer it is attributed to (or None).

        This is a DISTINCT over events.subject, narrowed by type and time when given. There is no
        index on events.subject: one would slow every ingest to speed up this listing, which is
        rare and tolerates a scan. A time bound uses ix_events_time and keeps the scan small.
        """
        conditions: list[Any] = []
        if event_types is not None:
            conditions.append(events.c.type.in_(list(event_types)))
        if from_us is not None:
            conditions.append(events.c.time_us >= from_us)
        if to_us is not None:
            conditions.append(events.c.time_us <= to_us)
        seen = select(events.c.subject).where(*conditions).distinct().subquery("seen")
        query = (
            select(seen.c.subject, customer_subjects.c.customer_id)
            .select_from(seen.outerjoin(customer_subjects, customer_subjects.c.subject == seen.c.subject))
            .order_by(seen.c.subject)
        )
        with self.store.read() as conn:
            return [(subject, owner) for subject, owner in conn.execute(query)]

    def _rows(self, conn: Connection, query: Any, parameters: dict[str, Any] | None = None) -> list[CustomerRow]:
        records = [dict(r._mapping) for r in conn.execute(query, parameters)]
        listed: dict[str, list[str]] = {}
        ids = [r["id"] for r in records]
        for page in _chunks(ids):
            result = conn.execute(_EXPLICIT_SUBJECTS, {"ids": page})
            for customer_id, subject in result:
                listed.setdefault(customer_id, []).append(subject)
        return [CustomerRow(**r, subject_keys=tuple(listed.get(r["id"], ()))) for r in records]


# Built once: every API call naming a customer by key runs these (entitlements' `value` among them).
_LIVE_BY_KEY = select(customers).where(customers.c.key == bindparam("key"), customers.c.deleted_us.is_(None))
_EXPLICIT_SUBJECTS = (
    select(customer_subjects.c.customer_id, customer_subjects.c.subject)
    .where(customer_subjects.c.customer_id.in_(bindparam("ids", expanding=True)), customer_subjects.c.explicit)
    .order_by(customer_subjects.c.subject)
)


def _search_conditions(query: CustomerSearch) -> list[Any]:
    conditions: list[Any] = []
    if not query.include_deleted:
        conditions.append(customers.c.deleted_us.is_(None))
    if query.key is not None:
        conditions.append(customers.c.key.icontains(query.key, autoescape=True))
    if query.name is not None:
        conditions.append(customers.c.name.icontains(query.name, autoescape=True))
    if query.primary_email is not None:
        conditions.append(customers.c.primary_email.icontains(query.primary_email, autoescape=True))
    if query.subject is not None:
        conditions.append(
            exists().where(
                customer_subjects.c.customer_id == customers.c.id,
                customer_subjects.c.subject.icontains(query.subject, autoescape=True),
            )
        )
    return conditions


def _customer_values(row: CustomerRow) -> dict[str, Any]:
    return {
        "id": row.id,
        "key": row.key,
        "name": row.name,
        "description": row.description,
        "primary_email": row.primary_email,
        "currency": row.currency,
        "timezone": row.timezone,
        "billing_address": row.billing_address,
        "metadata": row.metadata,
        "created_us": row.created_us,
        "updated_us": row.updated_us,
        "deleted_us": row.deleted_us,
    }
