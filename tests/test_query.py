"""Usage queries on both engines: aggregations, windows, time zones, groupBy, filters, customers,
CSV, alignment errors, late events and asOf, and the codehooks /aggregations API."""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

import csv
import io
import itertools
import threading
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

import pytest

from tallybook.clock import to_micros
from tallybook.meters.models import InvalidQuery, UsageQuery
from tallybook.meters.service import MeterService
from tallybook.meters.sql import SqlMeterStorage
from tallybook.meters.windows import WindowSize
from tallybook.store import open_store
from tests.test_meters_helpers import (  # noqa: F401  (fixtures)
    add_customer,
    bearer,
    event,
    ingest,
    mclient,
    mclock,
    meter,
    mkeys,
    mrt,
    utc,
)

JAN = {"from_": utc(2026, 1, 1), "to": utc(2026, 2, 1)}


def values(rows):
    return [(r.window_start, r.subject, dict(r.group_by), r.value) for r in rows]


@pytest.mark.parametrize(
    ("aggregation", "expected"),
    [
        ("SUM", Decimal("10.5")),
        ("COUNT", Decimal(4)),
        ("AVG", Decimal("3.5")),
        ("MIN", Decimal("0.5")),
        ("MAX", Decimal(7)),
        ("UNIQUE_COUNT", Decimal(2)),
        ("LATEST", Decimal(3)),  # two events share the newest time: the later-ingested one wins
        ("FIRST", Decimal("0.5")),
    ],
)
def test_each_aggregation(mrt, aggregation, expected):
    value_property = "$.user" if aggregation == "UNIQUE_COUNT" else "$.tokens"
    meter(mrt, "m", aggregation, value_property=value_property)
    ingest(mrt, event(time=utc(2026, 1, 2), data={"tokens": "0.5", "user": "ann"}))
    ingest(mrt, event(time=utc(2026, 1, 9), data={"tokens": 7, "user": "bob"}))
    ingest(mrt, event(time=utc(2026, 1, 9), data={"tokens": 3, "user": "ann"}))
    # Not counted by the value aggregations: no tokens (COUNT still counts it).
    ingest(mrt, event(time=utc(2026, 1, 5), data={"user": None}))
    rows = mrt.meters.query(UsageQuery(meter="m", **JAN))
    assert [r.value for r in rows] == [expected]
    assert rows[0].window_start == utc(2026, 1, 1) and rows[0].window_end == utc(2026, 2, 1)


def test_latest_and_first_break_time_ties_by_ingest_order(mrt):
    meter(mrt, "last", "LATEST")
    meter(mrt, "first", "FIRST")
    same = utc(2026, 1, 3)
    ingest(mrt, event(time=same, data={"tokens": 1}), event(time=same, data={"tokens": 2}))
    ingest(mrt, event(time=same, data={"tokens": 3}))
    assert mrt.meters.query(UsageQuery(meter="last", **JAN))[0].value == 3
    assert mrt.meters.query(UsageQuery(meter="first", **JAN))[0].value == 1


@pytest.mark.parametrize(
    ("size", "start", "end", "expected"),
    [
        (
            WindowSize.MINUTE,
            utc(2026, 1, 5, 10),
            utc(2026, 1, 5, 10, 3),
            [(utc(2026, 1, 5, 10, 0), 2), (utc(2026, 1, 5, 10, 2), 1)],
        ),
        (WindowSize.HOUR, utc(2026, 1, 5), utc(2026, 1, 6), [(utc(2026, 1, 5, 10), 3), (utc(2026, 1, 5, 23), 1)]),
        (WindowSize.DAY, utc(2026, 1, 1), utc(2026, 2, 1), [(utc(2026, 1, 5), 4), (utc(2026, 1, 12), 1)]),
        (WindowSize.WEEK, utc(2025, 12, 29), utc(2026, 2, 2), [(utc(2026, 1, 5), 4), (utc(2026, 1, 12), 1)]),
        (WindowSize.MONTH, utc(2026, 1, 1), utc(2026, 4, 1), [(utc(2026, 1, 1), 5), (utc(2026, 3, 1), 1)]),
        (WindowSize.YEAR, utc(2025, 1, 1), utc(2027, 1, 1), [(utc(2026, 1, 1), 6)]),
    ],
)
def test_window_sizes(mrt, size, start, end, expected):
    meter(mrt, "calls", "COUNT")
    for when in (
        utc(2026, 1, 5, 10, 0, 5),
        utc(2026, 1, 5, 10, 0, 59),
        utc(2026, 1, 5, 10, 2),
        utc(2026, 1, 5, 23, 59),
        utc(2026, 1, 12),
        utc(2026, 3, 31, 23, 59, 59),
    ):
        ingest(mrt, event(time=when))
    rows = mrt.meters.query(UsageQuery(meter="calls", from_=start, to=end, window_size=size))
    assert [(r.window_start, r.value) for r in rows] == [(w, Decimal(n)) for w, n in expected]
    for row in rows:
        assert row.window_end > row.window_start


def test_day_windows_follow_local_midnight_across_budapest_dst(mrt):
    meter(mrt, "calls", "COUNT")
    ingest(
        mrt,
        event(time=utc(2026, 3, 28, 22, 30)),  # 23:30 on the 28th in Budapest (+01:00)
        event(time=utc(2026, 3, 28, 23, 30)),  # 00:30 on the 29th
        event(time=utc(2026, 3, 29, 21, 30)),  # 23:30 on the 29th (+02:00 now)
        event(time=utc(2026, 3, 29, 22, 30)),  # 00:30 on the 30th
    )
    rows = mrt.meters.query(
        UsageQuery(
            meter="calls",
            from_=utc(2026, 3, 27, 23),
            to=utc(2026, 3, 30, 22),
            window_size=WindowSize.DAY,
            window_time_zone="Europe/Budapest",
        )
    )
    assert [(r.window_start, r.window_end, r.value) for r in rows] == [
        (utc(2026, 3, 27, 23), utc(2026, 3, 28, 23), Decimal(1)),
        (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), Decimal(2)),  # the 23-hour day
        (utc(2026, 3, 29, 22), utc(2026, 3, 30, 22), Decimal(1)),
    ]


def test_new_york_fall_back_day_has_25_hours_and_hour_windows_stay_real_hours(mrt):
    meter(mrt, "calls", "COUNT")
    ingest(mrt, event(time=utc(2026, 11, 1, 5, 30)), event(time=utc(2026, 11, 1, 6, 30)))
    day = mrt.meters.query(
        UsageQuery(
            meter="calls",
            from_=utc(2026, 11, 1, 4),
            to=utc(2026, 11, 2, 5),
            window_size=WindowSize.DAY,
            window_time_zone="America/New_York",
        )
    )
    assert [(r.window_end - r.window_start, r.value) for r in day] == [(timedelta(hours=25), Decimal(2))]
    hours = mrt.meters.query(
        UsageQuery(
            meter="calls",
            from_=utc(2026, 11, 1, 4),
            to=utc(2026, 11, 2, 5),
            window_size=WindowSize.HOUR,
            window_time_zone="America/New_York",
        )
    )
    # Both happened at 01:30 local time, in the first and the repeated hour.
    assert [(r.window_start, r.value) for r in hours] == [(utc(2026, 11, 1, 5), 1), (utc(2026, 11, 1, 6), 1)]


def test_month_windows_in_a_zone(mrt):
    meter(mrt, "tokens", "SUM")
    ingest(
        mrt,
        event(time=utc(2026, 1, 31, 23, 30), data={"tokens": 1}),  # already February in Budapest
        event(time=utc(2026, 1, 31, 22, 30), data={"tokens": 2}),
    )
    rows = mrt.meters.query(
        UsageQuery(
            meter="tokens",
            from_=utc(2025, 12, 31, 23),
            to=utc(2026, 2, 28, 23),
            window_size=WindowSize.MONTH,
            window_time_zone="Europe/Budapest",
        )
    )
    assert [(r.window_start, r.value) for r in rows] == [(utc(2025, 12, 31, 23), 2), (utc(2026, 1, 31, 23), 1)]


def test_group_by_and_filters(mrt):
    meter(mrt, "tokens", "SUM", group_by={"model": "$.model", "kind": "$.kind"})
    ingest(
        mrt,
        event(subject="a", data={"tokens": 1, "model": "gpt", "kind": "in"}),
        event(subject="a", data={"tokens": 2, "model": "gpt", "kind": "out"}),
        event(subject="b", data={"tokens": 4, "model": "claude", "kind": "in"}),
        event(subject="b", data={"tokens": 8}),  # no group values
    )
    by_model = mrt.meters.query(UsageQuery(meter="tokens", group_by=("model",), **JAN))
    assert sorted((r.group_by["model"] or "-", r.value) for r in by_model) == [("-", 8), ("claude", 4), ("gpt", 3)]
    by_subject_kind = mrt.meters.query(UsageQuery(meter="tokens", group_by=("subject", "kind"), **JAN))
    assert sorted((r.subject, r.group_by["kind"] or "-", r.value) for r in by_subject_kind) == [
        ("a", "in", 1),
        ("a", "out", 2),
        ("b", "-", 8),
        ("b", "in", 4),
    ]
    only_in = mrt.meters.query(UsageQuery(meter="tokens", filter_group_by={"kind": "in"}, **JAN))
    assert [r.value for r in only_in] == [5]
    either = mrt.meters.query(UsageQuery(meter="tokens", filter_group_by={"model": ("gpt", "claude")}, **JAN))
    assert [r.value for r in either] == [7]
    subject_b = mrt.meters.query(UsageQuery(meter="tokens", subjects=("b",), **JAN))
    assert [r.value for r in subject_b] == [12]
    with pytest.raises(InvalidQuery, match="not a groupBy key"):
        mrt.meters.query(UsageQuery(meter="tokens", group_by=("colour",), **JAN))
    with pytest.raises(InvalidQuery, match="filterGroupBy"):
        mrt.meters.query(UsageQuery(meter="tokens", filter_group_by={"colour": "red"}, **JAN))


def test_customer_filter_and_group_by_count_unique_values_over_all_subjects(mrt):
    meter(mrt, "users", "UNIQUE_COUNT", value_property="$.user")
    add_customer(mrt, "01JCUSTOMERACME0000000000A", "acme", ["acme-web", "acme-app"])
    add_customer(mrt, "01JCUSTOMERGLOBEX00000000B", None, ["globex"])
    ingest(
        mrt,
        event(subject="acme-web", data={"user": "ann"}),
        event(subject="acme-app", data={"user": "ann"}),  # same user via another subject
        event(subject="acme-app", data={"user": "bob"}),
        event(subject="globex", data={"user": "ann"}),
        event(subject="stray", data={"user": "zed"}),  # not attributed to any customer
    )
    by_customer = mrt.meters.query(UsageQuery(meter="users", group_by=("customer_id",), **JAN))
    assert sorted(((r.customer_id or "-"), r.value) for r in by_customer) == [
        ("-", 1),
        ("01JCUSTOMERACME0000000000A", 2),  # the union {ann, bob}, not 1 + 2
        ("01JCUSTOMERGLOBEX00000000B", 1),
    ]
    acme = mrt.meters.query(UsageQuery(meter="users", customer_ids=("acme",), **JAN))  # by key
    assert [(r.customer_id, r.value) for r in acme] == [("01JCUSTOMERACME0000000000A", 2)]
    both = mrt.meters.query(
        UsageQuery(meter="users", customer_ids=("acme", "01JCUSTOMERGLOBEX00000000B"), group_by=("subject",), **JAN)
    )
    assert sorted((r.subject, r.value) for r in both) == [("acme-app", 2), ("acme-web", 1), ("globex", 1)]
    with pytest.raises(InvalidQuery, match="unknown customer"):
        mrt.meters.query(UsageQuery(meter="users", customer_ids=("nobody",), **JAN))


def test_late_events_change_past_figures_and_as_of_reproduces_them(mrt, mclock):
    meter(mrt, "tokens", "SUM")
    mclock.set(utc(2026, 2, 1, 0, 5))
    ingest(mrt, event(time=utc(2026, 1, 20), data={"tokens": 10}))
    billed_at = utc(2026, 2, 1, 1)
    mclock.set(utc(2026, 2, 10))
    ingest(mrt, event(time=utc(2026, 1, 31, 23, 59), data={"tokens": 5}))  # late: January usage
    now = mrt.meters.query(UsageQuery(meter="tokens", **JAN))
    assert [r.value for r in now] == [15]
    as_billed = mrt.meters.query(UsageQuery(meter="tokens", as_of=billed_at, **JAN))
    assert [r.value for r in as_billed] == [10]
    before_anything = mrt.meters.query(UsageQuery(meter="tokens", as_of=utc(2026, 1, 1), **JAN))
    assert before_anything == []


def test_windows_without_events_are_omitted_and_no_from_to_means_every_event(mrt, mclock):
    meter(mrt, "calls", "COUNT")
    # The clock says 2026-06-01: the last event is future-dated, and still counted without `to`.
    ingest(mrt, event(time=utc(2026, 1, 2, 5)), event(time=utc(2026, 1, 4, 5)), event(time=utc(2027, 3, 1)))
    result = mrt.meters.query_result(UsageQuery(meter="calls", window_size=WindowSize.DAY))
    assert result.from_ is None and result.to is None  # echoed as asked: not given
    assert [(r.window_start, r.value) for r in result.rows] == [
        (utc(2026, 1, 2), 1),
        (utc(2026, 1, 4), 1),
        (utc(2027, 3, 1), 1),
    ]
    total = mrt.meters.query_result(UsageQuery(meter="calls"))
    # The total's window spans the data: the minute of the first event to the end of the last one's.
    assert [(r.window_start, r.window_end, r.value) for r in total.rows] == [
        (utc(2026, 1, 2, 5), utc(2027, 3, 1, 0, 1), 3)
    ]


@pytest.mark.parametrize("days", [3, 63, 64, 65, 120])
def test_calendar_windows_bucket_the_same_below_and_above_the_sql_case_limit(mrt, days):
    # SQLite buckets up to 64 calendar windows with a CASE in SQL and more with a Python function
    # (meters/usage_sql.py); PostgreSQL with width_bucket. Budapest's days cross DST on 29 March.
    meter(mrt, "calls", "SUM", value_property="$.n")
    budapest = ZoneInfo("Europe/Budapest")
    first = datetime(2026, 3, 2, tzinfo=budapest)
    local_days = [first + timedelta(days=d) for d in range(days + 1)]  # wall-clock midnights
    # Each day gets n = its number at 00:30 and at 23:30 local time: the edges of its window.
    ingest(
        mrt,
        *[
            event(time=(day + timedelta(minutes=minutes)).astimezone(UTC), data={"n": d + 1})
            for d, day in enumerate(local_days[:-1])
            for minutes in (30, 23 * 60 + 30)
        ],
    )
    rows = mrt.meters.query(
        UsageQuery(
            meter="calls",
            from_=first.astimezone(UTC),
            to=local_days[-1].astimezone(UTC),
            window_size=WindowSize.DAY,
            window_time_zone="Europe/Budapest",
        )
    )
    assert [(r.window_start, r.window_end, r.value) for r in rows] == [
        (start.astimezone(UTC), end.astimezone(UTC), Decimal(2 * (d + 1)))
        for d, (start, end) in enumerate(itertools.pairwise(local_days))
    ]


def test_wide_calendar_ranges_list_only_the_windows_between_the_first_and_last_event(mrt):
    meter(mrt, "calls", "COUNT")
    ingest(mrt, event(time=utc(2026, 3, 28, 23)), event(time=utc(2026, 3, 30, 1)), event(time=utc(2026, 4, 6, 1)))
    # Two centuries of Budapest days (73,000 windows): only the events' days are listed and answered.
    days = mrt.meters.query(
        UsageQuery(
            meter="calls",
            from_=utc(1899, 12, 31, 23),
            to=utc(2099, 12, 31, 23),
            window_size=WindowSize.DAY,
            window_time_zone="Europe/Budapest",
        )
    )
    assert [(r.window_start, r.window_end, r.value) for r in days] == [
        (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22), 1),  # the 23-hour day
        (utc(2026, 3, 29, 22), utc(2026, 3, 30, 22), 1),
        (utc(2026, 4, 5, 22), utc(2026, 4, 6, 22), 1),
    ]
    # Lord Howe moves from +11:00 to +10:30 on 5 April: its hours are listed (calendar windows),
    # and only those between the first and the last event.
    hours = mrt.meters.query(
        UsageQuery(meter="calls", window_size=WindowSize.HOUR, window_time_zone="Australia/Lord_Howe")
    )
    assert [(r.window_start, r.window_end - r.window_start) for r in hours] == [
        (utc(2026, 3, 28, 23), timedelta(hours=1)),
        (utc(2026, 3, 30, 1), timedelta(hours=1)),
        (utc(2026, 4, 6, 0, 30), timedelta(hours=1)),
    ]
    # from == to, or from after to, is still refused: the range is empty by the caller's own bounds.
    with pytest.raises(InvalidQuery, match="must be before to"):
        mrt.meters.query(UsageQuery(meter="calls", from_=utc(2026, 1, 1), to=utc(2026, 1, 1)))


def test_query_api_get_post_csv_and_alignment(mrt, mclient, mkeys):
    meter(mrt, "tokens", "SUM", group_by={"model": "$.model"})
    ingest(
        mrt,
        event(subject="a", time=utc(2026, 1, 5, 10), data={"tokens": "1.5", "model": "gpt"}),
        event(subject="b", time=utc(2026, 1, 6, 10), data={"tokens": 2, "model": "gpt"}),
    )
    read = bearer(mkeys["read"])
    params = [
        ("from", "2026-01-01T00:00:00Z"),
        ("to", "2026-02-01T00:00:00Z"),
        ("windowSize", "DAY"),
        ("groupBy", "subject"),
        ("groupBy[]", "model"),
        ("filterGroupBy[model]", "gpt"),
    ]
    got = mclient.get("/api/v1/meters/tokens/query", params=params, headers=read)
    assert got.status_code == 200, got.text
    body = got.json()
    assert body["from"] == "2026-01-01T00:00:00Z" and body["windowSize"] == "DAY"
    assert body["data"] == [
        {
            "value": 1.5,
            "windowStart": "2026-01-05T00:00:00Z",
            "windowEnd": "2026-01-06T00:00:00Z",
            "subject": "a",
            "groupBy": {"model": "gpt"},
        },
        {
            "value": 2,
            "windowStart": "2026-01-06T00:00:00Z",
            "windowEnd": "2026-01-07T00:00:00Z",
            "subject": "b",
            "groupBy": {"model": "gpt"},
        },
    ]
    posted = mclient.post(
        "/api/v1/meters/tokens/query",
        json={
            "from": "2026-01-01T00:00:00Z",
            "to": "2026-02-01T00:00:00Z",
            "windowSize": "DAY",
            "groupBy": ["subject", "model"],
            "filterGroupBy": {"model": ["gpt"]},
        },
        headers=read,
    )
    assert posted.json() == body
    only_a = mclient.get("/api/v1/meters/tokens/query", params=[("subject[]", "a")], headers=read).json()
    assert [row["value"] for row in only_a["data"]] == [1.5]

    as_csv = mclient.get("/api/v1/meters/tokens/query", params=params, headers={**read, "Accept": "text/csv"})
    assert as_csv.headers["content-type"] == "text/csv"  # as OpenMeter: no charset parameter
    assert as_csv.headers["content-disposition"] == "attachment; filename=tokens.csv"
    rows = list(csv.reader(io.StringIO(as_csv.text)))
    # OpenMeter's columns: subject only because the query groups by it; no customer_id column.
    assert rows[0] == ["window_start", "window_end", "subject", "model", "value"]
    assert rows[1] == ["2026-01-05T00:00:00Z", "2026-01-06T00:00:00Z", "a", "gpt", "1.500000"]

    misaligned = mclient.get(
        "/api/v1/meters/tokens/query",
        params={"from": "2026-01-01T00:00:00Z", "to": "2026-01-31T12:00:00Z", "windowSize": "DAY"},
        headers=read,
    )
    assert misaligned.status_code == 400
    problem = misaligned.json()
    assert problem["type"].endswith("invalid-query")
    assert "not aligned to windowSize=DAY" in problem["detail"] and "local midnight" in problem["detail"]
    budapest = mclient.get(
        "/api/v1/meters/tokens/query",
        params={"from": "2026-01-01T00:00:00Z", "windowSize": "DAY", "windowTimeZone": "Europe/Budapest"},
        headers=read,
    )
    assert budapest.status_code == 400 and "2026-01-01T00:00:00+01:00" in budapest.json()["detail"]
    bad_zone = mclient.get("/api/v1/meters/tokens/query", params={"windowTimeZone": "Moon/Base"}, headers=read)
    assert bad_zone.status_code == 400 and "IANA" in bad_zone.json()["detail"]
    bad_size = mclient.get("/api/v1/meters/tokens/query", params={"windowSize": "DECADE"}, headers=read)
    assert bad_size.status_code == 400 and "MINUTE, HOUR, DAY, WEEK, MONTH, YEAR" in bad_size.json()["detail"]
    unknown = mclient.get("/api/v1/meters/nope/query", headers=read)
    assert unknown.status_code == 404


def test_as_of_over_the_api(mrt, mclient, mkeys, mclock):
    meter(mrt, "tokens", "SUM")
    mclock.set(utc(2026, 2, 1))
    ingest(mrt, event(time=utc(2026, 1, 5), data={"tokens": 1}))
    mclock.set(utc(2026, 2, 5))
    ingest(mrt, event(time=utc(2026, 1, 6), data={"tokens": 2}))
    params = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z", "asOf": "2026-02-02T00:00:00Z"}
    body = mclient.get("/api/v1/meters/tokens/query", params=params, headers=bearer(mkeys["read"])).json()
    assert [row["value"] for row in body["data"]] == [1]


def test_codehooks_aggregations_api(mrt, mclient, mkeys):
    meter(mrt, "calls", "SUM", value_property="$.value", event_type="api.calls")
    meter(mrt, "stored", "LATEST", value_property="$.value", event_type="storage")
    meter(mrt, "stored_max", "MAX", value_property="$.value", event_type="storage")
    ingest(
        mrt,
        event(type="api.calls", subject="c1", time=utc(2026, 1, 5, 10), data={"value": 2}),
        event(type="api.calls", subject="c1", time=utc(2026, 1, 11, 23), data={"value": 3}),  # Sunday
        event(type="api.calls", subject="c1", time=utc(2026, 1, 12, 1), data={"value": 4}),  # next Monday
        event(type="storage", subject="c2", time=utc(2026, 1, 6), data={"value": 9}),
        event(type="storage", subject="c2", time=utc(2026, 1, 7), data={"value": 5}),
    )
    read = bearer(mkeys["read"])
    weekly = mclient.get(
        "/aggregations",
        params={"period": "weekly", "from": "2026-01-05T00:00:00Z", "to": "2026-01-18T23:59:59Z"},
        headers=read,
    )
    assert weekly.status_code == 200, weekly.text
    assert weekly.json() == [
        {
            "customerId": "c1",
            "period": "weekly",
            "periodStart": "2026-01-05T00:00:00.000Z",
            "periodEnd": "2026-01-11T23:59:59.999Z",
            "periodKey": "2026-W02",
            "events": {"api.calls": 5},
            "eventCounts": {"api.calls": 2},
        },
        {
            "customerId": "c2",
            "period": "weekly",
            "periodStart": "2026-01-05T00:00:00.000Z",
            "periodEnd": "2026-01-11T23:59:59.999Z",
            "periodKey": "2026-W02",
            # Two meters read `storage`, so their values are keyed by slug.
            "events": {"stored": 5, "stored_max": 9},
            "eventCounts": {"stored": 2, "stored_max": 2},
        },
        {
            "customerId": "c1",
            "period": "weekly",
            "periodStart": "2026-01-12T00:00:00.000Z",
            "periodEnd": "2026-01-18T23:59:59.999Z",
            "periodKey": "2026-W03",
            "events": {"api.calls": 4},
            "eventCounts": {"api.calls": 1},
        },
    ]
    daily = mclient.get(
        "/aggregations",
        params={"period": "daily", "customerId": "c1", "from": "2026-01-05T00:00:00Z", "to": "2026-01-05T23:00:00Z"},
        headers=read,
    ).json()
    assert [(d["periodKey"], d["events"]) for d in daily] == [("2026-01-05", {"api.calls": 2})]
    bad = mclient.get("/aggregations", params={"period": "fortnightly"}, headers=read)
    assert bad.status_code == 400 and "error" in bad.json()


def test_usage_in_ranges_counts_events_stored_before_the_call_even_when_not_yet_projected(mrt, mclock):
    # Entitlements' `value` reads usage this way. Its catch-up check runs inside the query's read;
    # events written straight to the store (no ingest-time projection, the materializer not run)
    # are pending there: the call projects them first and reads again.
    meter(mrt, "calls", "SUM", value_property="$.n")
    ingest(mrt, event(time=utc(2026, 1, 2), data={"n": 1}))
    bounds = [utc(2026, 1, 1), utc(2026, 1, 3), utc(2026, 1, 5)]
    assert mrt.meters.usage_in_ranges("calls", bounds, ["cust_1"]) == [Decimal(1), Decimal(0)]
    with mrt.store.write() as conn:
        mrt.store.insert_events(
            conn,
            [
                event(id="late-1", time=utc(2026, 1, 2), data={"n": 2}),
                event(id="late-2", time=utc(2026, 1, 4), data={"n": 5}),
            ],
            ingested_us=to_micros(mclock.now()),
        )
    assert mrt.meters.usage_in_ranges("calls", bounds, ["cust_1"]) == [Decimal(3), Decimal(5)]


def test_period_usage_and_subjects_with_events_for_webhooks(mrt):
    meter(mrt, "calls", "SUM", value_property="$.value", event_type="api.calls")
    meter(mrt, "logins", "COUNT", event_type="login")
    ingest(
        mrt,
        event(type="api.calls", subject="c1", time=utc(2026, 1, 5), data={"value": "1.25"}),
        event(type="api.calls", subject="c1", time=utc(2026, 1, 6), data={"value": "bad"}),
        event(type="login", subject="c1", time=utc(2026, 1, 6)),
        event(type="login", subject="c2", time=utc(2026, 2, 6)),
        event(type="unmetered", subject="c3", time=utc(2026, 1, 6)),
    )
    usage = mrt.meters.period_usage("c1", utc(2026, 1, 1), utc(2026, 2, 1))
    assert usage.events == {"api.calls": Decimal("1.25"), "login": Decimal(1)}
    assert usage.event_counts == {"api.calls": 1, "login": 1}
    assert usage.event_count == 2
    assert mrt.meters.subjects_with_events(utc(2026, 1, 1), utc(2026, 2, 1)) == ["c1"]
    assert mrt.meters.subjects_with_events(utc(2026, 1, 1), utc(2026, 3, 1)) == ["c1", "c2"]


def test_concurrent_materializers_do_not_double_count(mrt, database_url):
    """Several server processes (here: services on their own connection pools) catch up at once."""
    meter(mrt, "tokens", "SUM")
    ingest(mrt, *[event(data={"tokens": 1}) for _ in range(3000)])
    stores = [open_store(database_url) for _ in range(3)]
    services = [MeterService(SqlMeterStorage(store), mrt.clock) for store in stores]
    errors: list[BaseException] = []

    def run(service: MeterService) -> None:
        try:
            service.catch_up()
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in services]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for store in stores:
        store.close()
    assert errors == []
    assert [r.value for r in mrt.meters.query(UsageQuery(meter="tokens", **JAN))] == [3000]


def _plans_of_usage_queries(mrt, run):
    """EXPLAIN every statement `run` sends that reads meter_usage, on the connection it uses."""
    from sqlalchemy import event as sa_event

    plans: list[str] = []
    postgres = mrt.store.dialect_name == "postgresql"

    def explain(conn, cursor, statement, parameters, context, executemany):
        if "FROM meter_usage" not in statement or not statement.lstrip().upper().startswith("SELECT"):
            return
        raw = cursor.connection
        probe = raw.cursor()
        if postgres:
            # Test tables are tiny; without this PostgreSQL would rightly scan them whole.
            probe.execute("SET LOCAL enable_seqscan = off")
            probe.execute("EXPLAIN " + statement, parameters)
        else:
            probe.execute("EXPLAIN QUERY PLAN " + statement, parameters)
        plans.append("\n".join(str(row[-1]) for row in probe.fetchall()))
        probe.close()

    sa_event.listen(mrt.store.engine, "before_cursor_execute", explain)
    try:
        run()
    finally:
        sa_event.remove(mrt.store.engine, "before_cursor_execute", explain)
    return plans


def _analyze(mrt):
    """Give the planner statistics, as autovacuum/ANALYZE would on a real database."""
    from sqlalchemy import text

    mrt.meters.catch_up()
    with mrt.store.write() as conn:
        conn.execute(text("ANALYZE meter_usage"))


def test_one_customer_query_reads_only_that_customers_rows(mrt):
    meter(mrt, "tokens", "SUM")
    add_customer(mrt, "01JCUSTOMERACME0000000000A", "acme", ["acme-web"])
    spread = [
        event(subject=f"s{i % 50}", time=utc(2026, 1, 1) + timedelta(minutes=17 * i), data={"tokens": 1})
        for i in range(5000)
    ]
    ingest(mrt, *spread, event(subject="acme-web"))
    _analyze(mrt)
    query = UsageQuery(meter="tokens", customer_ids=("acme",), window_size=WindowSize.DAY, **JAN)
    plans = _plans_of_usage_queries(mrt, lambda: mrt.meters.query(query))
    assert plans, "the query did not read meter_usage"
    aggregate_plan = plans[-1]
    if mrt.store.dialect_name == "sqlite":
        # A search on the clustered primary key by meter, subject and time range: no other rows read.
        assert "SEARCH meter_usage USING PRIMARY KEY (meter_key=? AND subject=? AND time_us>? AND time_us<?)" in (
            aggregate_plan
        ), aggregate_plan
    else:
        assert "meter_usage_pkey" in aggregate_plan or "pk_meter_usage" in aggregate_plan, aggregate_plan
        assert "subject =" in aggregate_plan and "time_us >=" in aggregate_plan, aggregate_plan


def test_all_customer_period_is_one_statement_over_the_time_index(mrt):
    meter(mrt, "tokens", "SUM")
    ingest(mrt, *[event(subject=f"s{i % 20}", data={"tokens": 1}) for i in range(200)])
    _analyze(mrt)
    query = UsageQuery(meter="tokens", group_by=("customer_id",), **JAN)
    plans = _plans_of_usage_queries(mrt, lambda: mrt.meters.query(query))
    assert len(plans) == 1  # one aggregate statement, whatever the number of customers
    if mrt.store.dialect_name == "sqlite":
        assert "ix_meter_usage_time" in plans[0], plans[0]
    else:
        assert "ix_meter_usage_time" in plans[0] or "pk_meter_usage" in plans[0], plans[0]


def test_sums_beyond_64_bits_stay_exact(mrt):
    """SQLite's integer SUM fails past 2^63; the store then adds up in Python. A value a meter counts
    is below 10^12 (tallybook/ingest/limits.py), so only ~10^7 events add up that far: the
    projection rows are written directly here instead of through ingest."""
    from tallybook.clock import to_micros
    from tallybook.meters.materializer_sql import insert_usage
    from tallybook.meters.ports import UsageRecord

    created = meter(mrt, "big", "SUM")
    big = 2**62 - 1  # each fits SQLite's integers; their sum does not
    when = to_micros(utc(2026, 1, 5))
    rows = [Decimal(big)] * 3 + [Decimal("0.5")]
    with mrt.store.write() as conn:
        insert_usage(
            conn, [UsageRecord(created.key, seq, "c", when, when, v, None, None, None) for seq, v in enumerate(rows)]
        )
    assert [r.value for r in mrt.meters.query(UsageQuery(meter="big", **JAN))] == [Decimal(3 * big) + Decimal("0.5")]
