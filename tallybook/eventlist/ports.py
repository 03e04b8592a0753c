"""What the events list needs from storage."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tallybook.eventlist.model import EventListQuery, ListedEvent


class EventListStore(Protocol):
    """Stored events in the list's order, and customer attribution."""

    def resolve_customers(self, refs: Sequence[str]) -> tuple[list[str], list[str]]:
        """(ids of the live customers `refs` name by id or key, the refs that name none)."""
        ...

    def page(self, query: EventListQuery, customer_ids: Sequence[str] | None) -> list[ListedEvent]:
        """Up to `query.limit` events matching the query, after `query.after`, in the list's order
        (time desc, seq desc); with `customer_ids`, only events of those customers' subjects. Each
        carries why live meters could not count it, as far as their projection has reached."""
        ...


__all__ = ["EventListStore"]
