"""The dashboard and the customer portal in a real headless Chromium (Debian's, driven by Playwright).

The server runs the demo data (`tallybook serve --demo`) plus one webhook channel pointing at a local
receiver. The invoice tests use a second server with billing data made through the public API and the
billing.invoice job (see the `billing` fixture). Screenshots go to test-artifacts/ui/ (or
$TALLYBOOK_TEST_ARTIFACTS/ui/).

Needs /usr/bin/chromium (`apt-get install -y chromium`) and Playwright's Python package (no
browser download). Without them these tests skip and say why; under CI (CI=true) they fail instead.
"""

from __future__ import annotations

import os
import re
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
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
def page(browser: Any, request: pytest.FixtureRequest) -> Iterator[Any]:
    context = browser.new_context(viewport={"width": 1366, "height": 900})
    tab = context.new_page()
    errors: list[str] = []
    # A test that provokes an answer on purpose names it: @pytest.mark.console_expected(r"regex").
    marker = request.node.get_closest_marker("console_expected")
    expected = re.compile(f"{EXPECTED.pattern}|{marker.args[0]}" if marker else EXPECTED.pattern)
    tab.on("pageerror", lambda exc: errors.append(f"{exc}\n{exc.stack}"))
    tab.on(
        "console",
        lambda msg: errors.append(msg.text) if msg.type == "error" and not expected.search(msg.text) else None,
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
    # The stacked chart is already drawn (in UTC) before the time zone changes: wait for the
    # status of the redraw in Tokyo, not for a chart that may still be the previous one.
    wait_true(page, "(document.getElementById('chart-status')?.innerText || '').includes('Asia/Tokyo')")
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


def test_demo_invoice_page(page, demo):
    if getattr(demo.runtime, "invoicing", None) is None:
        pytest.skip("this server does not bill")
    with demo.api() as api:
        issued = api.get("/api/v1/billing/invoices", params={"customerId": "acme", "status": "issued"}).json()["items"]
    last_month = [i for i in issued if any(line["type"] == "usage_based" for line in i["lines"])]
    if not last_month:
        pytest.skip("last month is still in its invoice grace period")
    invoice = last_month[0]
    login(page, demo, f"#/customers/{demo.customer_id('acme')}")
    page.click(f"#customer-invoices tr[data-invoice='{invoice['id']}'] a")
    page.wait_for_selector("#invoice-lines")
    _expect_invoice_on_page(page, invoice)
    shot(page, "dashboard-demo-invoice")  # docs/images/invoice.png
    page.goto(f"{demo.url}/ui#/customers/{demo.customer_id('initech')}")  # still signed in: same tab
    page.wait_for_selector("h1:has-text('Initech LLC')")
    page.wait_for_selector("#customer-invoices")
    if page.query_selector("#customer-stripe") is not None:
        assert "Not linked to Stripe." in page.inner_text("#customer-stripe")
    drafts = page.locator("#customer-invoices tr[data-invoice] .badge").all_inner_texts()
    assert "draft" in drafts and "issued" not in drafts  # the demo leaves Initech's invoices to approve


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
    cards = page.locator("section.meter-card:not(.rebuilding)")
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


@pytest.mark.console_expected(r"status of 503")
def test_portal_shows_a_meter_in_its_first_build_as_being_recalculated(page, demo):
    """A new meter answers 503 until its first build is done (docs/meters.md, "Rebuilds"): its portal
    card says so, with the progress, and every other meter still shows its figures."""
    meters = demo.runtime.meters
    meters.stop()  # hold the build where it is: the background thread would finish it at once
    settings = meters.settings
    meters.settings = settings.model_copy(update={"rebuild_inline_events": 0})
    try:
        with demo.api() as api:
            created = api.post(
                "/api/v1/meters",
                json={"slug": "calls_count", "name": "Calls (count)", "eventType": "api.calls", "aggregation": "COUNT"},
            )
            assert created.status_code == 201, created.text
        token = _portal_token(demo, "acme")
        page.goto(f"{demo.url}/portal?token={token}")
        card = page.wait_for_selector("section.meter-card.rebuilding[data-meter=calls_count]")
        assert "Being recalculated (0% done)" in card.inner_text()
        page.wait_for_selector("section.meter-card[data-meter=api_calls] .total")
        assert _portal_totals(page)["api_calls"] > 0
    finally:
        meters.settings = settings
        meters.run_builds()
        with demo.api() as api:
            assert api.delete("/api/v1/meters/calls_count").status_code == 204
        meters.start()


def test_money_is_shown_digit_for_digit(page, demo):
    """The pages' money helpers keep the API's decimal strings exact, where a float would not."""
    page.goto(f"{demo.url}/portal")
    formatted = page.evaluate(
        """() => [TB.formatMoney('0.30', 'USD'), TB.formatMoney('12345678901234567.89', 'USD'),
                  TB.formatMoney('-1234.50', 'EUR'), TB.formatMoney('1500', 'JPY'),
                  TB.formatDecimal('12345.5'), TB.formatDecimal('0.0001'), String(0.1 + 0.2)]"""
    )
    assert formatted[:6] == [
        "$0.30",
        "$12,345,678,901,234,567.89",
        "-\u20ac1,234.50",
        "\u00a51,500",
        "12,345.5",
        "0.0001",
    ]
    assert formatted[6] == "0.30000000000000004"  # what float math would have shown


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
    if nav == "stripeReports":  # Stripe's routes are always there; its sections need Stripe turned on
        present = present and demo.runtime.settings.stripe.enabled
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


# -- the first hour: sign-in, a phone-sized screen, sections of features this server doesn't use ----------


def test_empty_sign_in_says_what_to_paste(page, demo):
    page.goto(f"{demo.url}/ui")
    page.click("#login-form button[type=submit]")
    assert "Paste an admin API key" in page.inner_text("#login-error")
    assert page.is_hidden("#nav")


@pytest.mark.parametrize("hash_path", ["#/overview", "#/meters/api_calls", "#/customers", "#/events"])
def test_nothing_is_wider_than_a_phone(browser, demo, hash_path):
    context = browser.new_context(viewport={"width": 390, "height": 844})
    phone = context.new_page()
    try:
        login(phone, demo, hash_path)
        phone.wait_for_selector("#page h1")
        phone.wait_for_selector("#page table, #page pre, #page .stat, #page p.muted")
        width = phone.evaluate("[document.documentElement.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"{hash_path}: the page is {width[0]}px wide on a {width[1]}px screen"
        nav = phone.evaluate("document.getElementById('nav').getBoundingClientRect().right")
        assert nav <= width[1]
        shot(phone, f"phone-{hash_path.strip('#/').replace('/', '-')}")
    finally:
        context.close()


def test_stripe_sections_stay_hidden_when_stripe_is_off(page, demo):
    assert not demo.runtime.settings.stripe.enabled
    answers: list[str] = []
    page.on("response", lambda r: answers.append(f"{r.status} {r.url}") if r.status >= 400 else None)
    login(page, demo)
    page.wait_for_selector("#ingest-stats .stat")
    assert page.query_selector("#stripe-health") is None
    assert page.query_selector("#nav a[data-page='stripeReports']") is None
    page.goto(f"{demo.url}/ui#/customers/{demo.customer_id('acme')}")
    page.wait_for_selector("#page h1")
    page.wait_for_selector("#portal-link", state="attached")
    assert page.query_selector("#customer-stripe") is None
    assert answers == []  # an unlinked customer's page asks nothing that answers 404


# -- invoices: real billing data (plan, subscription, events, the billing.invoice job) ---------------------------

UI_PLAN: dict[str, Any] = {
    "key": "ui_pro",
    "name": "UI Pro",
    "currency": "USD",
    "billingCadence": "P1M",
    "rateCards": [
        {"type": "flat_fee", "key": "platform", "name": "Platform fee", "price": {"type": "flat", "amount": "49"}},
        {
            "type": "usage_based",
            "key": "api_calls",
            "name": "API calls",
            "meterSlug": "api_calls",
            "price": {"type": "unit", "amount": "0.001"},
        },
        {
            "type": "usage_based",
            "key": "compute",
            "name": "Compute seconds",
            "meterSlug": "compute_seconds",
            "price": {
                "type": "tiered",
                "mode": "graduated",
                "tiers": [
                    {"upToAmount": "1000", "unitPrice": {"amount": "0.01"}, "flatPrice": {"amount": "5"}},
                    {"upToAmount": "10000", "unitPrice": {"amount": "0.008"}, "flatPrice": {"amount": "2"}},
                    {"unitPrice": {"amount": "0.005"}},
                ],
            },
        },
    ],
}


class Billing:
    """A billing server: the invoice of the month before last issued, last month's a draft."""

    def __init__(self, runtime: Runtime, server: LiveServer, admin_key: str, issued: str, draft: str) -> None:
        self.runtime = runtime
        self.url = server.url
        self.admin_key = admin_key
        self.issued = issued
        self.draft = draft

    def get(self, path: str) -> Any:
        response = httpx.get(f"{self.url}{path}", headers={"Authorization": f"Bearer {self.admin_key}"}, timeout=30)
        assert response.status_code == 200, response.text
        return response.json()


@pytest.fixture(scope="module")
def billing(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Billing]:
    from tallybook.clock import FixedClock
    from tests.billing_helpers import (
        build,
        client_for,
        create_customer,
        create_plan,
        ok,
        run_billing,
        send,
        subscribe,
    )

    # The server's clock is held still (so the job runs only when told), close to the browser's: the two
    # invoiced months are the two calendar months before this one.
    now = datetime.now(UTC)
    this_month = now.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    second = (this_month - timedelta(days=1)).replace(day=1)
    first = (second - timedelta(days=1)).replace(day=1)
    database = tmp_path_factory.mktemp("ui-billing") / "tallybook.db"
    clock = FixedClock(first)
    runtime = build(f"sqlite:///{database}", clock)
    try:
        with client_for(runtime) as api:
            create_plan(api, UI_PLAN)
            create_customer(api, "acme", name="Acme Corporation")
            subscribe(api, "acme", plan="ui_pro", activeFrom=first.isoformat(), alignment="calendar")
            clock.set(max(now, this_month + timedelta(hours=2)))  # past the invoice grace period
            # The first month: 10 010 API calls, 12 345.5 compute seconds (all three tiers); the second, a little.
            events = [
                ("api.calls", "acme", first + timedelta(days=day, hours=10), {"value": 1001}) for day in range(10)
            ]
            events += [
                ("compute", "acme", first + timedelta(days=4, hours=12), {"seconds": "12345.5"}),
                ("api.calls", "acme", second + timedelta(days=2, hours=9), {"value": 300}),
                ("compute", "acme", second + timedelta(days=2, hours=9), {"seconds": 300}),
            ]
            send(api, events)
            assert run_billing(runtime)["created"] >= 2
            found = ok(api.get("/api/v1/billing/invoices", params={"customerId": "acme"}))["items"]
            # A period's invoice has its usage lines (the subscription's first, "opening" invoice has only
            # the fee paid in advance).
            by_month = {
                invoice["period"]["from"][:7]: invoice["id"]
                for invoice in found
                if any(line["type"] == "usage_based" for line in invoice["lines"])
            }
            assert {f"{first:%Y-%m}", f"{second:%Y-%m}"} <= set(by_month), by_month
            issued, draft = by_month[f"{first:%Y-%m}"], by_month[f"{second:%Y-%m}"]
            assert ok(api.post(f"/api/v1/billing/invoices/{issued}/advance"))["status"] == "issued"
            link = {"stripeCustomerId": "cus_UiTest123", "stripeDefaultPaymentMethodId": "pm_UiTest456"}
            ok(api.put("/api/v1/customers/acme/stripe", json=link))
        admin = runtime.keys.create("browser tests (billing)", "admin").plaintext
        # This server bills through Stripe (so the dashboard shows its Stripe sections); its Stripe
        # jobs were never registered, so nothing here calls Stripe.
        runtime.settings = runtime.settings.model_copy(
            update={"stripe": runtime.settings.stripe.model_copy(update={"enabled": True})}
        )
        with LiveServer(runtime) as server:
            yield Billing(runtime, server, admin, issued=issued, draft=draft)
    finally:
        runtime.stop()


def _invoice_lines(page: Any) -> dict[str, dict[str, Any]]:
    """The detail page's lines by rate card key: name, quantity, unit price, amount and tier rows."""
    return page.evaluate(  # type: ignore[no-any-return]
        """() => Object.fromEntries([...document.querySelectorAll('#invoice-lines tr.invoice-line')].map((tr) => [
            tr.dataset.key, {
                name: tr.querySelector('.line-name').textContent,
                quantity: tr.querySelector('td.quantity').textContent,
                unitPrice: tr.querySelector('td.unit-price').textContent,
                amount: tr.querySelector('td.amount').textContent,
                tiers: [...tr.querySelectorAll('table.tiers tbody tr')].map((t) =>
                    [...t.querySelectorAll('td')].map((td) => td.textContent)),
            }]))"""
    )


def _expect_invoice_on_page(page: Any, invoice: dict[str, Any]) -> None:
    currency = invoice["currency"]
    shown = _invoice_lines(page)
    assert set(shown) == {line["rateCardKey"] for line in invoice["lines"]}
    for line in invoice["lines"]:
        row = shown[line["rateCardKey"]]
        assert row["name"] == line["name"]
        assert row["quantity"] == line.get("quantity", "")
        assert row["unitPrice"] == line.get("unitPrice", "")
        assert row["amount"] == f"{line['amount']} {currency}"
        expected_tiers = [
            [f"tier {t['tier']}", t["quantity"], t["unitPrice"], t["flatPrice"], f"{t['amount']} {currency}"]
            for t in line.get("tiers", [])
        ]
        assert row["tiers"] == expected_tiers
    totals = invoice["totals"]
    assert page.inner_text("#invoice-lines tfoot tr.subtotal td.num >> nth=1") == f"{totals['amount']} {currency}"
    assert page.inner_text("#invoice-lines tfoot tr.total td.num >> nth=1") == f"{totals['total']} {currency}"


def _record_stripe_sync(runtime: Runtime, invoice_id: str) -> None:
    """The sync row Stripe invoicing writes once the invoice is finalized in Stripe."""
    from tallybook.clock import to_micros
    from tallybook.stripe import sql_sync as invoice_sync

    now = to_micros(runtime.clock.now())
    with runtime.store.write() as conn:
        invoice_sync.ensure(conn, invoice_id, "stripe", now)
        revision = runtime.invoicing.get(invoice_id).revision
        invoice_sync.update(
            conn,
            invoice_id,
            {"status": "synced", "external_id": "in_test_42", "number": "TB-0042", "external_status": "open",
             "synced_revision": revision},
        )  # fmt: skip


def test_invoices_list_detail_approve_and_print(page, billing):
    login(page, billing, "#/overview")
    page.click("#nav a[data-page='invoices']")
    page.wait_for_selector("#invoice-list")
    listed = billing.get("/api/v1/billing/invoices")["items"]
    assert page.locator("#invoice-list tr[data-invoice]").count() == len(listed) >= 2
    for invoice in listed:
        row = page.locator(f"#invoice-list tr[data-invoice='{invoice['id']}']")
        assert row.locator(".badge").inner_text() == invoice["status"]
        assert row.locator("td.total").inner_text() == f"{invoice['totals']['total']} USD"
        assert "Acme Corporation" in row.inner_text()
    assert {i["status"] for i in listed} == {"draft", "issued"}

    # The draft (last month): lines, the tiered line's breakdown and the totals exactly as the API has them.
    page.click(f"#invoice-list tr[data-invoice='{billing.draft}'] a")
    page.wait_for_selector("#invoice-lines")
    draft = billing.get(f"/api/v1/billing/invoices/{billing.draft}")
    _expect_invoice_on_page(page, draft)
    assert page.query_selector("#invoice-actions button[data-action='mark-paid']") is None
    with page.expect_response(lambda r: r.url.endswith(f"/{billing.draft}/approve")) as answer:
        page.click("#invoice-actions button[data-action='approve']")
    assert answer.value.status == 200
    page.wait_for_selector("#invoice-status-badge:has-text('issued')")
    issued_now = billing.get(f"/api/v1/billing/invoices/{billing.draft}")
    assert issued_now["status"] == "issued" and "issuedAt" in issued_now
    _expect_invoice_on_page(page, issued_now)
    assert page.query_selector("#invoice-actions button[data-action='approve']") is None
    with page.expect_response(lambda r: r.url.endswith(f"/{billing.draft}/mark-paid")) as answer:
        page.click("#invoice-actions button[data-action='mark-paid']")
    assert answer.value.status == 200
    page.wait_for_selector("#invoice-status-badge:has-text('paid')")
    assert billing.get(f"/api/v1/billing/invoices/{billing.draft}")["status"] == "paid"
    assert page.query_selector("#invoice-actions button[data-action]") is None  # nothing more to do

    # The month before, issued earlier and (as Stripe invoicing would record it) finalized in Stripe:
    # every tier of the graduated card, with amounts beyond cents per tier, and Stripe's number.
    _record_stripe_sync(billing.runtime, billing.issued)
    page.goto(f"{billing.url}/ui#/invoices/{billing.issued}")
    page.wait_for_selector(f"h1:has-text('{billing.issued}')")
    page.wait_for_selector("#invoice-lines")
    january = billing.get(f"/api/v1/billing/invoices/{billing.issued}")
    _expect_invoice_on_page(page, january)
    assert page.inner_text("#invoice-number") == january["number"] == "TB-0042"
    assert "Stripe: open" in page.inner_text("#invoice-sync")
    compute = next(line for line in january["lines"] if line.get("rateCardKey") == "compute")
    assert [t["tier"] for t in compute["tiers"]] == [1, 2, 3]
    assert sum(Decimal(t["amount"]) for t in compute["tiers"]).quantize(Decimal("0.01")) == Decimal(compute["amount"])
    assert sum(Decimal(line["amount"]) for line in january["lines"]) == Decimal(january["totals"]["amount"])
    shot(page, "dashboard-invoice")

    # The printable view is the server's HTML invoice, with the same total.
    with page.context.expect_page() as popup_info:
        page.click("#printable")
    printable = popup_info.value
    printable.wait_for_load_state()
    printable.wait_for_selector("tfoot tr.total")
    # The page writes money for the customer (Babel, the profile's locale): $159.74 for "159.74".
    assert printable.inner_text("tfoot tr.total td.num >> nth=1") == f"${january['totals']['total']}"
    assert "Acme Corporation" in printable.inner_text("body")
    assert "issued" in (printable.text_content("h1 .status") or "")
    printable.set_viewport_size({"width": 1000, "height": 900})
    shot(printable, "dashboard-invoice-print")
    printable.close()


def test_invoice_list_filters_by_status(page, billing):
    login(page, billing, "#/invoices?status=issued")
    page.wait_for_selector("#invoice-list")
    issued = billing.get("/api/v1/billing/invoices?status=issued")["items"]
    shown = page.eval_on_selector_all("#invoice-list tr[data-invoice]", "rows => rows.map(r => r.dataset.invoice)")
    assert shown == [i["id"] for i in issued] and shown
    assert page.input_value("#invoice-status") == "issued"


def test_customer_page_shows_subscription_invoices_and_stripe_link(page, billing):
    customer = billing.runtime.customers.resolve("acme")
    login(page, billing, f"#/customers/{customer.id}")
    page.wait_for_selector("h1:has-text('Acme Corporation')")
    subscriptions = billing.get(f"/api/v1/subscriptions?customerId={customer.id}")["items"]
    assert len(subscriptions) == 1
    sub_row = page.wait_for_selector(f"#customer-subscriptions tr[data-subscription='{subscriptions[0]['id']}']")
    text = sub_row.inner_text()
    assert "ui_pro v1" in text and subscriptions[0]["status"] in text and subscriptions[0]["activeFrom"][:10] in text
    assert "P1M (calendar)" in text
    invoices = billing.get(f"/api/v1/billing/invoices?customerId={customer.id}")["items"]
    rows = page.locator("#customer-invoices tr[data-invoice]")
    assert rows.count() == len(invoices) >= 2
    for invoice in invoices:
        row = page.locator(f"#customer-invoices tr[data-invoice='{invoice['id']}']")
        assert row.locator("td.total").inner_text() == f"{invoice['totals']['total']} USD"
        assert row.locator(".badge").inner_text() == invoice["status"]
        assert f"{invoice['period']['from'][:10]} \u2013 {invoice['period']['to'][:10]}" in row.inner_text()
    stripe = page.inner_text("#customer-stripe")
    assert "cus_UiTest123" in stripe and "pm_UiTest456" in stripe
    shot(page, "dashboard-customer-billing")
    page.click(f"#customer-invoices tr[data-invoice='{invoices[0]['id']}'] a")
    page.wait_for_selector(f"h1:has-text('{invoices[0]['id']}')")
    page.wait_for_selector("#invoice-lines")


def test_invoice_lists_say_which_invoice_is_the_opening_one(page, billing):
    """Two invoices can share a period (the opening one bills the first fees in advance): a column says which."""
    customer = billing.runtime.customers.resolve("acme")
    invoices = billing.get(f"/api/v1/billing/invoices?customerId={customer.id}")["items"]
    kinds = {invoice["id"]: invoice["kind"] for invoice in invoices}
    assert set(kinds.values()) == {"opening", "period"}
    login(page, billing, f"#/customers/{customer.id}")
    page.wait_for_selector("#customer-invoices tr[data-invoice]")
    for invoice_id, kind in kinds.items():
        cell = page.inner_text(f"#customer-invoices tr[data-invoice='{invoice_id}'] td.invoice-kind")
        assert cell == ("opening (fees in advance)" if kind == "opening" else "period")


def test_portal_estimate_names_the_period_of_a_fee_billed_in_advance(page, billing):
    admin = {"Authorization": f"Bearer {billing.admin_key}"}
    issued = httpx.post(f"{billing.url}/api/v1/portal/tokens", json={"customerId": "acme"}, headers=admin)
    token = issued.json()["token"]
    estimate = httpx.get(f"{billing.url}/api/v1/portal/invoice-estimate", headers={"Authorization": f"Bearer {token}"})
    [invoice] = estimate.json()["items"]
    elsewhere = [line for line in invoice["lines"] if line["period"] != invoice["period"]]
    assert [line["name"] for line in elsewhere] == ["Platform fee"]  # next period's fee, billed in advance
    page.goto(f"{billing.url}/portal?token={token}")
    row = page.wait_for_selector("#invoice-estimate tbody tr:has-text('Platform fee')")
    shown = row.query_selector(".line-period")
    assert shown is not None
    period = elsewhere[0]["period"]
    first = datetime.fromisoformat(period["from"].replace("Z", "+00:00"))  # acme's zone is UTC
    last = datetime.fromisoformat(period["to"].replace("Z", "+00:00")) - timedelta(microseconds=1)
    assert shown.inner_text() == f"{first:%b} {first.day} \u2013 {last:%b} {last.day}"
    assert len(page.query_selector_all("#invoice-estimate tbody tr .line-period")) == 1


def test_void_asks_first(page, billing):
    drafts = billing.get("/api/v1/billing/invoices?status=draft")["items"]
    assert drafts  # the subscription's opening invoice, at least
    invoice_id = drafts[0]["id"]
    login(page, billing, f"#/invoices/{invoice_id}")
    page.wait_for_selector("#invoice-lines")
    page.once("dialog", lambda dialog: dialog.dismiss())
    page.click("#invoice-actions button[data-action='void']")
    page.wait_for_timeout(300)
    assert billing.get(f"/api/v1/billing/invoices/{invoice_id}")["status"] == "draft"
    page.once("dialog", lambda dialog: dialog.accept())
    with page.expect_response(lambda r: r.url.endswith(f"/{invoice_id}/void")) as answer:
        page.click("#invoice-actions button[data-action='void']")
    assert answer.value.status == 200
    page.wait_for_selector("#invoice-status-badge:has-text('void')")
    voided = billing.get(f"/api/v1/billing/invoices/{invoice_id}")
    assert voided["status"] == "void" and "voidedAt" in voided
    _expect_invoice_on_page(page, voided)
