"""Billing profile tables, and the SQL adapter of the profiles port (profiles_ports.ProfileStorage).

A profile's settings (supplier, workflow, apps) are one JSON document: they are read and written
as a whole, never queried by field. Exactly one live profile is the default (enforced by the
service inside one write transaction; `SqlProfileStorage.writing` makes those transactions serial).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Boolean, Column, Connection, Table, Text, func, select, text, update
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.customers.sql import customers
from tallybook.store.schema import metadata

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore

JSON_TYPE = JSON().with_variant(JSONB(), "postgresql")

billing_profiles = Table(
    "billing_profiles",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("is_default", Boolean, nullable=False, default=False),
    Column("source", Text, nullable=False),  # config (tallybook.yaml, read-only) | api
    Column("body", JSON_TYPE, nullable=False),  # supplier, workflow, apps, metadata
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("deleted_us", BigInteger, nullable=True),
)

# A customer without a row here is billed with the default profile.
billing_customer_profiles = Table(
    "billing_customer_profiles",
    metadata,
    Column("customer_id", Text, primary_key=True),
    Column("profile_id", Text, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
)


# Every write to these tables takes this transaction lock on PostgreSQL first (SQLite write
# transactions are serial already), so "one default" and "no customer on a deleted profile" hold.
PG_PROFILES_LOCK = 7_310_220_460
PAGE = 500  # ids per IN (...) (SQLite's bound-parameter limit)
# Above this many customers, read every assignment in one query instead of paging through ids.
READ_ALL_ABOVE = 2_000


def _lock_profiles(conn: Connection) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": PG_PROFILES_LOCK})


class SqlProfileTransaction:
    """One transaction on the profile tables (profiles_ports.ProfileTransaction)."""

    def __init__(self, conn: Connection) -> None:
        self.conn = conn

    # -- profiles ------------------------------------------------------------------------------------------
    def profile_rows(self, include_deleted: bool = False) -> list[dict[str, Any]]:
        """Every profile (there are few), oldest first."""
        p = billing_profiles.c
        query = select(billing_profiles)
        if not include_deleted:
            query = query.where(p.deleted_us.is_(None))
        return [dict(r._mapping) for r in self.conn.execute(query.order_by(p.created_us, p.id))]

    def get_profile(self, profile_id: str) -> dict[str, Any] | None:
        row = self.conn.execute(select(billing_profiles).where(billing_profiles.c.id == profile_id)).first()
        return None if row is None else dict(row._mapping)

    def insert_profile(self, row: dict[str, Any]) -> None:
        self.conn.execute(billing_profiles.insert().values(**row))

    def update_profile(self, profile_id: str, values: dict[str, Any]) -> bool:
        result = self.conn.execute(update(billing_profiles).where(billing_profiles.c.id == profile_id).values(**values))
        return result.rowcount > 0

    def clear_defaults(self, except_id: str | None = None) -> None:
        """Unmark every default profile but `except_id`."""
        p = billing_profiles.c
        query = update(billing_profiles).where(p.is_default.is_(True))
        if except_id is not None:
            query = query.where(p.id != except_id)
        self.conn.execute(query.values(is_default=False))

    def live_api_default(self) -> str | None:
        """The id of the live API profile marked default, if any."""
        p = billing_profiles.c
        query = (
            select(p.id)
            .where(p.is_default.is_(True), p.source == "api", p.deleted_us.is_(None))
            .order_by(p.updated_us.desc(), p.id.desc())
        )
        return self.conn.execute(query).scalars().first()

    # -- customer assignments ------------------------------------------------------------------------------
    def assignments_of(self, customer_ids: Sequence[str]) -> dict[str, str]:
        """customer id -> profile id for the customers among these that have one."""
        c = billing_customer_profiles.c
        ids = list(dict.fromkeys(customer_ids))
        found: dict[str, str] = {}
        if len(ids) > READ_ALL_ABOVE:
            wanted = set(ids)
            for row in self.conn.execute(select(c.customer_id, c.profile_id)):
                if row.customer_id in wanted:
                    found[row.customer_id] = row.profile_id
            return found
        for start in range(0, len(ids), PAGE):
            query = select(c.customer_id, c.profile_id).where(c.customer_id.in_(ids[start : start + PAGE]))
            found.update((row.customer_id, row.profile_id) for row in self.conn.execute(query))
        return found

    def get_assignment(self, customer_id: str) -> dict[str, Any] | None:
        c = billing_customer_profiles.c
        row = self.conn.execute(select(billing_customer_profiles).where(c.customer_id == customer_id)).first()
        return None if row is None else dict(row._mapping)

    def put_assignment(self, customer_id: str, profile_id: str, now_us: int) -> None:
        """Assign (or move) a customer."""
        c = billing_customer_profiles.c
        result = self.conn.execute(
            update(billing_customer_profiles)
            .where(c.customer_id == customer_id)
            .values(profile_id=profile_id, updated_us=now_us)
        )
        if result.rowcount == 0:
            self.conn.execute(
                billing_customer_profiles.insert().values(
                    customer_id=customer_id, profile_id=profile_id, created_us=now_us, updated_us=now_us
                )
            )

    def delete_assignment(self, customer_id: str) -> bool:
        c = billing_customer_profiles.c
        return self.conn.execute(billing_customer_profiles.delete().where(c.customer_id == customer_id)).rowcount > 0

    def live_customers_on(self, profile_id: str, sample: int = 5) -> tuple[int, list[str]]:
        """How many live (not deleted) customers are assigned to the profile, and a few of their ids."""
        c = billing_customer_profiles.c
        condition = (c.profile_id == profile_id) & customers.c.deleted_us.is_(None)
        joined = billing_customer_profiles.join(customers, customers.c.id == c.customer_id)
        count = self.conn.execute(select(func.count()).select_from(joined).where(condition)).scalar_one()
        ids = self.conn.execute(
            select(c.customer_id).select_from(joined).where(condition).order_by(c.customer_id).limit(sample)
        )
        return int(count), list(ids.scalars())

    def delete_assignments_to(self, profile_id: str) -> int:
        """Drop every assignment to the profile (what is left are deleted customers')."""
        c = billing_customer_profiles.c
        return self.conn.execute(billing_customer_profiles.delete().where(c.profile_id == profile_id)).rowcount


class SqlProfileStorage:
    """Profile transactions on a SQL store; a writing one takes the profiles lock first."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def reading(self) -> Iterator[SqlProfileTransaction]:
        with self.store.read() as conn:
            yield SqlProfileTransaction(conn)

    @contextmanager
    def writing(self) -> Iterator[SqlProfileTransaction]:
        with self.store.write() as conn:
            _lock_profiles(conn)
            yield SqlProfileTransaction(conn)


__all__ = ["SqlProfileStorage", "SqlProfileTransaction", "billing_customer_profiles", "billing_profiles"]
