"""Property test: the store's answers equal a plain-Python reference aggregator on random events."""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

from collections import defaultdict
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.meters.extract import as_decimal, as_text
from tallybook.meters.models import Aggregation, UsageQuery
from tallybook.meters.windows import WindowSize, next_window_start, window_start, zone
from tests.conftest import empty_all_tables
from tests.test_meters_helpers import event, ingest, mclock, meter, mrt, utc  # noqa: F401  (fixtures)

BASE = utc(2026, 3, 27)  # spans the Budapest spring-forward change on 2026-03-29
SPAN_MINUTES = 5 * 24 * 60

values = st.one_of(
    st.integers(min_value=-1000, max_value=10**12 - 1),  # the metered value domain: |v| < 10^12
    st.decimals(min_value=-1000, max_value=1000, places=3, allow_nan=False, allow_infinity=False).map(str),
    st.sampled_from(["not a number", None, "MISSING"]),
)
raw_event = st.tuples(
    st.sampled_from(["s1", "s2", "s3"]),
    st.integers(min_value=0, max_value=SPAN_MINUTES - 1),
    values,
    st.sampled_from(["gpt", "claude", None]),
)
batches = st.lists(st.lists(raw_event, min_size=1, max_size=12), min_size=1, max_size=3)


def reference(
    aggregation: Aggregation,
    stored: list[dict[str, Any]],
    size: WindowSize | None,
    tz_name: str,
    by_subject: bool,
    by_model: bool,
    as_of_us: int | None,
    start_us: int | None,
    end_us: int | None,
) -> tuple[dict[tuple, Decimal], dict[tuple, tuple[datetime, datetime]]]:
    """{(window, subject, model): value} and each group's first and last counted event time.

    Without bounds every event counts. An ungrouped COUNT or UNIQUE_COUNT total over a bounded
    range without events is one row of 0 (OpenMeter's answer)."""
    tz = zone(tz_name)
    groups: dict[tuple, list[dict[str, Any]]] = defaultdict(list)
    for ev in stored:
        if as_of_us is not None and ev["ingested_us"] > as_of_us:
            continue
        if start_us is not None and to_micros(ev["time"]) < start_us:
            continue
        if end_us is not None and to_micros(ev["time"]) >= end_us:
            continue
        raw = ev["value"]
        if aggregation is Aggregation.UNIQUE_COUNT:
            usable = raw != "MISSING" and as_text(raw) is not None
        elif aggregation is Aggregation.COUNT:
            usable = True
        else:
            usable = raw != "MISSING" and as_decimal(raw) is not None
        if not usable:
            continue
        window = window_start(size, ev["time"], tz) if size else None
        key = (window, ev["subject"] if by_subject else None, ev["model"] if by_model else None)
        groups[key].append(ev)
    out = {}
    for key, evs in groups.items():
        nums = [as_decimal(e["value"]) for e in evs] if aggregation.numeric else []
        if aggregation is Aggregation.SUM:
            value = sum(nums, Decimal(0))
        elif aggregation is Aggregation.COUNT:
            value = Decimal(len(evs))
        elif aggregation is Aggregation.AVG:
            value = sum(nums, Decimal(0)) / len(nums)
        elif aggregation is Aggregation.MIN:
            value = min(nums)
        elif aggregation is Aggregation.MAX:
            value = max(nums)
        elif aggregation is Aggregation.UNIQUE_COUNT:
            value = Decimal(len({as_text(e["value"]) for e in evs}))
        else:
            ordered = sorted(evs, key=lambda e: (to_micros(e["time"]), e["order"]))
            chosen = ordered[-1] if aggregation is Aggregation.LATEST else ordered[0]
            value = as_decimal(chosen["value"])
        out[key] = value
    spans = {key: (min(e["time"] for e in evs), max(e["time"] for e in evs)) for key, evs in groups.items()}
    counts = aggregation in (Aggregation.COUNT, Aggregation.UNIQUE_COUNT)
    if not out and counts and size is None and not by_subject and not by_model and start_us is not None:
        out[(None, None, None)] = Decimal(0)
    return out, spans


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    data=batches,
    size=st.sampled_from([None, WindowSize.HOUR, WindowSize.DAY, WindowSize.WEEK]),
    tz_name=st.sampled_from(["UTC", "Europe/Budapest"]),
    by_subject=st.booleans(),
    by_model=st.booleans(),
    as_of_batch=st.one_of(st.none(), st.integers(min_value=0, max_value=2)),
    bounded=st.booleans(),
)
def test_store_matches_reference_aggregator(
    mrt, mclock, data, size, tz_name, by_subject, by_model, as_of_batch, bounded
):
    empty_all_tables(mrt)
    for aggregation in Aggregation:
        meter(
            mrt,
            aggregation.value.lower(),
            aggregation,
            value_property="$.v",
            group_by={"model": "$.model"},
        )
    stored: list[dict[str, Any]] = []
    ingested: list[int] = []
    order = 0
    for batch_no, batch in enumerate(data):
        mclock.set(utc(2026, 5, 1) + timedelta(hours=batch_no))
        ingested.append(to_micros(mclock.now()))
        events = []
        for subject, minute, value, model in batch:
            body: dict[str, Any] = {} if model is None else {"model": model}
            if value != "MISSING":
                body["v"] = value
            when = BASE + timedelta(minutes=minute)
            events.append(event(subject=subject, time=when, data=body))
            stored.append(
                {
                    "subject": subject,
                    "time": when,
                    "value": value,
                    "model": model,
                    "order": order,
                    "ingested_us": ingested[-1],
                }
            )
            order += 1
        ingest(mrt, *events)
    tz = zone(tz_name)
    if size is None:
        start, end = BASE, BASE + timedelta(minutes=SPAN_MINUTES)
    else:
        start = window_start(size, BASE, tz)
        end = window_start(size, BASE + timedelta(minutes=SPAN_MINUTES + 60 * 24 * 7), tz)
    if not bounded:  # OpenMeter's default: every event, windows and totals spanning the data
        start = end = None
    as_of = None if as_of_batch is None else utc(2026, 5, 1) + timedelta(hours=as_of_batch)
    group_by = (("subject",) if by_subject else ()) + (("model",) if by_model else ())
    for aggregation in Aggregation:
        rows = mrt.meters.query(
            UsageQuery(
                meter=aggregation.value.lower(),
                from_=start,
                to=end,
                window_size=size,
                window_time_zone=tz_name,
                group_by=group_by,
                as_of=as_of,
            )
        )
        got = {
            (
                r.window_start if size else None,
                r.subject,
                r.group_by.get("model") if by_model else None,
            ): r.value
            for r in rows
        }
        expected, spans = reference(
            aggregation,
            stored,
            size,
            tz_name,
            by_subject,
            by_model,
            None if as_of is None else to_micros(as_of),
            None if start is None else to_micros(start),
            None if end is None else to_micros(end),
        )
        assert got == expected, aggregation
        for r in rows:
            key = (r.window_start if size else None, r.subject, r.group_by.get("model") if by_model else None)
            if size is not None:
                assert r.window_end == next_window_start(size, r.window_start, tz), aggregation
            elif bounded:
                assert (r.window_start, r.window_end) == (start, end), aggregation
            else:  # the minute of the first counted event to the end of the last one's minute
                first, last = spans[key]
                assert r.window_start == first.replace(second=0, microsecond=0), aggregation
                assert r.window_end == last.replace(second=0, microsecond=0) + timedelta(minutes=1), aggregation
