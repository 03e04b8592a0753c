"""What the void service needs from the rest of Tallybook."""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager
from typing import Protocol

from sqlalchemy import Connection

from tallybook.ingest.events import Event


class EventStore(Protocol):
    """The event store (tallybook.store.base.SqlStore): transactions and the ingest insert, so an
    amend's corrected event is stored exactly as the ingest path stores events."""

    def write(self) -> AbstractContextManager[Connection]: ...

    def read(self) -> AbstractContextManager[Connection]: ...

    def insert_events(self, conn: Connection, batch: Sequence[Event], ingested_us: int) -> set[tuple[str, str]]: ...


__all__ = ["EventStore"]
