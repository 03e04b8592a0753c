"""entitlements.balance.threshold and entitlements.reset rules: crossings are sent once per threshold
and usage period, through the outbox and signed delivery; a void that uncrosses a threshold sends
nothing and the next crossing is sent again; rules/{id}/test sends a sample. SQLite and PostgreSQL."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.entitlement_helpers import admin_fixture, clock_fixture, ok, rt_fixture, setup_acme, usage  # noqa: F401  (fixtures)
from tests.test_webhook_helpers import Receiver, standard_signature_ok


def payloads(receiver: Receiver) -> list[dict[str, Any]]:
    return [jsonutil.loads(r.body) for r in receiver.requests]


def run_jobs(rt: Runtime) -> None:
    for result in rt.jobs.run_once():
        assert result.error is None, result


def test_thresholds_once_per_period_and_again_after_a_void(admin: httpx.Client, rt: Runtime, clock: FixedClock) -> None:
    setup_acme(admin)
    ok(
        admin.post(
            "/api/v2/customers/acme/entitlements",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "DAY"},
                "issueAfterReset": 100,
            },
        ),
        201,
    )
    with Receiver() as receiver:
        channel = ok(
            admin.post("/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "app", "url": receiver.url}),
            201,
        )
        rule = ok(
            admin.post(
                "/api/v1/notification/rules",
                json={
                    "type": "entitlements.balance.threshold",
                    "name": "80 and 100 percent",
                    "channels": [channel["id"]],
                    "features": ["api_calls"],
                    "thresholds": [{"value": 80, "type": "PERCENT"}, {"value": 100, "type": "PERCENT"}],
                },
            ),
            201,
        )
        assert rule["thresholds"] == [{"value": 80, "type": "PERCENT"}, {"value": 100, "type": "PERCENT"}]
        ok(
            admin.post(
                "/api/v1/notification/rules",
                json={"type": "entitlements.reset", "name": "resets", "channels": [channel["id"]]},
            ),
            201,
        )
        run_jobs(rt)
        assert receiver.requests == []
        usage(admin, ("a", 85, "2026-03-10T12:10:00Z"))
        clock.advance(timedelta(minutes=30))
        run_jobs(rt)
        first = receiver.wait_for(1)
        assert standard_signature_ok(channel["signingSecret"], first[0])
        body = jsonutil.loads(first[0].body)
        assert body["type"] == "entitlements.balance.threshold"
        assert body["data"]["threshold"] == {"value": 80, "type": "PERCENT"}
        assert body["data"]["value"]["usage"] == 85 and body["data"]["customer"]["key"] == "acme"
        run_jobs(rt)  # nothing new: 80 % is sent once
        assert len(receiver.requests) == 1
        usage(admin, ("b", 20, "2026-03-10T12:20:00Z"))
        run_jobs(rt)
        receiver.wait_for(2)
        assert payloads(receiver)[1]["data"]["threshold"]["value"] == 100
        # A void uncrosses 100 %: nothing is sent; crossing it again is sent again.
        ok(admin.post("/api/v1/events/void", json={"events": [{"source": "app", "id": "b"}], "reason": "test"}), 201)
        run_jobs(rt)
        assert len(receiver.requests) == 2
        usage(admin, ("c", 20, "2026-03-10T12:25:00Z"))
        run_jobs(rt)
        receiver.wait_for(3)
        assert payloads(receiver)[2]["data"]["threshold"]["value"] == 100
        # The next day is a new usage period: one reset event, and thresholds start over.
        clock.set(datetime(2026, 3, 11, 12, 1, tzinfo=UTC))
        run_jobs(rt)
        receiver.wait_for(4)
        reset = payloads(receiver)[3]
        assert reset["type"] == "entitlements.reset"
        assert reset["data"]["entitlement"]["currentUsagePeriod"]["from"] == "2026-03-11T12:00:00Z"
        run_jobs(rt)
        assert len(receiver.requests) == 4
        usage(admin, ("d", 80, "2026-03-11T12:00:30Z"))
        run_jobs(rt)
        receiver.wait_for(5)
        assert payloads(receiver)[4]["data"]["threshold"]["value"] == 80


def test_number_thresholds_and_manual_reset(admin: httpx.Client, rt: Runtime, clock: FixedClock) -> None:
    setup_acme(admin)
    ok(
        admin.post(
            "/api/v1/subjects/acme/entitlements",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "MONTH"},
                "issueAfterReset": 1000,
            },
        ),
        201,
    )
    with Receiver() as receiver:
        channel = ok(
            admin.post("/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "app", "url": receiver.url}),
            201,
        )
        for body in (
            {"type": "entitlements.balance.threshold", "thresholds": [{"value": 500, "type": "NUMBER"}]},
            {"type": "entitlements.reset"},
        ):
            ok(admin.post("/api/v1/notification/rules", json={**body, "name": "r", "channels": [channel["id"]]}), 201)
        run_jobs(rt)
        usage(admin, ("a", 499, "2026-03-10T12:10:00Z"))
        clock.advance(timedelta(hours=1))
        run_jobs(rt)
        assert receiver.requests == []
        usage(admin, ("b", 1, "2026-03-10T12:11:00Z"))
        run_jobs(rt)
        receiver.wait_for(1)
        ok(admin.post("/api/v2/customers/acme/entitlements/api_calls/reset", json={}), 204)
        run_jobs(rt)
        receiver.wait_for(2)
        assert [p["type"] for p in payloads(receiver)] == ["entitlements.balance.threshold", "entitlements.reset"]


def test_rule_test_sends_a_sample_and_refusals(admin: httpx.Client, rt: Runtime) -> None:
    with Receiver() as receiver:
        channel = ok(
            admin.post("/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "app", "url": receiver.url}),
            201,
        )
        rule = ok(
            admin.post(
                "/api/v1/notification/rules",
                json={
                    "type": "entitlements.balance.threshold",
                    "name": "t",
                    "channels": [channel["id"]],
                    "thresholds": [{"value": 90, "type": "PERCENT"}],
                },
            ),
            201,
        )
        event = ok(admin.post(f"/api/v1/notification/rules/{rule['id']}/test"), 201)
        assert event["payload"]["test"] is True and event["payload"]["data"]["threshold"]["value"] == 90
        run_jobs(rt)
        sent = receiver.wait_for(1)
        assert standard_signature_ok(channel["signingSecret"], sent[0])
        missing = admin.post(
            "/api/v1/notification/rules",
            json={"type": "entitlements.balance.threshold", "name": "t", "channels": [channel["id"]]},
        )
        assert missing.status_code == 400 and "thresholds" in missing.json()["detail"]
        wrong = admin.post(
            "/api/v1/notification/rules",
            json={
                "type": "report.meter",
                "name": "t",
                "channels": [channel["id"]],
                "thresholds": [{"value": 1, "type": "NUMBER"}],
            },
        )
        assert wrong.status_code == 400
        assert admin.post("/api/v1/notification/rules/01JNOPE000000000000000000/test").status_code == 404


def test_a_broken_entitlement_fails_alone(admin: httpx.Client, rt: Runtime, clock: FixedClock) -> None:
    """A feature whose meter was deleted: its entitlement answers no access (and why) in `access`,
    the customer's other features answer as usual, and the notifier records the failure and still
    alerts the other customers."""
    setup_acme(admin)
    ok(admin.post("/api/v1/customers", json={"name": "Other", "key": "other"}), 201)
    ok(
        admin.post(
            "/api/v1/meters",
            json={"slug": "doomed", "eventType": "doomed", "aggregation": "COUNT"},
        ),
        201,
    )
    ok(admin.post("/api/v1/features", json={"key": "doomed", "name": "Doomed", "meterSlug": "doomed"}), 201)
    period = {"usagePeriod": {"interval": "DAY"}, "issueAfterReset": 10}
    ok(
        admin.post("/api/v2/customers/acme/entitlements", json={"type": "metered", "featureKey": "doomed", **period}),
        201,
    )
    for customer in ("acme", "other"):
        body = {"type": "metered", "featureKey": "api_calls", **period}
        ok(admin.post(f"/api/v2/customers/{customer}/entitlements", json=body), 201)
    with Receiver() as receiver:
        channel = ok(
            admin.post("/api/v1/notification/channels", json={"type": "WEBHOOK", "name": "app", "url": receiver.url}),
            201,
        )
        rule = {
            "type": "entitlements.balance.threshold",
            "name": "r",
            "channels": [channel["id"]],
            "thresholds": [{"value": 5, "type": "NUMBER"}],
        }
        ok(admin.post("/api/v1/notification/rules", json=rule), 201)
        run_jobs(rt)
        assert admin.delete("/api/v1/meters/doomed").status_code == 204
        usage(admin, ("o1", 6, "2026-03-10T12:05:00Z"), subject="other")
        usage(admin, ("a1", 6, "2026-03-10T12:05:00Z"))
        clock.advance(timedelta(minutes=30))
        access = ok(admin.get("/api/v1/customers/acme/access"))["entitlements"]
        assert access["api_calls"]["balance"] == 4
        assert access["doomed"]["hasAccess"] is False and "doomed" in access["doomed"]["error"]
        results = {r.name: r for r in rt.jobs.run_once()}
        assert results["entitlements.notify"].failed_items == 1
        sent = receiver.wait_for(2)
        customers = sorted(jsonutil.loads(r.body)["data"]["customer"]["key"] for r in sent)
        assert customers == ["acme", "other"]
        failures = ok(admin.get("/api/v1/jobs/failures"))
        assert any(f["job"] == "entitlements.notify" for f in failures["items"])
