"""Unbilled usage: the report's reasoning on in-memory sources (reasons, customer time-zone months,
spans aggregated whole, voids and asOf), then the API, the CLI and the `billing.unbilled_usage`
webhook on SQLite and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import datetime
from decimal import Decimal
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tallybook.unbilled.memory import MemoryEvent, MemorySources
from tallybook.unbilled.model import Coverage, Customer, InvalidUnbilledQuery, UnbilledQuery
from tallybook.unbilled.service import UnbilledNotifications, UnbilledService, month_spans, report_json
from tallybook.webhooks.service import ChannelInput
from tests.billing_helpers import build, client_for, create_customer, create_plan, ok, outbox, send, subscribe, utc

D = Decimal


def event(meter: str, subject: str, when: datetime, value: int, voided: datetime | None = None) -> MemoryEvent:
    return MemoryEvent(meter, subject, when, D(value), ingested=when, voided=voided)


@pytest.fixture
def sources() -> MemorySources:
    """calls (SUM) is priced by plan pro; peak (MAX) is not. acme (New York) is subscribed from
    15 January; bolt (UTC) never; `ghost` belongs to no customer."""
    return MemorySources(
        aggregations={"calls": "SUM", "peak": "MAX"},
        events=[
            event("calls", "ghost", utc(2026, 1, 10), 5),
            event("calls", "ghost", utc(2026, 2, 3), 7),
            event("calls", "acme", utc(2026, 1, 1, 3), 1),  # 31 December in New York
            event("calls", "acme", utc(2026, 1, 10), 3),
            event("calls", "acme", utc(2026, 1, 20), 50),  # covered and priced: billed
            event("peak", "acme", utc(2026, 1, 20), 4),
            event("peak", "acme", utc(2026, 1, 25), 9),
            event("peak", "acme", utc(2026, 2, 2), 6),
            event("calls", "bolt", utc(2026, 2, 10), 2),
            event("calls", "bolt", utc(2026, 2, 11), 100, voided=utc(2026, 2, 12)),
        ],
        customer_of={"acme": "c-acme", "bolt": "c-bolt"},
        customer_rows={
            "c-acme": Customer("c-acme", "acme", "Acme", "America/New_York"),
            "c-bolt": Customer("c-bolt", "bolt", "Bolt", "UTC"),
        },
        subscriptions={"c-acme": [Coverage("s1", "pro v1", utc(2026, 1, 15), None, frozenset({"calls"}))]},
    )


def rows_of(sources: MemorySources, **query: Any) -> list[tuple[str, str, str, str, str, str]]:
    clock = FixedClock(utc(2026, 3, 5))
    q = UnbilledQuery(query.pop("from_", utc(2026, 1, 1)), query.pop("to", utc(2026, 3, 1)), **query)
    report = UnbilledService(sources, sources, clock).report(q)
    return [
        (
            r["reason"],
            r.get("subject") or r["customer"]["key"],
            r["meter"],
            r["period"]["from"],
            r["period"]["to"],
            r["quantity"],
        )
        for r in report_json(report)["items"]
    ]


def test_each_reason_with_spans_in_the_customers_months(sources: MemorySources) -> None:
    assert rows_of(sources) == [
        # The plan covering acme from 15 January prices calls, not peak: peak is unbilled per New
        # York month, and its figure is the MAX over the whole span (9), not a sum of windows.
        ("meter_not_priced", "acme", "peak", "2026-01-15T00:00:00Z", "2026-02-01T05:00:00Z", "9"),
        ("meter_not_priced", "acme", "peak", "2026-02-01T05:00:00Z", "2026-03-01T00:00:00Z", "6"),
        # Before the subscription: December (New York) clipped to the range, then January to the 15th.
        ("no_subscription", "acme", "calls", "2026-01-01T00:00:00Z", "2026-01-01T05:00:00Z", "1"),
        ("no_subscription", "acme", "calls", "2026-01-01T05:00:00Z", "2026-01-15T00:00:00Z", "3"),
        # bolt's voided event does not count.
        ("no_subscription", "bolt", "calls", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2"),
        ("subject_without_customer", "ghost", "calls", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "5"),
        ("subject_without_customer", "ghost", "calls", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "7"),
    ]


def test_filters_and_as_of(sources: MemorySources) -> None:
    only = rows_of(sources, reasons=("no_subscription",), meters=("calls",), from_=utc(2026, 2, 1))
    assert only == [("no_subscription", "bolt", "calls", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "2")]
    # As of 11 February noon the voided event still counted (it was voided on the 12th).
    before_void = rows_of(sources, reasons=("no_subscription",), from_=utc(2026, 2, 1), as_of=utc(2026, 2, 11, 12))
    assert before_void == [("no_subscription", "bolt", "calls", "2026-02-01T00:00:00Z", "2026-03-01T00:00:00Z", "102")]
    # Events ingested after asOf do not count at all.
    assert rows_of(sources, from_=utc(2026, 2, 1), as_of=utc(2026, 2, 1)) == []


def test_a_query_says_what_to_fix() -> None:
    with pytest.raises(InvalidUnbilledQuery) as raised:
        UnbilledQuery(utc(2026, 3, 1), utc(2026, 1, 1), reasons=("typo",)).check()
    assert "from must be before to" in raised.value.detail and "reason: must be one of" in raised.value.detail
    with pytest.raises(InvalidUnbilledQuery, match="at most 366 days"):
        UnbilledQuery(utc(2024, 1, 1), utc(2026, 1, 1)).check()


def test_months_are_cut_in_the_zone() -> None:
    spans = month_spans(utc(2026, 1, 20), utc(2026, 3, 2), "Asia/Tokyo")
    assert [(s.start.isoformat(), s.end.isoformat()) for s in spans] == [
        ("2026-01-20T00:00:00+00:00", "2026-01-31T15:00:00+00:00"),
        ("2026-01-31T15:00:00+00:00", "2026-02-28T15:00:00+00:00"),
        ("2026-02-28T15:00:00+00:00", "2026-03-02T00:00:00+00:00"),
    ]


class Outbox:
    def __init__(self) -> None:
        self.sent: dict[str, dict[str, Any]] = {}
        self.on = True

    def listening(self) -> bool:
        return self.on

    def send(self, payload: dict[str, Any], dedup_key: str, now: datetime) -> bool:
        if dedup_key in self.sent:
            return False
        self.sent[dedup_key] = payload
        return True


def test_the_job_reports_closed_months_once_and_again_when_they_change(sources: MemorySources) -> None:
    box = Outbox()
    clock = FixedClock(utc(2026, 3, 1, 0, 30))
    job = UnbilledNotifications(UnbilledService(sources, sources, clock), box, grace=clock.now() - utc(2026, 3, 1))
    box.on = False
    assert job.run(utc(2026, 3, 1, 0, 30))["sent"] == 0  # no rule routes the event: nothing computed
    box.on = True
    # February has not closed until its grace has passed.
    assert [m.start.month for m in job.closed_months(utc(2026, 3, 1, 0, 29))] == [12, 1]
    assert job.run(utc(2026, 3, 1, 0, 30)) == {"sent": 2, "months": ["2026-01: 4 row(s)", "2026-02: 3 row(s)"]}
    assert job.run(utc(2026, 3, 1, 1, 30))["sent"] == 0  # the same figures: not sent again
    sources.events.append(event("calls", "ghost", utc(2026, 2, 20), 1))  # a late event changes February
    assert job.run(utc(2026, 3, 1, 2, 30))["sent"] == 1
    february = [p for k, p in box.sent.items() if ":2026-02:" in k]
    assert len(february) == 2 and february[-1]["type"] == "billing.unbilled_usage"


# -- the API, the CLI and the webhook on both engines ---------------------------------------------------
@pytest.fixture
def rt(database_url: str) -> Iterator[Runtime]:
    runtime = build(database_url, FixedClock(utc(2026, 1, 1)))
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def api(rt: Runtime) -> Iterator[httpx.Client]:
    client = client_for(rt)
    try:
        yield client
    finally:
        client.close()


def setup_usage(rt: Runtime, api: httpx.Client) -> None:
    """acme (Berlin) on the seed plan (prices api_calls, storage_gb, compute_seconds) from 10
    January; globex without a subscription; `ghost` without a customer; a meter no plan prices."""
    ok(
        api.post(
            "/api/v1/meters",
            json={"slug": "exports", "eventType": "export.run", "aggregation": "COUNT"},
        ),
        201,
    )
    create_plan(api)
    create_customer(api, "acme", timezone="Europe/Berlin")
    create_customer(api, "globex")
    subscribe(api, "acme", activeFrom="2026-01-10T00:00:00Z", alignment="calendar")
    assert isinstance(rt.clock, FixedClock)
    rt.clock.set(utc(2026, 2, 3))
    send(
        api,
        [
            ("api.calls", "acme", utc(2026, 1, 5), {"value": 10}),  # before the subscription
            ("api.calls", "acme", utc(2026, 1, 20), {"value": 99}),  # billed
            ("export.run", "acme", utc(2026, 1, 21), {}),  # covered, but the plan has no price for it
            ("export.run", "acme", utc(2026, 1, 31, 23, 30), {}),  # 1 February in Berlin
            ("api.calls", "globex", utc(2026, 1, 7), {"value": 3}),
            ("api.calls", "globex", utc(2026, 1, 8), {"value": 4}),
            ("api.calls", "ghost", utc(2026, 1, 9), {"value": 2}),
        ],
    )


EXPECTED = [
    ("meter_not_priced", "acme", "exports", "2026-01-10T00:00:00Z", "2026-01-31T23:00:00Z", "1"),
    ("meter_not_priced", "acme", "exports", "2026-01-31T23:00:00Z", "2026-02-01T00:00:00Z", "1"),
    ("no_subscription", "acme", "api_calls", "2026-01-01T00:00:00Z", "2026-01-10T00:00:00Z", "10"),
    ("no_subscription", "globex", "api_calls", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "7"),
    ("subject_without_customer", "ghost", "api_calls", "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "2"),
]


def flat(items: list[dict[str, Any]]) -> list[tuple[str, ...]]:
    return [
        (
            r["reason"],
            r.get("subject") or r["customer"]["key"],
            r["meter"],
            r["period"]["from"],
            r["period"]["to"],
            r["quantity"],
        )
        for r in items
    ]


def test_the_report_over_the_api(rt: Runtime, api: httpx.Client) -> None:
    setup_usage(rt, api)
    window = {"from": "2026-01-01T00:00:00Z", "to": "2026-02-01T00:00:00Z"}
    report = ok(api.get("/api/v1/billing/unbilled", params=window))
    assert report["totalCount"] == 5 and flat(report["items"]) == EXPECTED
    assert report["items"][0]["customer"]["timezone"] == "Europe/Berlin"
    assert report["items"][0]["detail"] == "plan pro v1 has no usage price on this meter"
    # A void takes an event out of the report, as it does from invoices.
    ok(
        api.post(
            "/api/v1/events/void",
            json={"filter": {"subject": "globex", "to": "2026-01-08T00:00:00Z"}, "reason": "test traffic"},
        ),
        201,
    )
    report = ok(api.get("/api/v1/billing/unbilled", params={**window, "reason": "no_subscription"}))
    assert flat(report["items"])[1][-1] == "4"
    bad = api.get("/api/v1/billing/unbilled", params={**window, "reason": "nope"})
    assert bad.status_code == 400 and "reason" in bad.json()["detail"]
    assert (
        api.get(
            "/api/v1/billing/unbilled", params={"from": "2026-02-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"}
        ).status_code
        == 400
    )


def test_the_report_is_sent_as_a_signed_webhook(rt: Runtime, api: httpx.Client) -> None:
    setup_usage(rt, api)
    channel = rt.webhooks.create_channel(ChannelInput(name="ops", url="http://127.0.0.1:9/hook"))
    rule = ok(
        api.post(
            "/api/v1/notification/rules",
            json={"type": "billing.unbilled_usage", "name": "unbilled", "channels": [channel.id]},
        ),
        201,
    )
    assert rule["type"] == "billing.unbilled_usage"
    assert isinstance(rt.clock, FixedClock)
    rt.clock.set(utc(2026, 2, 1, 2))  # January closed (plus the hour of invoice grace)
    job = next(j for j in rt.jobs.jobs if j.name == "billing.unbilled")
    result = rt.jobs.run_job(job, force=True)
    assert result.error is None and result.result["sent"] == 1
    [sent] = outbox(rt, "billing.unbilled_usage")
    assert sent["body"]["month"] == "2026-01" and flat(sent["body"]["report"]["items"]) == EXPECTED
    assert rt.jobs.run_job(job, force=True).result["sent"] == 0  # unchanged: not sent twice


def test_the_cli_prints_the_report(rt: Runtime, api: httpx.Client, database_url: str) -> None:
    from tallybook.cli.main import app

    setup_usage(rt, api)
    window = ["--from", "2026-01-01T00:00:00Z", "--to", "2026-02-01T00:00:00Z", "--database", database_url]
    done = CliRunner().invoke(app, ["unbilled", *window, "--json"])
    assert done.exit_code == 0, done.output
    assert flat(json.loads(done.output)["items"]) == EXPECTED
    # The CLI's console measured its width when first imported (COLUMNS then, in whichever test
    # imported it first): set it wide for this call so no cell is cut.
    from tallybook.cli import main as cli_main

    measured = cli_main.console._width
    cli_main.console.width = 200
    try:
        table = CliRunner().invoke(app, ["unbilled", *window])
    finally:
        cli_main.console._width = measured
    assert table.exit_code == 0, table.output
    assert "ghost" in table.output and "subject_without_customer" in table.output and "5 row(s)" in table.output
