"""The receiver in docs/webhooks.md works: Tallybook delivers to it, it verifies both signatures,
and it refuses requests signed with another secret."""

from __future__ import annotations

import re
import threading
from http.server import HTTPServer
from pathlib import Path
from typing import Any

import pytest

from tallybook.webhooks.service import OutboxMessage
from tests.test_webhook_helpers import SECRET, TEMPLATE_SECRET, build_runtime, now_clock

DOC = Path(__file__).resolve().parent.parent / "docs" / "webhooks.md"


def documented_receiver() -> dict[str, Any]:
    code = documented_receiver_source()
    namespace: dict[str, Any] = {"__name__": "documented_receiver"}
    exec(compile(code, str(DOC), "exec"), namespace)
    return namespace


@pytest.mark.parametrize("secret", [SECRET, TEMPLATE_SECRET])
def test_the_documented_receiver_verifies_real_deliveries(sqlite_url, secret, capsys):
    receiver = documented_receiver()
    receiver["SECRET"] = secret
    server = HTTPServer(("127.0.0.1", 0), receiver["Receiver"])
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}/webhooks/metering"
    clock = now_clock()  # the receiver checks timestamps against real time
    runtime = build_runtime(
        sqlite_url,
        clock,
        endpoints=[{"url": url, "secret": secret}, {"url": url + "?wrong", "secret": "whsec_" + "A" * 32}],
    )
    try:
        payload = {"type": "aggregation.completed", "customerId": "cust_123", "period": "daily", "data": {}}
        with runtime.store.write() as conn:
            destinations = runtime.webhooks.destinations(conn, "aggregation.completed")
            event = runtime.webhooks.enqueue(
                conn, OutboxMessage("aggregation.completed", "doc|1", payload), destinations, clock.now()
            )
        assert event is not None
        report = {r.name: r.result for r in runtime.jobs.run_once()}["webhooks.deliver"]
        # Accepted (204) with the right secret; refused (401, so retried) with the wrong one.
        assert (report["delivered"], report["retrying"]) == (1, 1)
        assert f"{event.id} aggregation.completed cust_123 {{}}" in capsys.readouterr().out
    finally:
        runtime.stop()
        server.shutdown()
        server.server_close()


def test_the_readme_shows_the_same_tested_receiver():
    """README's verification example is the code the test above runs, not a copy that can drift."""
    readme = (DOC.parent.parent / "README.md").read_text(encoding="utf-8")
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    [code] = [b for b in blocks if "def verify_standard" in b]
    assert code == documented_receiver_source()


def documented_receiver_source() -> str:
    blocks = re.findall(r"```python\n(.*?)```", DOC.read_text(encoding="utf-8"), flags=re.S)
    [code] = [b for b in blocks if "def verify_standard" in b]
    return code
