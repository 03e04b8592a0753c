"""What the catalog service needs from storage and from the meters, as Protocols.

A plan key's versions change together: a writer holds the key's lock (`PlanRepository.lock`) for
the whole of one change and reads and writes the versions through it (`PlanLock`), so two
concurrent "new version" or "publish" requests cannot both succeed. `catalog_sql.SqlPlanRepository`
is the adapter on SQLite and PostgreSQL. A stored version is a `PlanVersionRow`: its columns, with
the pricing as one canonical document (`catalog_documents`).
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from dataclasses import dataclass
from typing import Any, Protocol

from tallybook.meters.models import Meter


@dataclass(frozen=True, slots=True)
class PlanVersionRow:
    id: str
    plan_key: str
    version: int
    name: str
    description: str | None
    metadata: dict[str, Any] | None
    currency: str
    billing_cadence: str  # ISO 8601 duration, e.g. P1M
    status: str  # draft | published | archived
    document: dict[str, Any]  # rate cards and invoice commitments (catalog_documents.plan_document)
    created_us: int
    updated_us: int
    published_us: int | None
    archived_us: int | None
    deleted_us: int | None


@dataclass(frozen=True, slots=True)
class PlanSearch:
    keys: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    currencies: tuple[str, ...] = ()
    include_deleted: bool = False
    order_by: str = "id"  # id | key | version | created_at | updated_at
    descending: bool = False
    offset: int = 0
    limit: int = 100


class PlanLock(Protocol):
    """A write transaction holding the lock on one plan key: read and change its versions."""

    def versions(self) -> list[PlanVersionRow]:
        """Every version of the key, deleted ones too, oldest first."""
        ...

    def insert(self, row: PlanVersionRow) -> None:
        """Add a version of the locked key."""
        ...

    def replace(self, row: PlanVersionRow) -> None:
        """Overwrite a version's changeable columns (not its id, key, number or creation time)."""
        ...


class PlanRepository(Protocol):
    def lock(self, key: str, created_us: int, create: bool = False) -> AbstractContextManager[PlanLock | None]:
        """A write transaction that holds `key` locked; None when the key is unknown.

        With `create`, a missing key is added first (concurrent creators then wait for each other),
        so the context always yields a lock.
        """
        ...

    def by_id(self, version_id: str) -> PlanVersionRow | None: ...

    def versions_of(self, key: str) -> list[PlanVersionRow]:
        """Every version of `key`, deleted ones too, oldest first."""
        ...

    def search(self, query: PlanSearch) -> tuple[list[PlanVersionRow], int]:
        """One page of the versions the query selects, and how many it selects in all."""
        ...


class MeterLookup(Protocol):
    """The meters a usage rate card may price (`meters.service.MeterService` provides it)."""

    def get(self, id_or_slug: str) -> Meter:
        """The meter, by id or slug; `tallybook.meters.models.MeterNotFound` when there is none."""
        ...


__all__ = ["MeterLookup", "PlanLock", "PlanRepository", "PlanSearch", "PlanVersionRow"]
