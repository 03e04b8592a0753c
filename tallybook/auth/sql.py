"""API keys in SQL (the `api_keys` table of store/schema.py), on SQLite and PostgreSQL."""

from __future__ import annotations

import builtins
from typing import Any

from sqlalchemy import func, select, update

from tallybook.auth.model import ApiKeyRecord
from tallybook.store.base import SqlStore
from tallybook.store.schema import api_keys


class SqlApiKeyStorage:
    def __init__(self, store: SqlStore) -> None:
        self.store = store

    def add(self, record: ApiKeyRecord) -> None:
        with self.store.write() as conn:
            conn.execute(api_keys.insert().values(**_key_row(record)))

    def by_hash(self, key_hash: str) -> ApiKeyRecord | None:
        with self.store.read() as conn:
            row = conn.execute(select(api_keys).where(api_keys.c.key_hash == key_hash)).first()
        return ApiKeyRecord(**row._mapping) if row else None

    def list(self) -> builtins.list[ApiKeyRecord]:
        with self.store.read() as conn:
            rows = conn.execute(select(api_keys).order_by(api_keys.c.created_us, api_keys.c.id))
            return [ApiKeyRecord(**row._mapping) for row in rows]

    def revoke(self, key_id: str, revoked_us: int) -> bool:
        with self.store.write() as conn:
            result = conn.execute(
                update(api_keys)
                .where(api_keys.c.id == key_id, api_keys.c.revoked_us.is_(None))
                .values(revoked_us=revoked_us)
            )
            return result.rowcount > 0

    def count_active_admins(self) -> int:
        with self.store.read() as conn:
            query = (
                select(func.count())
                .select_from(api_keys)
                .where(api_keys.c.scope == "admin", api_keys.c.revoked_us.is_(None))
            )
            return int(conn.execute(query).scalar_one())


def _key_row(record: ApiKeyRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "name": record.name,
        "scope": record.scope,
        "prefix": record.prefix,
        "key_hash": record.key_hash,
        "created_us": record.created_us,
        "revoked_us": record.revoked_us,
    }


__all__ = ["SqlApiKeyStorage"]
