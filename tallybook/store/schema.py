"""Tables, as SQLAlchemy Core objects. Alembic migrations create them; runtime code queries them.

Instants are BIGINT microseconds since the epoch (UTC) on every engine: exact, compact, cheap to
index and to bucket into windows. Event `data` is JSONB on PostgreSQL (queryable, numbers kept as
exact numerics) and JSON text on SQLite.
"""

from __future__ import annotations

from sqlalchemy import (
    JSON,
    BigInteger,
    Column,
    Index,
    Integer,
    MetaData,
    Table,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB

metadata = MetaData()

# SQLite only treats "INTEGER PRIMARY KEY" as the rowid alias (append-only, no extra index).
SEQUENCE_TYPE = BigInteger().with_variant(Integer(), "sqlite")
EVENT_DATA_TYPE = JSON().with_variant(JSONB(), "postgresql")

events = Table(
    "events",
    metadata,
    # Ingest order. Ties in event time (LATEST/FIRST) are broken by it.
    Column("seq", SEQUENCE_TYPE, primary_key=True, autoincrement=True),
    Column("source", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("type", Text, nullable=False),
    Column("subject", Text, nullable=False),
    Column("time_us", BigInteger, nullable=False),
    Column("ingested_us", BigInteger, nullable=False),
    Column("data", EVENT_DATA_TYPE, nullable=True),
    Column("datacontenttype", Text, nullable=True),
    # Set once when an operator voids the event (tallybook/voids): it stops counting from that
    # instant on; as-of queries before it still count it. Ingest never writes these columns.
    Column("voided_us", BigInteger, nullable=True),
    Column("void_id", Text, nullable=True),
    # The idempotency key: a retried event is stored once.
    UniqueConstraint("source", "event_id", name="uq_events_source_id"),
)
# Both grow at the end of the B-tree in the common case (events arrive roughly in time order), so
# they cost little at ingest; they serve the event list, newest first, and ingested-at filters.
Index("ix_events_time", events.c.time_us)
Index("ix_events_ingested", events.c.ingested_us)
# Voided events are few: a partial index finds a void's events without costing ingest an entry.
Index(
    "ix_events_void",
    events.c.void_id,
    sqlite_where=events.c.void_id.isnot(None),
    postgresql_where=events.c.void_id.isnot(None),
)

api_keys = Table(
    "api_keys",
    metadata,
    Column("id", Text, primary_key=True),
    Column("name", Text, nullable=False),
    Column("scope", Text, nullable=False),
    Column("prefix", Text, nullable=False),  # first characters of the key, to recognise it in lists
    Column("key_hash", Text, nullable=False, unique=True),  # SHA-256 hex of the whole key
    Column("created_us", BigInteger, nullable=False),
    Column("revoked_us", BigInteger, nullable=True),
)
