"""The dashboard's overview lists failed job items and partial runs (real headless Chromium; skips
without it, like tests/test_ui_browser.py whose fixtures it uses)."""

from __future__ import annotations

import pytest

from tests.test_ui_browser import _REASON, Demo, browser, demo, login, page, shot  # noqa: F401  (fixtures)

pytestmark = [pytest.mark.slow, pytest.mark.skipif(_REASON is not None, reason=_REASON or "")]

ITEM = "cust_x|USD|period|2026-01-01T00:00:00Z"


def test_overview_lists_failed_job_items(page, demo: Demo):  # noqa: F811
    failures = demo.runtime.jobs.failures
    with failures.run("billing.invoice") as run:
        run.fail("invoice", ITEM, RuntimeError("usage of cust_x cannot be read"), customerId="cust_x")
    try:
        login(page, demo)
        row = page.wait_for_selector("#job-failures tr.job-failure")
        assert row is not None
        text = row.inner_text()
        assert "billing.invoice" in text and f"invoice {ITEM}" in text and "customerId cust_x" in text
        assert "RuntimeError: usage of cust_x cannot be read" in text
        shot(page, "dashboard-job-failures")
    finally:
        with failures.run("billing.invoice") as run:
            run.ok("invoice", ITEM)
    assert failures.list()[0] == 0
