"""The events list's service and cursor against the in-memory store (no database): walks with any
page size, while events arrive between pages, list every event once in order; cursors round-trip."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.eventlist.memory import MemoryEventList
from tallybook.eventlist.model import Cursor, EventFilters, EventListQuery, InvalidCursor, UnknownCustomers
from tallybook.eventlist.service import EventListService
from tallybook.filters.model import parse_string_filter
from tallybook.ingest.events import Event

T0 = to_micros(datetime(2026, 1, 1, tzinfo=UTC))
EVENT_TIME_MAX = to_micros(datetime(9999, 1, 1, tzinfo=UTC)) - 1


def make(event_id: str, offset: int, subject: str = "s") -> Event:
    return Event("svc", event_id, "t", subject, T0 + offset, None)


@settings(max_examples=300, deadline=None)
@given(time_us=st.integers(min_value=0, max_value=EVENT_TIME_MAX), seq=st.integers(min_value=1, max_value=2**63 - 1))
def test_a_cursor_decodes_to_what_was_encoded(time_us: int, seq: int) -> None:
    cursor = Cursor(time_us, seq)
    assert Cursor.decode(cursor.encode()) == cursor
    assert set(cursor.encode()) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")


@pytest.mark.parametrize("text", ["", "=", "MCww", "MjAyNi0wMS0wMVQwMDowMDowMFosMA", "MjAyNi0wMS0wMVQwMDowMDowMFosLTE"])
def test_cursors_it_did_not_hand_out_are_refused(text: str) -> None:
    """Empty, "0,0", "2026-01-01T00:00:00Z,0" and "…,-1"."""
    with pytest.raises(InvalidCursor):
        Cursor.decode(text)


@settings(max_examples=150, deadline=None)
@given(
    offsets=st.lists(st.integers(min_value=0, max_value=20), min_size=0, max_size=40),
    page_size=st.integers(min_value=1, max_value=7),
    arrivals=st.lists(st.integers(min_value=-5, max_value=25), max_size=30),
)
def test_a_walk_lists_every_event_once_in_order_while_events_arrive(
    offsets: list[int], page_size: int, arrivals: list[int]
) -> None:
    store = MemoryEventList()
    store.add(*(make(f"e{i}", offset) for i, offset in enumerate(offsets)))
    service = EventListService(store)
    listed: list[Cursor] = []
    pending = list(arrivals)
    after = None
    while True:
        page = service.list(EventListQuery(after=after, limit=page_size))
        listed.extend(item.cursor for item in page.items)
        assert len(page.items) <= page_size
        if page.next_cursor is None:
            assert len(page.items) < page_size
            break
        assert page.next_cursor == page.items[-1].cursor
        after = page.next_cursor
        if pending:  # an event arrives between two pages, anywhere in time
            store.add(make(f"new{len(pending)}", pending.pop()))
    assert listed == sorted(listed, reverse=True), "out of order, or listed twice"
    originals = {Cursor(T0 + offset, i + 1) for i, offset in enumerate(offsets)}
    assert originals <= set(listed), "an event stored before the walk was missed"


def test_customers_and_catch_up() -> None:
    store = MemoryEventList(customers={"01CUST": ("acme", frozenset({"a1"}))})
    store.add(make("x", 1, "a1"), make("y", 2, "acme"), make("z", 3, "other"))
    caught_up: list[int] = []
    service = EventListService(store, catch_up=lambda: caught_up.append(1))
    by_key = service.list(EventListQuery(filters=EventFilters(customer_ids=("acme",))))
    assert [item.event.id for item in by_key.items] == ["y", "x"]
    assert {item.customer_id for item in by_key.items} == {"01CUST"}
    assert caught_up == [1]
    with pytest.raises(UnknownCustomers, match="no customer has the id \\(or key\\) 'nobody'"):
        service.list(EventListQuery(filters=EventFilters(customer_ids=("acme", "nobody"))))
    subject = parse_string_filter({"$ne": "other"}, "filter.subject", 1)
    assert [i.event.id for i in service.list(EventListQuery(filters=EventFilters(subject=subject))).items] == [
        "y",
        "x",
    ]
