"""The credit note and final correction examples in docs/invoicing.md are what the API answers.

Each ```json block after `<!-- example: name -->` is compared with the real answer of the scenario
below (a fixed clock, through the HTTP API), as tests/test_docs_examples.py compares console output:
a `"…"` value matches anything (ids, which are random), everything else must be equal.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import httpx

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tallybook.webhooks.service import ChannelInput, RuleInput
from tests.billing.test_subscription_life import approve, credit_notes, invoices, plan_variant
from tests.billing_helpers import create_customer, create_plan, ok, outbox, run_billing, send, subscribe, utc
from tests.test_docs_examples import _json_matches

DOC = (Path(__file__).resolve().parents[2] / "docs" / "invoicing.md").read_text(encoding="utf-8")


def documented(name: str) -> Any:
    match = re.search(rf"<!-- example: {name} -->\s*```json\n(.*?)```", DOC, re.S)
    assert match, f"docs/invoicing.md has no example named {name}"
    return json.loads(match.group(1))


def check(name: str, actual: Any) -> None:
    assert _json_matches(documented(name), actual), f"{name} now answers:\n{json.dumps(actual, indent=1)}"


def scenario(rt: Runtime, api: httpx.Client, clock: FixedClock) -> dict[str, Any]:
    """Acme on a $49 plan with metered API calls from 1 January, canceled on 20 January; 5,000 calls
    for January arrive on 3 February, after January's invoice was issued; 2,000 of them are voided."""
    channel = rt.webhooks.create_channel(ChannelInput(name="billing", url="http://127.0.0.1:9/hook"))
    rt.webhooks.create_rule(RuleInput(type="invoice.credit_note.created", name="credit notes", channels=[channel.id]))
    create_plan(api, plan_variant("metered", "49", calls_price="0.00842"))
    create_customer(api)
    sub = subscribe(api, "acme", plan="metered", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    (opening,) = invoices(api, "opening")
    approve(api, opening)
    clock.set(utc(2026, 1, 20))
    send(api, [("api.calls", "acme", utc(2026, 1, 10), {"value": 1000})])
    ok(api.post(f"/api/v1/subscriptions/{sub['id']}/cancel"))
    (cancel_note,) = credit_notes(api)
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    approve(api, invoices(api, "period")[0])
    clock.set(utc(2026, 2, 3))
    send(api, [("api.calls", "acme", utc(2026, 1, 15, h), {"value": 1000}) for h in range(5)])
    (preview,) = ok(api.get("/api/v1/billing/customers/acme/invoices/simulate"))["items"]
    run_billing(rt)
    final = approve(api, invoices(api, "correction")[0])
    clock.set(utc(2026, 2, 4))
    window = {"from": "2026-01-15T00:00:00Z", "to": "2026-01-15T02:00:00Z"}
    body = {"filter": {"subject": "acme", "type": "api.calls", **window}, "reason": "double counted"}
    ok(api.post("/api/v1/events/void", json=body), 201)
    run_billing(rt)
    usage_note = next(n for n in credit_notes(api) if n["reason"] == "usage_correction")
    webhook = outbox(rt, "invoice.credit_note.created")[0]["body"]
    return {"cancel": cancel_note, "preview": preview, "final": final, "usage": usage_note, "webhook": webhook}


def test_the_documented_examples_are_real(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    answers = scenario(rt, api, clock)
    check("cancel-credit-note", answers["cancel"])
    check("final-correction-preview", answers["preview"])
    check("final-correction", answers["final"])
    check("usage-credit-note", answers["usage"])
    check("credit-note-webhook", answers["webhook"])
