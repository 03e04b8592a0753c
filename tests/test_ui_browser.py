"""The dashboard and the customer portal in a real headless Chromium (Debian's, driven by Playwright).

The server runs the demo data (`tallybook serve --demo`) plus one webhook channel pointing at a local
receiver. Screenshots go to test-artifacts/ui/ (or $TALLYBOOK_TEST_ARTIFACTS/ui/).

Needs /usr/bin/chromium (`apt-get install -y chromium`) and Playwright's Python package (no
browser download). Without them these tests skip and say why; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest

from tallybook.clock import to_micros
from tallybook.config import Settings
from tallybook.demo import load_demo_events
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tallybook.webhooks.service import OutboxMessage
from tests.conftest import LiveServer
from tests.test_webhook_helpers import SECRET, Receiver

CHROMIUM = os.environ.get("TALLYBOOK_TEST_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
ARTIFACTS = Path(os.environ.get("TALLYBOOK_TEST_ARTIFACTS", Path(__file__).resolve().parent.parent / "test-artifacts"))
SHOTS = ARTIFACTS / "ui"
# Chromium logs refused API requests (the tests make some on purpose, and a customer without a Stripe
# link answers 404); any other error logged, and any static file not served, fails the test.
EXPECTED = re.compile(r"Failed to load resource: the server responded with a status of 40[134]")


def _missing() -> str | None:
    if not Path(CHROMIUM).exists():
        return f"no Chromium at {CHROMIUM}: apt-get install -y chromium"
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        return "Playwright's Python package is not installed: pip install playwright (never `playwright install`)"
    return None


_REASON = _missing()
if _REASON and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser tests. {_REASON}", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


class Demo:
    def __init__(self, runtime: Runtime, server: LiveServer, receiver: Receiver, admin_key: str) -> None:
        self.runtime = runtime
        self.server = server
        self.receiver = receiver
        self.admin_key = admin_key
        self.url = server.url

    def api(self) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)

    def customer_id(self, key: str) -> str:
        return self.runtime.customers.resolve(key).id


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Demo]:
    database = tmp_path_factory.mktemp("ui") / "tallybook.db"
    with Receiver() as receiver:
        settings = Settings.model_validate(
            {
                "database": {"url": f"sqlite:///{database}"},
                "webhooks": {
                    "scheduler": {"run_in_server": False},
                    "endpoints": [{"url": receiver.url, "secret": SECRET, "enabled": True}],
                },
            }
        )
        runtime = Runtime.build(settings)
        runtime.start()
        try:
            load_demo_events(runtime)
            now = runtime.clock.now()
            # One event that no meter can use, so the explorer has a validation error to show.
            runtime.ingest.ingest(
                [Event("demo", "acme-bad-storage", "storage.gb", "acme", to_micros(now), {"value": "lots"})]
            )
            admin = runtime.keys.create("browser tests", "admin").plaintext
            with LiveServer(runtime) as server:
                yield Demo(runtime, server, receiver, admin)
        finally:
            runtime.stop()


@pytest.fixture(scope="module")
def browser(demo: Demo) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield launched
        finally:
            launched.close()


@pytest.fixture
def page(browser: Any) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    tab.on("pageerror", lambda exc: errors.append(f"{exc}\n{exc.stack}"))
    tab.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" and not EXPECTED.search(msg.text) else None,
    )
    tab.on("response", lambda r: errors.append(f"{r.status} {r.url}") if "/ui/static/" in r.url and not r.ok else None)
    tab.set_default_timeout(15_000)
    try:
        yield tab
        assert errors == [], errors
    finally:
        context.close()


def login(page: Any, demo: Demo, hash_path: str = "#/overview") -> None:
    page.goto(f"{demo.url}/ui{hash_path}")
    page.fill("#api-key", demo.admin_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def wait_true(page: Any, expression: str, timeout: float = 15.0) -> None:
    """Poll a JS expression until it is truthy (page.wait_for_function would need 'unsafe-eval' under our CSP)."""
    deadline = time.monotonic() + timeout
    while not page.evaluate(expression):
        if time.monotonic() > deadline:
            raise AssertionError(f"still false after {timeout}s: {expression}")
        page.wait_for_timeout(100)


def shot(page: Any, name: str) -> Path:
    path = SHOTS / f"{name}.png"
    page.screenshot(path=str(path), full_page=True)
    assert path.stat().st_size > 10_000
    return path


def test_login_shows_live_overview(page, demo):
    page.goto(f"{demo.url}/ui")
    page.fill("#api-key", "tbk_wrong")
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#login-error:has-text('unknown or revoked')")
    login(page, demo)
    stats = page.wait_for_selector("#ingest-stats .stat")
    assert stats is not None
    page.wait_for_selector("#webhook-health")
    wait_true(page, "document.getElementById('rate-chart')._chart !== undefined")
    points = page.evaluate("document.getElementById('rate-chart')._chart.data.datasets[0].data")
    assert len(points) == 60 and sum(points) > 10_000  # the demo was ingested within the last hour
    text = page.text_content("#ingest-stats") or ""
    assert "Accepted (since start)" in text and "Duplicates" in text and "Rejected" in text
    shot(page, "dashboard-overview")
    # The key lives in this tab's session only; signing out forgets it.
    assert page.evaluate("sessionStorage.getItem('tallybook.apiKey')") == demo.admin_key
    page.click("#logout")
    page.wait_for_selector("#login:not([hidden])")
    assert page.evaluate("sessionStorage.getItem('tallybook.apiKey')") is None


def test_meter_chart_with_data(page, demo):
    login(page, demo, "#/meters")
    page.click("a[href='#/meters/api_calls']")
    wait_true(page, "Number(document.getElementById('meter-chart')?.dataset.rows) > 0")
    chart = page.evaluate(
        "(() => { const c = document.getElementById('meter-chart')?._chart;"
        " return {labels: c.data.labels.length, series: c.data.datasets.map(d => d.label),"
        " total: c.data.datasets.reduce((a, d) => a + d.data.reduce((x, y) => x + y, 0), 0)}; })()"
    )
    assert set(chart["series"]) == {"Acme Corporation", "Globex Inc.", "Initech LLC"}
    assert chart["labels"] >= 30
    with demo.api() as api:
        expected = api.get("/api/v1/meters/api_calls/query").json()["data"][0]["value"]
    assert chart["total"] == expected  # the last 30 days hold all of the demo
    top = page.inner_text("#top-customers")
    assert top.index("Initech LLC") < top.index("Acme Corporation")  # the demo's busiest customer first
    assert '"eventType": "api.calls"' in page.inner_text("#meter-definition")
    shot(page, "dashboard-meter")

    # Stack by the meter's groupBy key, hourly, in another time zone.
    page.select_option("#stack", "endpoint")
    page.wait_for_url(re.compile(r"stack=endpoint"))
    page.select_option("#window", "HOUR")
    page.wait_for_url(re.compile(r"window=HOUR"))
    page.select_option("#range", "24h")
    page.wait_for_url(re.compile(r"range=24h"))
    page.fill("#tz", "Asia/Tokyo")
    page.press("#tz", "Enter")
    page.wait_for_url(re.compile(r"tz=Asia%2FTokyo"))
    wait_true(
        page,
        "(() => { const c = document.getElementById('meter-chart')?._chart;"
        " return Boolean(c) && c.data.datasets.map(d => d.label).sort().join() === '/export,/items,/search'; })()",
    )
    assert "Asia/Tokyo" in page.inner_text("#chart-status")


def test_open_customer(page, demo):
    login(page, demo, "#/customers")
    page.click("text=Globex Inc.")
    page.wait_for_selector("h1:has-text('Globex Inc.')")
    page.wait_for_selector("text=Usage per meter")
    rows = page.locator("#customer-usage tbody tr")
    assert rows.count() == 2
    this_month = Decimal(rows.nth(0).locator("td").nth(2).inner_text().replace(",", ""))
    assert this_month > 0
    if getattr(demo.runtime, "subscriptions", None) is not None:
        assert "demo_pro" in (page.text_content("#customer-subscriptions") or "")
    else:
        assert page.query_selector("#customer-subscriptions") is None
    page.click("#issue-portal-token")
    link = page.wait_for_selector("#portal-url")
    assert "/portal?token=tbp_" in (link.get_attribute("href") or "")
    assert "<tallybook-usage" in page.inner_text("#portal-link")
    shot(page, "dashboard-customer")


def test_open_event_with_raw_json_and_validation_error(page, demo):
    acme = demo.customer_id("acme")
    login(page, demo, f"#/events?customer={acme}&type=storage.gb")
    row = page.wait_for_selector("tr.clickable:has(.badge.invalid)")
    row.click()
    page.wait_for_selector("#validation-error")
    assert "lots" in page.inner_text("#validation-error")
    assert '"id": "acme-bad-storage"' in page.inner_text("#event-json")
    subjects = {cell.strip() for cell in page.locator("tbody tr td:nth-child(3)").all_inner_texts()}
    assert subjects == {"acme"}
    page.locator("tr.clickable").nth(1).click()
    page.wait_for_selector("#event-detail:has-text('Every meter could use this event')")
    shot(page, "dashboard-event")


def _received(demo: Demo) -> list[Any]:
    return [r for r in demo.receiver.requests if b'"hello":"ui"' in r.body]


def test_resend_a_delivery(page, demo):
    runtime = demo.runtime
    runtime.jobs.run_once()  # sends the demo's daily aggregations: real deliveries to list
    with runtime.store.write() as conn:
        destinations = runtime.webhooks.destinations(conn, "aggregation.completed")
        message = OutboxMessage("aggregation.completed", "ui-test|1", {"hello": "ui"}, subject="acme")
        event = runtime.webhooks.enqueue(conn, message, destinations, runtime.clock.now())
    assert event is not None
    runtime.jobs.run_once()
    assert len(_received(demo)) == 1
    login(page, demo, "#/deliveries")
    row = page.wait_for_selector(f"tr[data-event='{event.id}']")
    assert "SUCCESS" in row.inner_text() and "HTTP 200" in row.inner_text()
    with page.expect_response(lambda r: r.url.endswith(f"/{event.id}/resend")) as answer:
        page.click(f"tr[data-event='{event.id}'] button.resend")
    assert answer.value.status == 202
    page.wait_for_selector(f"tr[data-event='{event.id}'] .badge.RESENDING, tr[data-event='{event.id}'] .badge.PENDING")
    runtime.jobs.run_once()
    assert len(_received(demo)) == 2
    page.reload()
    row = page.wait_for_selector(f"tr[data-event='{event.id}']:has(.badge.SUCCESS)")
    assert row.query_selector_all("td")[5].inner_text() == "2"
    shot(page, "dashboard-deliveries")


def _portal_token(demo: Demo, customer: str, **extra: Any) -> str:
    with demo.api() as api:
        response = api.post("/api/v1/portal/tokens", json={"customerId": customer, **extra})
    assert response.status_code == 200, response.text
    return str(response.json()["token"])


def _portal_totals(page: Any) -> dict[str, Decimal]:
    page.wait_for_selector("#portal-meters section.meter-card")
    cards = page.locator("section.meter-card")
    return {
        cards.nth(i).get_attribute("data-meter"): Decimal(cards.nth(i).locator(".total").inner_text().replace(",", ""))
        for i in range(cards.count())
    }


def test_portal_page_with_token(page, demo):
    token = _portal_token(demo, "acme")
    page.goto(f"{demo.url}/portal?token={token}")
    page.wait_for_selector("#portal-title:has-text('Usage for Acme Corporation')")
    totals = _portal_totals(page)
    me = httpx.get(f"{demo.url}/api/v1/portal/me", headers={"Authorization": f"Bearer {token}"}).json()
    period = me["currentPeriod"]
    with demo.api() as api:
        expected = api.get(
            "/api/v1/meters/api_calls/query",
            params={"from": period["from"], "to": period["to"], "filterCustomerId": demo.customer_id("acme")},
        ).json()["data"]
    assert totals["api_calls"] == sum(Decimal(str(r["value"])) for r in expected) > 0
    assert set(totals) == {"api_calls", "storage_gb"}
    wait_true(page, "document.querySelector('canvas[data-meter=api_calls]')._chart !== undefined")
    assert "token=" not in page.url  # moved from the address bar into this tab's session
    if getattr(demo.runtime, "invoicing", None) is not None:
        # This server bills, and the demo subscribes its customers: the estimate is the preview's.
        total = page.wait_for_selector("#estimate-total").inner_text()
        with demo.api() as api:
            simulated = api.get(f"/api/v1/billing/customers/{demo.customer_id('acme')}/invoices/simulate").json()
        expected_total = simulated["items"][0]["totals"]["total"]
        assert Decimal(re.sub(r"[^\d.]", "", total)) == Decimal(expected_total)
    else:
        assert page.query_selector("#invoice-estimate") is None
    shot(page, "portal")


def test_portal_token_for_a_cannot_see_b(page, demo):
    token = _portal_token(demo, "acme", allowedMeterSlugs=["api_calls"])
    page.goto(f"{demo.url}/portal?token={token}")
    page.wait_for_selector("#portal-title:has-text('Acme Corporation')")
    assert set(_portal_totals(page)) == {"api_calls"}
    globex = demo.customer_id("globex")
    statuses = page.evaluate(
        """async ([token, globex]) => {
            const headers = {Authorization: `Bearer ${token}`};
            const get = async (path) => (await fetch(path, {headers})).status;
            return {
                otherCustomer: await get(`/api/v1/portal/meters/api_calls/query?filterCustomerId=${globex}`),
                otherSubject: await get('/api/v1/portal/meters/api_calls/query?subject=globex'),
                otherMeter: await get('/api/v1/portal/meters/storage_gb/query'),
                customers: await get(`/api/v1/customers/${globex}`),
                meterQuery: await get(`/api/v1/meters/api_calls/query?filterCustomerId=${globex}`),
                events: await get('/api/v1/events?subject=globex'),
                tokens: await get('/api/v1/portal/tokens'),
                own: await get('/api/v1/portal/meters/api_calls/query'),
            };
        }""",
        [token, globex],
    )
    assert statuses == {
        "otherCustomer": 403,
        "otherSubject": 403,
        "otherMeter": 403,
        "customers": 401,
        "meterQuery": 401,
        "events": 401,
        "tokens": 401,
        "own": 200,
    }
    rows = page.evaluate(
        """async (token) => (await (await fetch('/api/v1/portal/meters/api_calls/query?groupBy=subject',
            {headers: {Authorization: `Bearer ${token}`}})).json()).data""",
        token,
    )
    assert {r["subject"] for r in rows} == {"acme"}
    # Once invalidated, the same page says the link no longer works.
    with demo.api() as api:
        assert api.post("/api/v1/portal/tokens/invalidate", json={"customerId": "acme"}).status_code == 204
    page.goto(f"{demo.url}/portal?token={token}")
    page.wait_for_selector("text=This usage link no longer works")


def test_embed_snippet(page, demo, tmp_path):
    token = _portal_token(demo, "initech")
    host = tmp_path / "host.html"
    host.write_text(
        "<!doctype html><title>Customer app</title><h1>My account</h1>"
        f'<script src="{demo.url}/ui/static/embed.js"></script>'
        f'<tallybook-usage server="{demo.url}" token="{token}" height="900px"></tallybook-usage>'
    )
    page.goto(host.as_uri())
    frame_element = page.wait_for_selector("tallybook-usage >> iframe")
    frame = frame_element.content_frame()
    assert frame is not None
    frame.wait_for_selector("#portal-title:has-text('Initech LLC')")
    frame.wait_for_selector("section.meter-card")
    shot(page, "portal-embedded")


@pytest.mark.parametrize(
    ("nav", "path", "heading"),
    [("invoices", r"/api/v1/(billing/)?invoices", "Invoices"), ("stripeReports", r"/api/v1/stripe/reports", "Stripe")],
)
def test_optional_sections_follow_the_api(page, demo, nav, path, heading):
    paths = httpx.get(f"{demo.url}/openapi.json").json()["paths"]
    present = any(re.fullmatch(path, p) and "get" in ops for p, ops in paths.items())
    login(page, demo)
    page.wait_for_selector("#ingest-stats .stat")
    link = page.query_selector(f"#nav a[data-page='{nav}']")
    assert (link is not None) == present
    if present:
        if nav == "stripeReports":  # the overview also shows the reports by status
            assert "SENT" in (page.wait_for_selector("#stripe-health").text_content() or "")
        link.click()
        page.wait_for_selector(f"h1:has-text('{heading}')")
        page.wait_for_selector("#page table, #page p.muted")
        assert page.query_selector("#page p.error") is None
    else:
        assert "appear once the feature is enabled" in (page.text_content("#jobs-health") or "")
