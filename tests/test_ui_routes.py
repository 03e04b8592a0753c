"""The dashboard's server side: pages and static files, the overview endpoint, and the demo data."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from tallybook.clock import to_micros
from tallybook.demo import DEMO_CUSTOMERS, DEMO_DRAFT_CUSTOMER, load_demo_events
from tallybook.ingest.events import Event
from tallybook.ui.stats_sql import MINUTE_US, events_per_minute
from tests.conftest import auth


def test_dashboard_page_is_static_and_not_frameable(client):
    response = client.get("/ui")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    assert response.headers["x-frame-options"] == "DENY"
    assert "frame-ancestors 'none'" in response.headers["content-security-policy"]
    assert response.headers["cache-control"] == "no-store"
    assert '<script src="/ui/static/dashboard.js"' in response.text
    assert "tbk_" not in response.text.replace("tbk_…", "")  # no key is ever baked into the page


def test_portal_page_can_be_embedded_and_sends_no_referrer(client):
    response = client.get("/portal", params={"token": "tbp_x"})
    assert response.status_code == 200
    assert "x-frame-options" not in response.headers
    assert "frame-ancestors" not in response.headers["content-security-policy"]
    assert response.headers["referrer-policy"] == "no-referrer"
    assert "tbp_x" not in response.text


@pytest.mark.parametrize(
    ("path", "media_type"),
    [
        ("/ui/static/dashboard.js", "text/javascript"),
        ("/ui/static/portal.js", "text/javascript"),
        ("/ui/static/embed.js", "text/javascript"),
        ("/ui/static/tallybook.css", "text/css"),
        ("/ui/static/vendor/chart.umd.min.js", "text/javascript"),
    ],
)
def test_static_files_ship_with_the_package(client, path, media_type):
    response = client.get(path)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith(media_type)
    assert response.headers["x-content-type-options"] == "nosniff"


@pytest.mark.parametrize(
    "path",
    ["/ui/static/../router.py", "/ui/static/%2e%2e/router.py", "/ui/static/dashboard.html", "/ui/static/nope.js"],
)
def test_static_files_stay_inside_the_static_folder(client, path):
    assert client.get(path).status_code == 404


def test_chart_library_license_ships_alongside(client):
    response = client.get("/ui/static/vendor/chart.js.LICENSE.md")
    assert response.status_code == 200
    assert "MIT License" in response.text


def test_events_per_minute_counts_by_ingest_minute(runtime):
    now_us = to_micros(datetime(2026, 3, 1, 12, 30, 20, tzinfo=UTC))
    minute = now_us - now_us % MINUTE_US
    with runtime.store.write() as conn:
        for n, ingested in enumerate([minute + 1, minute + 2, minute - MINUTE_US, minute - 90 * MINUTE_US]):
            runtime.store.insert_events(conn, [Event("s", f"e{n}", "t", "a", ingested, None)], ingested)
    counts = events_per_minute(runtime.store, now_us, minutes=60)
    assert len(counts) == 60
    assert counts[-1].minute_start_us == minute and counts[-1].events == 2
    assert counts[-2].events == 1
    assert sum(c.events for c in counts) == 3  # the event 90 minutes back is outside the hour


def test_overview_endpoint(client, keys, runtime):
    body = {
        "specversion": "1.0",
        "id": "o1",
        "source": "s",
        "type": "t",
        "subject": "a",
        "time": "2026-01-01T00:00:00Z",
    }
    for _ in range(2):
        assert client.post("/api/v1/events", json=body, headers=auth(keys["ingest"])).status_code == 204
    bad = dict(body, id="o2", time="yesterday")
    assert client.post("/api/v1/events", json=bad, headers=auth(keys["ingest"])).status_code == 400
    response = client.get("/api/v1/overview", params={"minutes": 5}, headers=auth(keys["read"]))
    assert response.status_code == 200, response.text
    data = response.json()
    assert len(data["eventsPerMinute"]) == 5
    assert sum(m["events"] for m in data["eventsPerMinute"]) == 1
    assert data["ingest"]["accepted"] == 1
    assert data["ingest"]["duplicateRetries"] == 1
    assert sum(data["ingest"]["rejected"].values()) == 1
    assert data["webhooks"] == {"deliveries": {}, "disabledChannels": []}
    assert client.get("/api/v1/overview", headers=auth(keys["ingest"])).status_code == 403
    assert client.get("/api/v1/overview").status_code == 401


def test_demo_loads_meters_customers_and_events_once(runtime):
    added = load_demo_events(runtime)
    assert added > 1000
    assert {m.slug for m in runtime.meters.list()} >= {"api_calls", "storage_gb"}
    keys = {c.key for c in runtime.customers.list_customers(_all()).items}
    assert keys >= set(DEMO_CUSTOMERS)
    assert load_demo_events(runtime) == 0
    assert runtime.customers.list_customers(_all()).total_count == len(DEMO_CUSTOMERS)
    assert len(runtime.meters.list()) == 2
    subscriptions = getattr(runtime, "subscriptions", None)
    if subscriptions is not None:  # a billing server: each demo customer is subscribed, once
        assert sorted(s.customer_id for s in subscriptions.list_subscriptions()) == sorted(
            runtime.customers.resolve(key).id for key in DEMO_CUSTOMERS
        )


def test_demo_issues_last_months_invoices_once(runtime):
    invoicing = getattr(runtime, "invoicing", None)
    if invoicing is None:
        pytest.skip("this server does not bill")
    # `serve --demo` loads the demo before its scheduler starts; a scheduler already running could
    # draft last month's invoices first, and bill_demo issues only the drafts its own run made.
    runtime.jobs.stop()
    load_demo_events(runtime)
    total, invoices = invoicing.list_invoices(limit=1000)
    by_customer = {key: runtime.customers.resolve(key).id for key in DEMO_CUSTOMERS}
    month_start = runtime.clock.now().astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    last_month = [i for i in invoices if i.period.end <= month_start]
    if runtime.clock.now() - month_start < invoicing.settings.invoice_grace:
        pytest.skip("last month is still in its invoice grace period")
    statuses = {i.customer["id"]: i.status for i in last_month}
    assert statuses == {
        by_customer["acme"]: "issued",
        by_customer["globex"]: "issued",
        by_customer[DEMO_DRAFT_CUSTOMER]: "draft",
    }
    assert all(i.totals.total > 0 for i in last_month)
    # Loading the demo again makes no invoice, issues nothing more and leaves the draft a draft.
    load_demo_events(runtime)
    again_total, again = invoicing.list_invoices(limit=1000)
    assert again_total == total
    assert {(i.id, i.status, i.revision) for i in again} == {(i.id, i.status, i.revision) for i in invoices}


def _all():
    from tallybook.customers.model import CustomerListQuery

    return CustomerListQuery(page_size=100)


def test_demo_at_an_earlier_instant_subscribes_its_customers_before_the_first_demo_event(runtime):
    from tallybook.unbilled.model import UnbilledQuery

    until = datetime(2026, 11, 23, 12, tzinfo=UTC)
    load_demo_events(runtime, until=until)
    starts = {s.active_from for key in DEMO_CUSTOMERS for s in runtime.subscriptions.list_subscriptions(customer=key)}
    assert starts == {datetime(2026, 10, 1, tzinfo=UTC)}
    # Every demo event of a demo customer is inside a subscription: none is unbilled for want of one.
    report = runtime.unbilled.report(
        UnbilledQuery(from_=datetime(2026, 10, 1, tzinfo=UTC), to=until, reasons=("no_subscription",))
    )
    assert list(report.rows) == []
