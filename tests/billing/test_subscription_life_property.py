"""Property: over any subscription life (a start, maybe a plan change, a cancel, events sent on time
or late, some of them voided later, billing runs and approvals in between), every invoice minus
every credit note adds up, to the cent, to what a deliberately simple reference computation of that
life says it costs. On SQLite and PostgreSQL.

The reference knows nothing of invoices: for each part of the life on one plan and each calendar
month it touches, the flat fee prorated by whole seconds (each rounded to the cent) plus the unit
price times the events that stand in that part of the month (rounded to the cent).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal, localcontext
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from tallybook.clock import FixedClock, format_rfc3339
from tallybook.runtime import Runtime
from tests.billing_helpers import SEED_PLAN, client_for, create_customer, create_plan, ok, run_billing
from tests.billing_helpers import build as build_runtime

START = datetime(2026, 1, 1, tzinfo=UTC)
SETTLE = datetime(2026, 4, 5, tzinfo=UTC)  # the life is over; within the correction lookback
LATER = SETTLE + timedelta(days=3)  # events sent and voids made after everything was invoiced
FEES = ["49", "49.99", "12.34"]
PRICES = ["0.001", "0.0137", "1"]


# -- the reference -----------------------------------------------------------------------------------


def cents(value: Decimal) -> Decimal:
    return value.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def second(when: datetime) -> int:
    """The whole second an instant falls in (what the docs promise proration counts)."""
    return (when - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(seconds=1)


def months(start: datetime, end: datetime) -> list[tuple[datetime, datetime]]:
    out, month = [], datetime(start.year, start.month, 1, tzinfo=UTC)
    while month < end:
        following = datetime(month.year + month.month // 12, month.month % 12 + 1, 1, tzinfo=UTC)
        out.append((month, following))
        month = following
    return out


def reference_cost(parts: list[tuple[str, str, datetime, datetime]], events: list[Event]) -> Decimal:
    """parts: (fee, unit price, from, to) of each plan the life was on; events: all sent."""
    total = Decimal(0)
    with localcontext() as ctx:
        ctx.prec = 100
        for fee, price, start, end in parts:
            for month_start, month_end in months(start, end):
                lo, hi = max(start, month_start), min(end, month_end)
                if lo >= hi:
                    continue
                share = Decimal(fee) * (second(hi) - second(lo)) / (second(month_end) - second(month_start))
                used = sum((Decimal(e.value) for e in events if lo <= e.time < hi and not e.voided), Decimal(0))
                total += cents(share) + cents(Decimal(price) * used)
    return total


# -- a life ------------------------------------------------------------------------------------------


@dataclass
class Event:
    id: str
    time: datetime
    value: int
    sent: datetime
    voided_at: datetime | None = None

    @property
    def voided(self) -> bool:
        return self.voided_at is not None


@dataclass
class Life:
    start: datetime
    fees: tuple[str, str]
    prices: tuple[str, str]
    change: datetime | None  # to the second plan, immediately
    cancel: datetime
    cancel_at_period_end: bool
    events: list[Event]
    runs: list[datetime]  # billing runs (each followed by approvals when drafts wait for them)
    approve: list[bool]
    auto_issue: bool
    actions: list[tuple[datetime, str, Any]] = field(default_factory=list)

    def end(self) -> datetime:
        if not self.cancel_at_period_end:
            return self.cancel
        month = months(self.cancel, self.cancel + timedelta(microseconds=1))[0]
        return month[1]

    def parts(self) -> list[tuple[str, str, datetime, datetime]]:
        end = self.end()
        if self.change is None:
            return [(self.fees[0], self.prices[0], self.start, end)]
        return [
            (self.fees[0], self.prices[0], self.start, self.change),
            (self.fees[1], self.prices[1], self.change, end),
        ]


def instants(base: datetime, low_minutes: int, high_minutes: int) -> st.SearchStrategy[datetime]:
    """Instants after `base`, some with seconds and microseconds."""
    return st.builds(
        lambda m, s, us: base + timedelta(minutes=m, seconds=s, microseconds=us),
        st.integers(low_minutes, high_minutes),
        st.integers(0, 59),
        st.sampled_from([0, 0, 1, 805_429, 999_999]),
    )


@st.composite
def lives(draw: st.DrawFn) -> Life:
    start = START + timedelta(minutes=draw(st.integers(0, 20 * 1440)))
    change = draw(st.none() | instants(start, 1440, 35 * 1440))
    cancel = draw(instants(change or start, 60, 35 * 1440))
    events = []
    for index in range(draw(st.integers(0, 7))):
        time = start + timedelta(minutes=draw(st.integers(-3 * 1440, 70 * 1440)))
        # On time, late, or after everything was invoiced (a final correction).
        sent = draw(st.sampled_from([time + timedelta(minutes=1), time + timedelta(days=20), LATER]))
        voided_at = draw(
            st.sampled_from([None, None, sent + timedelta(minutes=5), max(sent, LATER) + timedelta(hours=1)])
        )
        events.append(Event(f"e{index}", time, draw(st.integers(1, 5000)), sent, voided_at))
    runs = sorted(draw(st.lists(instants(start, 0, 80 * 1440), max_size=4)))
    return Life(
        start=start,
        fees=(draw(st.sampled_from(FEES)), draw(st.sampled_from(FEES))),
        prices=(draw(st.sampled_from(PRICES)), draw(st.sampled_from(PRICES))),
        change=change,
        cancel=cancel,
        cancel_at_period_end=draw(st.booleans()),
        events=events,
        runs=runs,
        approve=[draw(st.booleans()) for _ in runs],
        auto_issue=draw(st.booleans()),
    )


def plan(key: str, fee: str, price: str) -> dict[str, Any]:
    return {
        "key": key,
        "name": key.title(),
        "currency": "USD",
        "billingCadence": "P1M",
        "rateCards": [
            {"type": "flat_fee", "key": "platform", "name": "Platform fee", "price": {"type": "flat", "amount": fee}},
            {**SEED_PLAN["rateCards"][1], "price": {"type": "unit", "amount": price}},
        ],
    }


def approve_drafts(api: httpx.Client) -> None:
    drafts = ok(api.get("/api/v1/billing/invoices", params={"status": "draft", "limit": 1000}))["items"]
    for draft in drafts:
        response = api.post(f"/api/v1/billing/invoices/{draft['id']}/approve")
        # A correction draft whose usage went down since it was drafted has nothing left to bill:
        # the next run credits it and voids the draft.
        assert response.status_code == 200 or response.json()["type"].endswith("invoice-conflict"), response.text


def live(life: Life, rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api, plan("first", life.fees[0], life.prices[0]))
    create_plan(api, plan("second", life.fees[1], life.prices[1]))
    create_customer(api)
    body = {"customerKey": "acme", "plan": {"key": "first"}, "activeFrom": format_rfc3339(life.start)}
    subscription = ok(api.post("/api/v1/subscriptions", json={**body, "alignment": "calendar"}), 201)["id"]
    actions: list[tuple[datetime, int, str, Any]] = []
    for sent in life.events:
        actions.append((sent.sent, 0, "send", sent))
        if sent.voided_at is not None:
            actions.append((sent.voided_at, 1, "void", sent))
    if life.change is not None:
        actions.append((life.change, 2, "change", None))
    actions.append((life.cancel, 3, "cancel", None))
    for run, approve in zip(life.runs, life.approve, strict=True):
        actions.append((run, 4, "bill", approve))
    for round_ in range(3):  # everything drafted and issued
        actions.append((SETTLE + timedelta(hours=3 * round_), 5, "bill", True))
    for round_ in range(4):  # late usage corrected or credited
        actions.append((LATER + timedelta(hours=2 + 3 * round_), 5, "bill", True))
    for when, _, kind, payload in sorted(actions, key=lambda a: (a[0], a[1])):
        clock.set(when)
        if kind == "send":
            cloud = {
                "specversion": "1.0",
                "id": payload.id,
                "source": "life",
                "type": "api.calls",
                "subject": "acme",
                "time": format_rfc3339(payload.time),
                "data": {"value": payload.value},
            }
            assert api.post("/api/v1/events", json=cloud).status_code in (202, 204)
        elif kind == "void":
            void = {"events": [{"source": "life", "id": payload.id}], "reason": "sent twice"}
            ok(api.post("/api/v1/events/void", json=void), 201)
        elif kind == "change":
            changed = ok(api.post(f"/api/v1/subscriptions/{subscription}/change", json={"plan": {"key": "second"}}))
            subscription = changed["next"]["id"]
        elif kind == "cancel":
            timing = "next_billing_cycle" if life.cancel_at_period_end else "immediate"
            ok(api.post(f"/api/v1/subscriptions/{subscription}/cancel", json={"timing": timing}))
        else:
            run_billing(rt)
            if payload:
                approve_drafts(api)


def billed(api: httpx.Client) -> Decimal:
    invoices = ok(api.get("/api/v1/billing/invoices", params={"limit": 1000}))["items"]
    notes = ok(api.get("/api/v1/billing/credit-notes", params={"limit": 1000, "status": "issued"}))["items"]
    event(f"credit notes: {sorted({n['reason'] for n in notes})}")
    event(f"correction invoices: {sum(i['kind'] == 'correction' for i in invoices)}")
    event(f"credit lines: {sum(ln['type'] == 'credit' for i in invoices for ln in i['lines'])}")
    assert all(i["status"] in ("issued", "void") for i in invoices), [i["status"] for i in invoices]
    charged = sum((Decimal(i["totals"]["total"]) for i in invoices if i["status"] != "void"), Decimal(0))
    return charged - sum((Decimal(n["totals"]["total"]) for n in notes), Decimal(0))


# PostgreSQL runs the same property with fewer examples than SQLite (the engines share every line of
# billing code; PostgreSQL's own statements are what its examples check). More for a longer search,
# e.g. LIFE_EXAMPLES=500 LIFE_POSTGRES_EXAMPLES=500.
EXAMPLES = int(os.environ.get("LIFE_EXAMPLES", "12"))
POSTGRES_EXAMPLES = int(os.environ.get("LIFE_POSTGRES_EXAMPLES", "4"))


def check_life(database_url: str, life: Life) -> None:
    clock = FixedClock(START - timedelta(days=1))
    rt = build_runtime(database_url, clock, auto_issue=life.auto_issue)
    api = client_for(rt)
    try:
        live(life, rt, api, clock)
        assert billed(api) == reference_cost(life.parts(), life.events)
    finally:
        api.close()
        rt.stop()


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
@settings(max_examples=EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(life=lives())
def test_invoices_minus_credit_notes_equal_the_reference(database_url: str, life: Life) -> None:
    check_life(database_url, life)


@pytest.mark.parametrize("database_url", [pytest.param("postgres", marks=pytest.mark.postgres)], indirect=True)
@settings(max_examples=POSTGRES_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(life=lives())
def test_invoices_minus_credit_notes_equal_the_reference_on_postgres(database_url: str, life: Life) -> None:
    check_life(database_url, life)
