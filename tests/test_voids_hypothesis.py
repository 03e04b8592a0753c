"""Property test: after any mix of ingests and voids (by key or by filter, before or after the
materializer projected the events), every meter query, with or without `asOf`, equals the plain
reference aggregator over the events that count: ingested at or before the instant and not voided
at or before it. On SQLite and PostgreSQL."""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

import os
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from tallybook.clock import to_micros
from tallybook.meters.models import Aggregation, UsageQuery
from tallybook.meters.windows import WindowSize
from tallybook.voids.model import Actor, EventKey, VoidFilter, VoidRequest
from tests.conftest import empty_all_tables
from tests.test_meters_helpers import event, ingest, mclock, meter, mrt, utc  # noqa: F401  (fixtures)
from tests.test_query_hypothesis import BASE, SPAN_MINUTES, raw_event, reference

STEP = timedelta(hours=1)
T0 = utc(2026, 5, 1)

void_by_keys = st.tuples(st.just("keys"), st.lists(st.integers(min_value=0, max_value=40), min_size=1, max_size=5))
void_by_filter = st.tuples(
    st.just("filter"),
    st.tuples(
        st.sampled_from(["s1", "s2", "s3"]),
        st.integers(min_value=0, max_value=SPAN_MINUTES - 1),
        st.integers(min_value=1, max_value=SPAN_MINUTES),
    ),
)
steps = st.lists(
    st.one_of(
        st.tuples(st.just("ingest"), st.lists(raw_event, min_size=1, max_size=8)),
        void_by_keys,
        void_by_filter,
    ),
    min_size=1,
    max_size=6,
)


# PostgreSQL runs the same property with fewer generated examples (both explicit examples always run
# on both engines); raise either for a longer search, e.g. VOIDS_EXAMPLES=200 VOIDS_POSTGRES_EXAMPLES=200.
EXAMPLES = int(os.environ.get("VOIDS_EXAMPLES", "20"))
POSTGRES_EXAMPLES = int(os.environ.get("VOIDS_POSTGRES_EXAMPLES", "5"))


def voids_property(max_examples: int) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def decorate(test: Callable[..., None]) -> Callable[..., None]:
        # Both void paths, always: events voided before the materializer reached them, and after.
        test = example(
            plan=[("ingest", [("s1", 0, 7, "gpt"), ("s2", 5, 3, None)]), ("keys", [0])],
            project_first=[False] * 6,
            size=None,
            by_subject=True,
            as_of_step=None,
        )(test)
        test = example(
            plan=[
                ("ingest", [("s1", 0, 7, "gpt"), ("s1", 5, 3, None)]),
                ("filter", ("s1", 0, 60)),
                ("ingest", [("s1", 9, 1, None)]),
            ],
            project_first=[True] * 6,
            size=WindowSize.DAY,
            by_subject=False,
            as_of_step=1,
        )(test)
        test = given(
            plan=steps,
            project_first=st.lists(st.booleans(), min_size=6, max_size=6),
            size=st.sampled_from([None, WindowSize.DAY]),
            by_subject=st.booleans(),
            as_of_step=st.one_of(st.none(), st.integers(min_value=0, max_value=6)),
        )(test)
        return settings(
            max_examples=max_examples,
            deadline=None,
            suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
        )(test)

    return decorate


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@voids_property(EXAMPLES)
def test_voids_match_the_reference(mrt, mclock, plan, project_first, size, by_subject, as_of_step):
    check_voids(mrt, mclock, plan, project_first, size, by_subject, as_of_step)


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
@voids_property(POSTGRES_EXAMPLES)
def test_voids_match_the_reference_on_postgres(mrt, mclock, plan, project_first, size, by_subject, as_of_step):
    check_voids(mrt, mclock, plan, project_first, size, by_subject, as_of_step)


def check_voids(mrt, mclock, plan, project_first, size, by_subject, as_of_step):
    empty_all_tables(mrt)
    for aggregation in Aggregation:
        meter(mrt, aggregation.value.lower(), aggregation, value_property="$.v", group_by={"model": "$.model"})
    stored: list[dict[str, Any]] = []
    for number, (kind, arg) in enumerate(plan):
        mclock.set(T0 + number * STEP)
        now_us = to_micros(mclock.now())
        if kind == "ingest":
            events = []
            for subject, minute, value, model in arg:
                body: dict[str, Any] = {} if model is None else {"model": model}
                if value != "MISSING":
                    body["v"] = value
                when = BASE + timedelta(minutes=minute)
                ev = event(subject=subject, time=when, data=body)
                events.append(ev)
                stored.append(
                    {
                        "key": EventKey(ev.source, ev.id),
                        "subject": subject,
                        "time": when,
                        "value": value,
                        "model": model,
                        "order": len(stored),
                        "ingested_us": now_us,
                        "voided_us": None,
                    }
                )
            ingest(mrt, *events)
            continue
        if project_first[number % len(project_first)]:
            mrt.meters.catch_up()  # else the void lands before the materializer reaches the events
        live = [e for e in stored if e["voided_us"] is None]
        if kind == "keys":
            chosen = list({id(live[i % len(live)]): live[i % len(live)] for i in arg}.values()) if live else []
            if not chosen:
                continue
            request = VoidRequest("test", Actor("cli"), events=tuple(e["key"] for e in chosen))
        else:
            subject, first, length = arg
            start, end = BASE + timedelta(minutes=first), BASE + timedelta(minutes=first + length)
            chosen = [e for e in live if e["subject"] == subject and start <= e["time"] < end]
            if not chosen:
                continue
            request = VoidRequest(
                "test", Actor("cli"), filter=VoidFilter(subject=subject, time_from=start, time_to=end)
            )
        record = mrt.voids.void(request)
        assert record.event_count == len(chosen)
        for e in chosen:
            e["voided_us"] = now_us

    as_of = None if as_of_step is None else T0 + as_of_step * STEP
    as_of_us = None if as_of is None else to_micros(as_of)
    counting = [e for e in stored if e["voided_us"] is None or (as_of_us is not None and e["voided_us"] > as_of_us)]
    start, end = (BASE, BASE + timedelta(minutes=SPAN_MINUTES)) if size is None else (utc(2026, 3, 27), utc(2026, 4, 2))
    for aggregation in Aggregation:
        rows = mrt.meters.query(
            UsageQuery(
                meter=aggregation.value.lower(),
                from_=start,
                to=end,
                window_size=size,
                group_by=("subject",) if by_subject else (),
                as_of=as_of,
            )
        )
        got = {(r.window_start if size else None, r.subject, None): r.value for r in rows}
        expected, _ = reference(
            aggregation, counting, size, "UTC", by_subject, False, as_of_us, to_micros(start), to_micros(end)
        )
        assert got == expected, aggregation
