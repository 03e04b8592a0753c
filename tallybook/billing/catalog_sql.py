"""Plan tables, and the SQL adapter of the catalog's port (catalog_ports.PlanRepository).

`plans` has one row per plan key: it is what a writer locks (SELECT ... FOR UPDATE on PostgreSQL;
SQLite serialises writers anyway) before it looks at or changes that key's versions, so two
concurrent "new version" or "publish" requests cannot both succeed. `plan_versions` has one row
per version; its rate cards and invoice commitments are one JSON document in the canonical shape
of `tallybook.billing.models` (see `tallybook.billing.catalog_documents`). Partial unique indexes back the
rules up in the database: at most one live draft and at most one published version per key.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Connection,
    ForeignKey,
    Index,
    Integer,
    Table,
    Text,
    UniqueConstraint,
    func,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.billing.catalog_ports import PlanSearch, PlanVersionRow
from tallybook.store.schema import metadata

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore

JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

plans = Table(
    "plans",
    metadata,
    Column("key", Text, primary_key=True),
    Column("created_us", BigInteger, nullable=False),
)

plan_versions = Table(
    "plan_versions",
    metadata,
    Column("id", Text, primary_key=True),  # ULID; OpenMeter's plan id names one version
    Column("plan_key", Text, ForeignKey("plans.key"), nullable=False),
    Column("version", Integer, nullable=False),
    Column("name", Text, nullable=False),
    Column("description", Text, nullable=True),
    Column("metadata", JSON_TYPE, nullable=True),
    Column("currency", Text, nullable=False),
    Column("billing_cadence", Text, nullable=False),  # ISO 8601 duration, e.g. P1M
    Column("status", Text, nullable=False),  # draft | published | archived
    Column("document", JSON_TYPE, nullable=False),  # rate cards and invoice commitments
    Column("created_us", BigInteger, nullable=False),
    Column("updated_us", BigInteger, nullable=False),
    Column("published_us", BigInteger, nullable=True),
    Column("archived_us", BigInteger, nullable=True),
    Column("deleted_us", BigInteger, nullable=True),
    UniqueConstraint("plan_key", "version", name="uq_plan_versions_key_version"),
)
Index(
    "uq_plan_versions_one_draft",
    plan_versions.c.plan_key,
    unique=True,
    sqlite_where=(plan_versions.c.status == "draft") & plan_versions.c.deleted_us.is_(None),
    postgresql_where=(plan_versions.c.status == "draft") & plan_versions.c.deleted_us.is_(None),
)
Index(
    "uq_plan_versions_one_published",
    plan_versions.c.plan_key,
    unique=True,
    sqlite_where=plan_versions.c.status == "published",
    postgresql_where=plan_versions.c.status == "published",
)


class SqlPlanLock:
    """A write transaction holding the lock on one plan key: read and change its versions."""

    def __init__(self, conn: Connection, key: str) -> None:
        self.conn = conn
        self.key = key

    def versions(self) -> list[PlanVersionRow]:
        """Every version of the key, deleted ones too, oldest first."""
        query = select(plan_versions).where(plan_versions.c.plan_key == self.key).order_by(plan_versions.c.version)
        return [PlanVersionRow(**row._mapping) for row in self.conn.execute(query)]

    def insert(self, row: PlanVersionRow) -> None:
        if row.plan_key != self.key:
            raise ValueError(f"version of {row.plan_key!r} written under the lock of {self.key!r}")
        self.conn.execute(plan_versions.insert().values(**asdict(row)))

    def replace(self, row: PlanVersionRow) -> None:
        values = asdict(row)
        del values["id"], values["plan_key"], values["version"], values["created_us"]
        self.conn.execute(
            update(plan_versions)
            .where(plan_versions.c.id == row.id, plan_versions.c.plan_key == self.key)
            .values(**values)
        )


class SqlPlanRepository:
    """The catalog's storage on a SQL store (SQLite or PostgreSQL)."""

    def __init__(self, store: SqlStore) -> None:
        self.store = store

    @contextmanager
    def lock(self, key: str, created_us: int, create: bool = False) -> Iterator[SqlPlanLock | None]:
        """A write transaction that holds `key`'s row locked; None when the key is unknown.

        With `create`, a missing key row is inserted first (concurrent creators then wait for
        each other on that row), so the context always yields a lock.
        """
        with self.store.write() as conn:
            if create:
                conn.execute(_insert_key_ignoring_duplicate(conn, key, created_us))
            found = conn.execute(select(plans.c.key).where(plans.c.key == key).with_for_update()).first()
            yield SqlPlanLock(conn, key) if found is not None else None

    def by_id(self, version_id: str) -> PlanVersionRow | None:
        with self.store.read() as conn:
            row = conn.execute(select(plan_versions).where(plan_versions.c.id == version_id)).first()
        return PlanVersionRow(**row._mapping) if row else None

    def versions_of(self, key: str) -> list[PlanVersionRow]:
        """Every version of `key`, deleted ones too, oldest first."""
        with self.store.read() as conn:
            return SqlPlanLock(conn, key).versions()

    def search(self, query: PlanSearch) -> tuple[list[PlanVersionRow], int]:
        conditions: list[Any] = []
        if not query.include_deleted:
            conditions.append(plan_versions.c.deleted_us.is_(None))
        if query.keys:
            conditions.append(plan_versions.c.plan_key.in_(list(query.keys)))
        if query.ids:
            conditions.append(plan_versions.c.id.in_(list(query.ids)))
        if query.statuses:
            conditions.append(plan_versions.c.status.in_(list(query.statuses)))
        if query.currencies:
            conditions.append(plan_versions.c.currency.in_(list(query.currencies)))
        orderings: dict[str, Sequence[Any]] = {
            "id": [plan_versions.c.id],
            "key": [plan_versions.c.plan_key, plan_versions.c.version],
            "version": [plan_versions.c.version, plan_versions.c.id],
            "created_at": [plan_versions.c.created_us, plan_versions.c.id],
            "updated_at": [plan_versions.c.updated_us, plan_versions.c.id],
        }
        columns = orderings[query.order_by]
        ordering = [c.desc() for c in columns] if query.descending else list(columns)
        page = select(plan_versions).where(*conditions).order_by(*ordering).offset(query.offset).limit(query.limit)
        count = select(func.count()).select_from(plan_versions).where(*conditions)
        with self.store.read() as conn:
            total = int(conn.execute(count).scalar_one())
            rows = [PlanVersionRow(**row._mapping) for row in conn.execute(page)]
        return rows, total


def _insert_key_ignoring_duplicate(conn: Connection, key: str, created_us: int) -> Any:
    if conn.dialect.name == "postgresql":
        return postgresql.insert(plans).values(key=key, created_us=created_us).on_conflict_do_nothing()
    return sqlite.insert(plans).values(key=key, created_us=created_us).on_conflict_do_nothing()


__all__ = ["SqlPlanLock", "SqlPlanRepository", "plan_versions", "plans"]
