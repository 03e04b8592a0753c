"""/docs works offline: Swagger UI's assets ship in the package, so the page renders the API with
every request that would leave the machine blocked (in a real headless Chromium)."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest

from tests.test_ui_browser import _REASON, CHROMIUM, CHROMIUM_ARGS

pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]


@pytest.mark.parametrize("database_url", ["sqlite"], indirect=True)
def test_api_docs_render_with_no_network_beyond_this_machine(live_server):
    from playwright.sync_api import sync_playwright

    off_machine: list[str] = []

    def only_loopback(route):
        if urlsplit(route.request.url).hostname in ("127.0.0.1", "localhost"):
            route.continue_()
        else:
            off_machine.append(route.request.url)
            route.abort()

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            page.route("**/*", only_loopback)
            page.goto(f"{live_server.url}/docs")
            page.wait_for_selector(".opblock-summary-path", timeout=20_000)
            paths = page.eval_on_selector_all(".opblock-summary-path", "nodes => nodes.map(n => n.textContent)")
        finally:
            browser.close()
    assert "/api/v1/events" in " ".join(paths)
    assert off_machine == []
