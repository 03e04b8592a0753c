"""The dashboard's customer page and the customer portal show entitlements, balances and grants, in
a real headless Chromium (as tests/test_ui_browser.py: skips without it, fails under CI)."""

from __future__ import annotations

import os
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

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


@pytest.fixture
def site(tmp_path: Any) -> Iterator[tuple[str, str, str]]:
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
        admin = runtime.keys.create("browser tests", "admin").plaintext
        with LiveServer(runtime) as server:
            api = httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {admin}"})
            customer = api.post("/api/v1/customers", json={"name": "Acme", "key": "acme"}).json()
            api.post("/api/v1/features", json={"key": "api_calls", "name": "API calls", "meterSlug": "api_calls"})
            api.post("/api/v1/features", json={"key": "sso", "name": "SSO"})
            start = (datetime.now(UTC) - timedelta(hours=1)).replace(second=0, microsecond=0)
            body = {
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "MONTH"},
                "issueAfterReset": 1000,
                "measureUsageFrom": start.isoformat(),
            }
            assert api.post("/api/v2/customers/acme/entitlements", json=body).status_code == 201
            assert (
                api.post(
                    "/api/v2/customers/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}
                ).status_code
                == 201
            )
            runtime.ingest.ingest(
                [Event("app", "e1", "api.calls", "acme", to_micros(start + timedelta(minutes=5)), {"value": 250})]
            )
            token = api.post("/api/v1/portal/tokens", json={"customerId": "acme"}).json()["token"]
            api.close()
            yield server.url, admin, f"{customer['id']}|{token}"
    finally:
        runtime.stop()


@pytest.fixture
def page() -> Iterator[Any]:
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


def test_dashboard_and_portal_show_entitlements(page: Any, site: tuple[str, str, str]) -> None:
    url, admin, ids = site
    customer_id, token = ids.split("|")
    page.goto(f"{url}/ui#/customers/{customer_id}")
    page.fill("#api-key", admin)
    page.click("#login-form button[type=submit]")
    page.wait_for_selector("#customer-entitlements tr[data-feature='api_calls']")
    row = page.inner_text("#customer-entitlements tr[data-feature='api_calls']")
    assert "750" in row and "250" in row and "metered" in row
    assert "yes" in page.inner_text("#customer-entitlements tr[data-feature='sso']")
    assert page.locator("#customer-entitlements tr[data-grant]").count() == 1
    shot(page, "customer-entitlements")

    page.goto(f"{url}/portal?token={token}")
    page.wait_for_selector("#portal-entitlements tr[data-feature='api_calls']")
    assert page.inner_text("#portal-entitlements tr[data-feature='api_calls'] .entitlement-balance") == "750"
    shot(page, "portal-entitlements")
