"""The events list v2: one page of events for a filter and a cursor.

The page comes from the store in the list's order; the service resolves the customers a filter
names (unknown ones are a 400, as in OpenMeter), adds why meters could not count each event (the
same `validationError` the v1 list shows), and hands out the next cursor when the page is full.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import replace

from tallybook.eventlist.model import EventListQuery, EventPage, UnknownCustomers
from tallybook.eventlist.ports import EventListStore

ValidationErrors = Callable[[Sequence[tuple[str, str]]], dict[tuple[str, str], str]]


def _no_errors(_keys: Sequence[tuple[str, str]]) -> dict[tuple[str, str], str]:
    return {}


class EventListService:
    def __init__(self, store: EventListStore, validation_errors: ValidationErrors | None = None) -> None:
        self.store = store
        self.validation_errors = validation_errors or _no_errors

    def list(self, query: EventListQuery) -> EventPage:
        customer_ids = None
        refs = query.filters.customer_ids
        if refs is not None:
            customer_ids, unknown = self.store.resolve_customers(refs)
            if unknown:
                raise UnknownCustomers(
                    f"filter.customerId.$in: no customer has the id (or key) {', '.join(repr(r) for r in unknown)}"
                )
        found = self.store.page(query, customer_ids)
        errors = self.validation_errors([item.event.key for item in found]) if found else {}
        items = tuple(replace(item, validation_error=errors.get(item.event.key)) for item in found)
        full = len(items) == query.limit
        return EventPage(items, items[-1].cursor if full and items else None)


__all__ = ["EventListService"]
