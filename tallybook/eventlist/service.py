"""The events list v2: one page of events for a filter and a cursor.

The page comes from the store in the list's order, each event with why meters could not count it
(the `validationError` the v1 list shows too). The service first brings the meters' projection up
to every committed event (`catch_up`), so that reason is there for events stored a moment ago; it
resolves the customers a filter names (unknown ones are a 400, as in OpenMeter) and hands out the
next cursor when the page is full.
"""

from __future__ import annotations

from collections.abc import Callable

from tallybook.eventlist.model import EventListQuery, EventPage, UnknownCustomers
from tallybook.eventlist.ports import EventListStore


def _nothing_to_catch_up() -> None:
    return None


class EventListService:
    def __init__(self, store: EventListStore, catch_up: Callable[[], object] | None = None) -> None:
        self.store = store
        self.catch_up = catch_up or _nothing_to_catch_up

    def list(self, query: EventListQuery) -> EventPage:
        customer_ids = None
        refs = query.filters.customer_ids
        if refs is not None:
            customer_ids, unknown = self.store.resolve_customers(refs)
            if unknown:
                named = ", ".join(repr(r) for r in unknown)
                raise UnknownCustomers(f"{query.filters.customers_parameter}: no customer has the id (or key) {named}")
        self.catch_up()
        items = tuple(self.store.page(query, customer_ids))
        full = len(items) == query.limit
        return EventPage(items, items[-1].cursor if full and items else None)


__all__ = ["EventListService"]
