"""An in-memory EventListStore for unit tests: the list's meaning in a few lines of Python."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from tallybook.eventlist.model import EventListQuery, ListedEvent
from tallybook.ingest.events import Event


@dataclass
class MemoryEventList:
    """Events in storage order (seq = position + 1); customers as {id: (key, subjects)}."""

    events: list[Event] = field(default_factory=list)
    voided: dict[tuple[str, str], tuple[int, str]] = field(default_factory=dict)
    customers: dict[str, tuple[str | None, frozenset[str]]] = field(default_factory=dict)
    errors: dict[tuple[str, str], str] = field(default_factory=dict)  # validationError by event key

    def add(self, *new: Event) -> None:
        known = {e.key for e in self.events}
        self.events.extend(e for e in new if e.key not in known)

    def resolve_customers(self, refs: Sequence[str]) -> tuple[list[str], list[str]]:
        ids: dict[str, None] = {}
        unknown = []
        for ref in refs:
            match = [cid for cid, (key, _) in self.customers.items() if ref in (cid, key)]
            if match:
                ids.update(dict.fromkeys(match))
            else:
                unknown.append(ref)
        return list(ids), unknown

    def _owner(self, subject: str) -> str | None:
        for cid, (key, subjects) in self.customers.items():
            if subject in subjects or subject == key:
                return cid
        return None

    def page(self, query: EventListQuery, customer_ids: Sequence[str] | None) -> list[ListedEvent]:
        flt = query.filters
        found = []
        for position, event in enumerate(self.events):
            voided_us, void_id = self.voided.get(event.key, (None, None))
            owner = self._owner(event.subject)
            item = ListedEvent(event, position + 1, owner, voided_us, void_id, self.errors.get(event.key))
            checks = (
                (flt.id, event.id),
                (flt.source, event.source),
                (flt.subject, event.subject),
                (flt.type, event.type),
            )
            if any(f is not None and not f.matches(value) for f, value in checks):
                continue
            if flt.time is not None and not flt.time.matches(event.time_us):
                continue
            if flt.ingested_at is not None and not flt.ingested_at.matches(event.ingested_us):
                continue
            if customer_ids is not None and item.customer_id not in customer_ids:
                continue
            if not query.include_voided and item.voided_us is not None:
                continue
            if query.after is not None and not item.cursor < query.after:
                continue
            found.append(item)
        found.sort(key=lambda item: item.cursor, reverse=True)
        return found[: query.limit]


__all__ = ["MemoryEventList"]
