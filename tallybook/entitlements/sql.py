"""The entitlement repository's SQL adapter (both engines): features, entitlements, grants, resets.

Tables and row mapping live in `tables.py` (re-exported here: `entitlements`, `entitlement_grants`,
`_entitlement_row` and `_grant_row` are what benchmarks/entitlements.py imports from this module).
Nothing here is ever deleted: features are archived, entitlements ended, grants voided; resets are
appended.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    bindparam,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.exc import IntegrityError

from tallybook.clock import to_micros
from tallybook.customers.sql import customers
from tallybook.entitlements.model import (
    Entitlement,
    EntitlementConflict,
    Feature,
    FeatureConflict,
    Grant,
    Reset,
)
from tallybook.entitlements.tables import (
    entitlement_from_row,
    entitlement_grants,
    entitlement_resets,
    entitlement_row,
    entitlements,
    feature_from_row,
    feature_row,
    features,
    grant_from_row,
    grant_row,
    reset_from_row,
    us_or_none,
)
from tallybook.ids import looks_like_ulid
from tallybook.store.base import SqlStore

# The names benchmarks/entitlements.py reads from this module.
_entitlement_row = entitlement_row
_grant_row = grant_row


# The ledger's statements, built once: `value` and `access` run them on every call.
_LIVE_ENTITLEMENTS = (
    select(entitlements)
    .where(entitlements.c.customer_id == bindparam("customer_id"), entitlements.c.deleted_us.is_(None))
    .order_by(entitlements.c.created_us)
)
_LIVE_FEATURE_ENTITLEMENTS = _LIVE_ENTITLEMENTS.where(entitlements.c.feature_key == bindparam("feature_key"))
_LIVE_GRANTS = select(entitlement_grants).where(
    entitlement_grants.c.entitlement_id.in_(bindparam("ids", expanding=True)), entitlement_grants.c.deleted_us.is_(None)
)
_RESETS = (
    select(entitlement_resets)
    .where(entitlement_resets.c.entitlement_id.in_(bindparam("ids", expanding=True)))
    .order_by(entitlement_resets.c.at_us)
)


class SqlEntitlementRepository:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    # -- features -------------------------------------------------------------------------------------
    def insert_feature(self, feature: Feature) -> None:
        try:
            with self.store.write() as conn:
                conn.execute(insert(features).values(**feature_row(feature)))
        except IntegrityError:
            raise FeatureConflict(
                f"a feature with key {feature.key!r} already exists; archive it first or pick another key"
            ) from None

    def feature(self, id_or_key: str) -> Feature | None:
        with self.store.read() as conn:
            return _find_feature(conn, id_or_key)

    def features(self, meter_slug: str | None = None, include_archived: bool = False) -> list[Feature]:
        query = select(features).order_by(features.c.created_us, features.c.id)
        if meter_slug is not None:
            query = query.where(features.c.meter_slug == meter_slug)
        if not include_archived:
            query = query.where(features.c.archived_us.is_(None))
        with self.store.read() as conn:
            return [feature_from_row(r) for r in conn.execute(query)]

    def archive_feature(self, feature_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(features)
                .where(features.c.id == feature_id, features.c.archived_us.is_(None))
                .values(archived_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- entitlements ---------------------------------------------------------------------------------
    def insert_entitlement(self, entitlement: Entitlement, grants: Sequence[Grant], replaces: str | None) -> None:
        with self.store.write() as conn:
            if replaces is not None:
                at = to_micros(entitlement.created_at)
                conn.execute(
                    update(entitlements)
                    .where(entitlements.c.id == replaces, entitlements.c.deleted_us.is_(None))
                    .values(deleted_us=at, updated_us=at)
                )
            # At most one entitlement of a customer to a feature is active at any instant; checked
            # in the write transaction (SQLite's is serial; on PostgreSQL the lock on the customer's
            # row serialises concurrent creates for one customer).
            conn.execute(select(customers.c.id).where(customers.c.id == entitlement.customer_id).with_for_update())
            live = conn.execute(
                select(entitlements)
                .where(
                    entitlements.c.customer_id == entitlement.customer_id,
                    entitlements.c.feature_key == entitlement.feature_key,
                    entitlements.c.deleted_us.is_(None),
                )
                .with_for_update()
            ).all()
            for row in live:
                other = entitlement_from_row(row)
                if _overlap(other, entitlement):
                    raise EntitlementConflict(
                        f"the customer already has an entitlement to feature {entitlement.feature_key!r} "
                        f"({other.id}) in that time; delete it first, or replace it with "
                        "PUT .../entitlements/{feature}/override",
                        entitlementId=other.id,
                    )
            conn.execute(insert(entitlements).values(**entitlement_row(entitlement)))
            for grant in grants:
                conn.execute(insert(entitlement_grants).values(**grant_row(grant)))

    def entitlement(self, entitlement_id: str) -> Entitlement | None:
        if not looks_like_ulid(entitlement_id):
            return None
        with self.store.read() as conn:
            row = conn.execute(select(entitlements).where(entitlements.c.id == entitlement_id.upper())).first()
        return None if row is None else entitlement_from_row(row)

    def entitlements(
        self,
        customer_ids: Sequence[str] | None = None,
        feature_keys: Sequence[str] | None = None,
        include_deleted: bool = False,
    ) -> list[Entitlement]:
        query = select(entitlements).order_by(entitlements.c.created_us, entitlements.c.id)
        if customer_ids is not None:
            query = query.where(entitlements.c.customer_id.in_(list(customer_ids)))
        if feature_keys is not None:
            query = query.where(entitlements.c.feature_key.in_(list(feature_keys)))
        if not include_deleted:
            query = query.where(entitlements.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [entitlement_from_row(r) for r in conn.execute(query)]

    def ledger(self, customer_id: str, feature_key: str | None) -> tuple[list[Entitlement], list[Grant], list[Reset]]:
        """In one read: the customer's live entitlements (to one feature, or all), their grants and
        resets (what `value` and `access` need besides usage and the features)."""
        with self.store.read() as conn:
            if feature_key is None:
                rows = conn.execute(_LIVE_ENTITLEMENTS, {"customer_id": customer_id})
            else:
                wanted = {"customer_id": customer_id, "feature_key": feature_key}
                rows = conn.execute(_LIVE_FEATURE_ENTITLEMENTS, wanted)
            found = [entitlement_from_row(r) for r in rows]
            metered = [e.id for e in found if e.type == "metered"]
            if not metered:
                return found, [], []
            grants = [grant_from_row(r) for r in conn.execute(_LIVE_GRANTS, {"ids": metered})]
            resets = [reset_from_row(r) for r in conn.execute(_RESETS, {"ids": metered})]
        return found, grants, resets

    def set_active_to(self, entitlement_id: str, active_to: datetime | None, at: datetime) -> None:
        with self.store.write() as conn:
            conn.execute(
                update(entitlements)
                .where(entitlements.c.id == entitlement_id)
                .values(active_to_us=us_or_none(active_to), updated_us=to_micros(at))
            )

    def end_entitlement(self, entitlement_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(entitlements)
                .where(entitlements.c.id == entitlement_id, entitlements.c.deleted_us.is_(None))
                .values(deleted_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- grants ---------------------------------------------------------------------------------------
    def insert_grant(self, grant: Grant) -> None:
        with self.store.write() as conn:
            conn.execute(insert(entitlement_grants).values(**grant_row(grant)))

    def grant(self, grant_id: str) -> Grant | None:
        if not looks_like_ulid(grant_id):
            return None
        with self.store.read() as conn:
            row = conn.execute(select(entitlement_grants).where(entitlement_grants.c.id == grant_id.upper())).first()
        return None if row is None else grant_from_row(row)

    def grants(self, entitlement_ids: Sequence[str], include_deleted: bool = False) -> list[Grant]:
        if not entitlement_ids:
            return []
        query = (
            select(entitlement_grants)
            .where(entitlement_grants.c.entitlement_id.in_(list(entitlement_ids)))
            .order_by(entitlement_grants.c.created_us, entitlement_grants.c.id)
        )
        if not include_deleted:
            query = query.where(entitlement_grants.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [grant_from_row(r) for r in conn.execute(query)]

    def all_grants(self, include_deleted: bool = False) -> list[Grant]:
        query = select(entitlement_grants).order_by(entitlement_grants.c.created_us, entitlement_grants.c.id)
        if not include_deleted:
            query = query.where(entitlement_grants.c.deleted_us.is_(None))
        with self.store.read() as conn:
            return [grant_from_row(r) for r in conn.execute(query)]

    def void_grant(self, grant_id: str, at: datetime) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(entitlement_grants)
                .where(entitlement_grants.c.id == grant_id, entitlement_grants.c.voided_us.is_(None))
                .values(voided_us=to_micros(at), updated_us=to_micros(at))
            )
        return bool(result.rowcount)

    # -- resets ---------------------------------------------------------------------------------------
    def insert_reset(self, reset: Reset) -> None:
        with self.store.write() as conn:
            conn.execute(
                insert(entitlement_resets).values(
                    id=reset.id,
                    entitlement_id=reset.entitlement_id,
                    at_us=to_micros(reset.at),
                    retain_anchor=reset.retain_anchor,
                    preserve_overage=reset.preserve_overage,
                    created_us=to_micros(reset.created_at),
                )
            )

    def resets(self, entitlement_ids: Sequence[str]) -> list[Reset]:
        if not entitlement_ids:
            return []
        query = (
            select(entitlement_resets)
            .where(entitlement_resets.c.entitlement_id.in_(list(entitlement_ids)))
            .order_by(entitlement_resets.c.at_us)
        )
        with self.store.read() as conn:
            return [reset_from_row(r) for r in conn.execute(query)]


def _overlap(a: Entitlement, b: Entitlement) -> bool:
    a_end, b_end = a.ends_at, b.ends_at
    return (a_end is None or b.active_from < a_end) and (b_end is None or a.active_from < b_end)


def _find_feature(conn: Connection, id_or_key: str) -> Feature | None:
    conditions: list[Any] = [features.c.key == id_or_key]
    if looks_like_ulid(id_or_key):
        conditions.append(features.c.id == id_or_key.upper())
    rows = conn.execute(select(features).where(or_(*conditions))).all()
    by_id = [r for r in rows if r.id == id_or_key.upper()]
    if by_id:
        return feature_from_row(by_id[0])
    live = [r for r in rows if r.archived_us is None]
    return feature_from_row(live[0]) if live else None
