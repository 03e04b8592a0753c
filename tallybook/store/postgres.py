"""PostgreSQL, for when one machine is not enough: several Tallybook processes share it."""

from __future__ import annotations

from sqlalchemy import create_engine
from sqlalchemy.dialects.postgresql import insert
from sqlalchemy.sql import Insert

from tallybook import jsonutil
from tallybook.store.base import SqlStore
from tallybook.store.schema import events


class PostgresStore(SqlStore):
    dialect_name = "postgresql"

    def __init__(self, url: str) -> None:
        engine = create_engine(
            url,
            json_serializer=jsonutil.dumps,
            json_deserializer=jsonutil.loads,
            pool_size=8,
            max_overflow=8,
            pool_pre_ping=True,
        )
        super().__init__(engine)

    def _insert_ignoring_duplicates(self) -> Insert:
        return insert(events).on_conflict_do_nothing(index_elements=["source", "event_id"])
