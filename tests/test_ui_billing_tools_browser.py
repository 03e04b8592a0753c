"""The dashboard's unbilled-usage page and an invoice's PDF download, in a real headless Chromium
(as tests/test_ui_browser.py: Debian's Chromium driven by Playwright; skips without them, fails
under CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest

from tallybook.clock import FixedClock
from tests.billing_helpers import build, client_for, create_customer, create_plan, ok, run_billing, send, subscribe, utc
from tests.conftest import LiveServer
from tests.test_ui_browser import _REASON, CHROMIUM, CHROMIUM_ARGS, EXPECTED, SHOTS, shot

if _REASON and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser tests. {_REASON}", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.fixture
def site(tmp_path: Any) -> Iterator[dict[str, Any]]:
    clock = FixedClock(utc(2026, 1, 1))
    runtime = build(f"sqlite:///{tmp_path / 'tallybook.db'}", clock)
    api = client_for(runtime)
    try:
        create_plan(api)
        create_customer(api, "acme")
        create_customer(api, "globex")
        subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
        run_billing(runtime)
        opening = ok(api.get("/api/v1/billing/invoices"))["items"][0]
        issued = ok(api.post(f"/api/v1/billing/invoices/{opening['id']}/approve"))
        clock.set(utc(2026, 2, 3))
        send(
            api,
            [
                ("api.calls", "globex", utc(2026, 1, 7), {"value": 7}),
                ("api.calls", "ghost", utc(2026, 1, 9), {"value": 2}),
            ],
        )
        admin = runtime.keys.create("browser tests", "admin").plaintext
        with LiveServer(runtime) as server:
            yield {"url": server.url, "key": admin, "invoice": issued}
    finally:
        api.close()
        runtime.stop()


@pytest.fixture
def page(site: dict[str, Any]) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900}, accept_downloads=True)
        tab = context.new_page()
        errors: list[str] = []
        tab.on("pageerror", lambda exc: errors.append(str(exc)))
        tab.on(
            "console",
            lambda msg: errors.append(msg.text) if msg.type == "error" and not EXPECTED.search(msg.text) else None,
        )
        tab.set_default_timeout(15_000)
        try:
            yield tab
            assert errors == [], errors
        finally:
            context.close()
            browser.close()


def login(page: Any, site: dict[str, Any], hash_path: str) -> None:
    page.goto(f"{site['url']}/ui#{hash_path}")
    page.fill("#api-key", site["key"])
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")


def test_the_unbilled_page_lists_each_reason(page: Any, site: dict[str, Any]) -> None:
    login(page, site, "/unbilled?from=2026-01-01&to=2026-02-01")
    page.wait_for_selector("#unbilled-list")
    assert page.locator("#nav a[data-page='unbilled']").count() == 1
    rows = page.locator("tr.unbilled-row")
    assert rows.count() == 2
    assert page.inner_text("#unbilled-count") == "2 row(s)"
    texts = [rows.nth(i).inner_text() for i in range(2)]
    assert "no subscription at the time" in texts[0] and "Globex Inc." in texts[0] and "7" in texts[0]
    assert "subject without a customer" in texts[1] and "ghost" in texts[1]
    shot(page, "dashboard-unbilled")
    page.select_option("#unbilled-reason", "subject_without_customer")
    page.click("#unbilled-apply")
    # (No wait_for_function: the dashboard's CSP forbids the eval it relies on.)
    page.wait_for_selector("tr.unbilled-row >> nth=0")
    page.wait_for_selector("tr.unbilled-row >> nth=1", state="detached")
    assert "ghost" in page.inner_text("tr.unbilled-row")
    page.fill("#unbilled-from", "2026-03-01")
    page.fill("#unbilled-to", "2026-04-01")
    page.click("#unbilled-apply")
    page.wait_for_selector("#unbilled-empty")


def test_an_invoice_downloads_as_pdf(page: Any, site: dict[str, Any]) -> None:
    invoice = site["invoice"]
    login(page, site, f"/invoices/{invoice['id']}")
    page.wait_for_selector("#download-pdf")
    assert page.inner_text("#invoice-number") == invoice["number"] == "INV-0001"
    with page.expect_download() as waiting:
        page.click("#download-pdf")
    download = waiting.value
    assert download.suggested_filename == "INV-0001.pdf"
    with open(download.path(), "rb") as handle:
        assert handle.read(5) == b"%PDF-"
