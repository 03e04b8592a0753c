"""Voiding an event from the dashboard's events page, in a real headless Chromium (as
tests/test_ui_browser.py: Debian's Chromium driven by Playwright; skips without them, fails under CI).

The void needs a reason; the event then leaves the list and the meter, and with "Show voided" it is
listed struck through with when it was voided."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from tallybook import jsonutil
from tallybook.clock import to_micros
from tallybook.config import Settings
from tallybook.ingest.events import Event
from tallybook.runtime import Runtime
from tests.conftest import LiveServer
from tests.test_ui_browser import _REASON, CHROMIUM, CHROMIUM_ARGS, EXPECTED, SHOTS, shot

if _REASON and os.environ.get("CI"):
    pytest.fail(f"CI must run the browser tests. {_REASON}", pytrace=False)
pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

METERS = [{"slug": "api_calls", "eventType": "api.calls", "aggregation": "SUM", "valueProperty": "$.value"}]
WHEN = datetime(2026, 3, 10, 9, 0, tzinfo=UTC)


class Site:
    def __init__(self, runtime: Runtime, url: str, admin_key: str) -> None:
        self.runtime = runtime
        self.url = url
        self.admin_key = admin_key

    def total(self) -> str:
        with httpx.Client(base_url=self.url, headers={"Authorization": f"Bearer {self.admin_key}"}) as client:
            params = {"from": "2026-03-01T00:00:00Z", "to": "2026-04-01T00:00:00Z"}
            response = client.get("/api/v1/meters/api_calls/query", params=params)
            response.raise_for_status()
            rows = jsonutil.loads(response.content)["data"]
            return str(rows[0]["value"]) if rows else "0"


@pytest.fixture
def site(tmp_path: Any) -> Iterator[Site]:
    settings = Settings.model_validate(
        {
            "database": {"url": f"sqlite:///{tmp_path / 'tallybook.db'}"},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "meters": {"definitions": METERS},
        }
    )
    runtime = Runtime.build(settings)
    runtime.start()
    try:
        runtime.ingest.ingest(
            [
                Event("app", "keep-me", "api.calls", "acme", to_micros(WHEN), {"value": 5}),
                Event("app", "void-me", "api.calls", "acme", to_micros(WHEN) + 60_000_000, {"value": 7}),
            ]
        )
        admin = runtime.keys.create("browser tests", "admin").plaintext
        with LiveServer(runtime) as server:
            yield Site(runtime, server.url, admin)
    finally:
        runtime.stop()


@pytest.fixture
def page(site: Site) -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    SHOTS.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        context = browser.new_context(viewport={"width": 1366, "height": 900})
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


def test_void_an_event_with_a_reason_then_see_it_struck_through(page: Any, site: Site) -> None:
    assert site.total() == "12"
    page.goto(f"{site.url}/ui#/events?subject=acme")
    page.fill("#api-key", site.admin_key)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#nav:not([hidden])")
    page.wait_for_selector("tr[data-event-id='void-me']")

    page.click("tr[data-event-id='void-me'] button.void-event")
    page.wait_for_selector("#void-form")
    assert page.evaluate("document.activeElement.id") == "void-reason"
    # Without a reason nothing is sent.
    page.click("#void-form button[type=submit]")
    assert site.total() == "12"
    page.fill("#void-reason", "sent twice by a retry bug")
    page.click("#void-form button[type=submit]")
    page.wait_for_selector("#events-notice")
    assert "void-me voided" in page.inner_text("#events-notice")
    # The notice shows at once; the listing fills in when its fetch answers.
    page.wait_for_selector("tr[data-event-id='keep-me']")
    assert page.locator("tr[data-event-id='void-me']").count() == 0
    assert site.total() == "5"

    page.check("#f-voided")
    page.click("#event-filters button[type=submit]")
    row = page.wait_for_selector("tr.voided[data-event-id='void-me']")
    assert "voided" in row.inner_text()
    decoration = page.evaluate('getComputedStyle(document.querySelector("tr.voided td")).textDecorationLine')
    assert decoration == "line-through"
    assert page.locator("tr[data-event-id='void-me'] button.void-event").count() == 0
    row.click()
    page.wait_for_selector("#voided-note")
    assert "no longer counts" in page.inner_text("#voided-note")
    shot(page, "dashboard-event-voided")

    [record] = site.runtime.voids.list()[1]
    assert record.reason == "sent twice by a retry bug"
    assert record.actor.name == "browser tests"
