"""Portal tokens: read-only usage access for one customer (or one subject), stored hashed.

Like API keys, only the SHA-256 of a token is kept. A token is bound either to a customer (its
usage is every subject attributed to that customer, now and later) or to one bare subject.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from sqlalchemy import JSON, BigInteger, Column, Index, Table, Text, or_, select, update
from sqlalchemy.dialects.postgresql import JSONB

from tallybook.portal.model import PortalTokenRow
from tallybook.store.schema import metadata

if TYPE_CHECKING:
    from tallybook.store.base import SqlStore

JSON_TYPE = JSON(none_as_null=True).with_variant(JSONB(none_as_null=True), "postgresql")

portal_tokens = Table(
    "portal_tokens",
    metadata,
    Column("id", Text, primary_key=True),  # ULID
    Column("token_hash", Text, nullable=False, unique=True),  # SHA-256 hex of the whole token
    Column("prefix", Text, nullable=False),  # first characters, to recognise a token in lists
    Column("subject", Text, nullable=True),  # bound subject, or the customer's key when bound to one
    Column("customer_id", Text, nullable=True),  # bound customer (its subjects are resolved per query)
    Column("allowed_meters", JSON_TYPE, nullable=True),  # meter slugs; null: every meter
    Column("expires_us", BigInteger, nullable=False),
    Column("created_us", BigInteger, nullable=False),
    Column("invalidated_us", BigInteger, nullable=True),
)
Index("ix_portal_tokens_subject", portal_tokens.c.subject)
Index("ix_portal_tokens_created", portal_tokens.c.created_us)


def _row(mapping: Any) -> PortalTokenRow:
    allowed = mapping["allowed_meters"]
    return PortalTokenRow(
        id=mapping["id"],
        token_hash=mapping["token_hash"],
        prefix=mapping["prefix"],
        subject=mapping["subject"],
        customer_id=mapping["customer_id"],
        allowed_meters=list(allowed) if allowed is not None else None,
        expires_us=mapping["expires_us"],
        created_us=mapping["created_us"],
        invalidated_us=mapping["invalidated_us"],
    )


class PortalTokenRepository:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def insert(self, row: PortalTokenRow) -> None:
        values = {
            "id": row.id,
            "token_hash": row.token_hash,
            "prefix": row.prefix,
            "subject": row.subject,
            "customer_id": row.customer_id,
            "allowed_meters": row.allowed_meters,
            "expires_us": row.expires_us,
            "created_us": row.created_us,
            "invalidated_us": row.invalidated_us,
        }
        with self.store.write() as conn:
            conn.execute(portal_tokens.insert().values(**values))

    def by_hash(self, token_hash: str) -> PortalTokenRow | None:
        with self.store.read() as conn:
            found = conn.execute(select(portal_tokens).where(portal_tokens.c.token_hash == token_hash)).first()
        return _row(found._mapping) if found else None

    def newest(self, limit: int) -> list[PortalTokenRow]:
        query = select(portal_tokens).order_by(portal_tokens.c.created_us.desc(), portal_tokens.c.id.desc())
        with self.store.read() as conn:
            return [_row(r._mapping) for r in conn.execute(query.limit(limit))]

    def invalidate(self, at_us: int, token_id: str | None = None, subjects: Sequence[str] = ()) -> int:
        """Invalidate the token with this id and/or every live token bound to one of `subjects`."""
        conditions: list[Any] = []
        if token_id is not None:
            conditions.append(portal_tokens.c.id == token_id)
        if subjects:
            conditions.append(portal_tokens.c.subject.in_(list(subjects)))
        if not conditions:
            return 0
        statement = (
            update(portal_tokens)
            .where(or_(*conditions), portal_tokens.c.invalidated_us.is_(None))
            .values(invalidated_us=at_us)
        )
        with self.store.write() as conn:
            return int(conn.execute(statement).rowcount)

    def invalidate_customer(self, customer_id: str, at_us: int) -> int:
        statement = (
            update(portal_tokens)
            .where(portal_tokens.c.customer_id == customer_id, portal_tokens.c.invalidated_us.is_(None))
            .values(invalidated_us=at_us)
        )
        with self.store.write() as conn:
            return int(conn.execute(statement).rowcount)
