"""A rate card's entitlementTemplate: a subscription creates the customer's entitlements, a plan
change replaces them where the new subscription begins, a cancel ends them. SQLite and PostgreSQL."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import httpx
import pytest

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.billing_helpers import build, client_for, create_customer, create_plan, ok, send, subscribe
from tests.entitlement_helpers import T0, clock_fixture  # noqa: F401  (fixture clock)


def plan(key: str, calls: int, soft: bool = False) -> dict[str, Any]:
    return {
        "key": key,
        "name": key.title(),
        "currency": "USD",
        "billingCadence": "P1M",
        "rateCards": [
            {
                "type": "flat_fee",
                "key": "sso",
                "name": "SSO",
                "featureKey": "sso",
                "price": {"type": "flat", "amount": "10"},
                "entitlementTemplate": {"type": "boolean"},
            },
            {
                "type": "usage_based",
                "key": "api_calls",
                "name": "API calls",
                "meterSlug": "api_calls",
                "featureKey": "api_calls",
                "price": {"type": "unit", "amount": "0.001"},
                "entitlementTemplate": {"type": "metered", "issueAfterReset": calls, "isSoftLimit": soft},
            },
        ],
    }


@pytest.fixture
def rt(database_url: str, clock: FixedClock) -> Iterator[Runtime]:
    runtime = build(database_url, clock)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def client(rt: Runtime) -> Iterator[httpx.Client]:
    c = client_for(rt)
    try:
        yield c
    finally:
        c.close()


def access(client: httpx.Client) -> dict[str, Any]:
    return ok(client.get("/api/v1/customers/acme/access"))["entitlements"]  # type: ignore[no-any-return]


def features(client: httpx.Client) -> None:
    for key, name in (("sso", "SSO"), ("api_calls", "API calls")):
        body = {"key": key, "name": name, **({"meterSlug": "api_calls"} if key == "api_calls" else {})}
        ok(client.post("/api/v1/features", json=body), 201)


def test_subscription_creates_changes_and_ends_entitlements(client: httpx.Client, clock: FixedClock) -> None:
    features(client)
    basic = create_plan(client, plan("basic", 1000))
    card = basic["phases"][0]["rateCards"][1] if "phases" in basic else basic["rateCards"][1]
    assert card["entitlementTemplate"]["issueAfterReset"] == "1000" and card["featureKey"] == "api_calls"
    create_plan(client, plan("scale", 5000, soft=True))
    create_customer(client)
    sub = subscribe(client, "acme", plan="basic")
    now = access(client)
    assert set(now) == {"sso", "api_calls"} and now["api_calls"]["balance"] == 1000
    entitlement = ok(client.get("/api/v2/customers/acme/entitlements/api_calls"))
    assert entitlement["annotations"] == {"subscription.id": sub["id"]}
    assert entitlement["usagePeriod"]["interval"] == "MONTH"
    send(client, [("api.calls", "acme", T0 + timedelta(minutes=5), {"value": 1200})])
    clock.advance(timedelta(hours=1))
    assert access(client)["api_calls"]["hasAccess"] is False

    ok(client.post(f"/api/v1/subscriptions/{sub['id']}/change", json={"plan": {"key": "scale"}}))
    after = access(client)
    assert after["api_calls"]["balance"] == 5000 and after["api_calls"]["hasAccess"] is True
    listed = ok(client.get("/api/v2/customers/acme/entitlements", params={"includeDeleted": "true"}))["items"]
    by_sub: dict[str, int] = {}
    for item in listed:
        by_sub[item["annotations"]["subscription.id"]] = by_sub.get(item["annotations"]["subscription.id"], 0) + 1
    # The old subscription's two entitlements ended at the change; the new one's two began there.
    assert sub["id"] in by_sub and sorted(by_sub.values()) == [2, 2]
    new_id = next(k for k in by_sub if k != sub["id"])
    ok(client.post(f"/api/v1/subscriptions/{new_id}/cancel", json={}))
    assert access(client) == {}


def test_template_refusals(client: httpx.Client) -> None:
    body = plan("bad", 10)
    body["rateCards"][1]["entitlementTemplate"] = {"type": "metered", "usagePeriod": "monthly"}
    refused = client.post("/api/v1/plans", json=body)
    assert refused.status_code == 400 and "usagePeriod" in refused.text
    body = plan("bad", 10)
    del body["rateCards"][0]["featureKey"]
    refused = client.post("/api/v1/plans", json=body)
    assert refused.status_code == 400 and "featureKey" in refused.text
    body = plan("bad", 10)
    body["rateCards"][0]["entitlementTemplate"] = {"type": "static", "config": "{nope"}
    refused = client.post("/api/v1/plans", json=body)
    assert refused.status_code == 400 and "config" in refused.text


def test_cancelling_a_deleted_customers_subscription_ends_its_entitlements(
    client: httpx.Client, rt: Runtime, clock: FixedClock, caplog: pytest.LogCaptureFixture
) -> None:
    """The subscription listener reads a deleted customer's subscriptions by id (it used to resolve
    a live customer, fail, and leave the entitlements running)."""
    features(client)
    create_plan(client, plan("basic", 1000))
    customer_id = create_customer(client)["id"]
    sub = subscribe(client, "acme", plan="basic")
    assert set(access(client)) == {"sso", "api_calls"}
    ok(client.delete("/api/v1/customers/acme"), 204)
    clock.advance(timedelta(hours=1))
    caplog.clear()
    with caplog.at_level(logging.WARNING):
        ok(client.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={}))
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == []
    entitlements = rt.entitlements.entitlements([customer_id], include_deleted=True)
    assert sorted(e.feature_key for e in entitlements) == ["api_calls", "sso"]
    now = clock.now()
    for entitlement in entitlements:
        assert entitlement.annotations == {"subscription.id": sub["id"]}
        assert entitlement.active_to is not None and entitlement.active_to <= now
        assert not entitlement.active_at(now)
    # Nothing new is made for a deleted customer, even if a sync runs again.
    rt.subscriptions._changed(customer_id)
    assert len(rt.entitlements.entitlements([customer_id], include_deleted=True)) == 2


def test_a_deleted_plan_version_still_ends_its_entitlements(client: httpx.Client, rt: Runtime) -> None:
    """Archiving and deleting the plan a subscription uses does not stop the sync (the exact version
    stays readable); a cancel still ends the entitlements."""
    features(client)
    basic = create_plan(client, plan("basic", 1000))
    create_customer(client)
    sub = subscribe(client, "acme", plan="basic")
    ok(client.post(f"/api/v1/plans/{basic['id']}/archive"))
    ok(client.delete(f"/api/v1/plans/{basic['id']}"), 204)
    assert set(access(client)) == {"sso", "api_calls"}
    ok(client.post(f"/api/v1/subscriptions/{sub['id']}/cancel", json={}))
    assert access(client) == {}


def test_an_archived_feature_skips_only_its_template(client: httpx.Client, caplog: pytest.LogCaptureFixture) -> None:
    features(client)
    create_plan(client, plan("basic", 1000))
    ok(client.delete("/api/v1/features/sso"), 204)
    create_customer(client)
    with caplog.at_level(logging.WARNING):
        subscribe(client, "acme", plan="basic")
    assert set(access(client)) == {"api_calls"}
    skipped = [r for r in caplog.records if r.getMessage() == "entitlement from a plan's rate card not created"]
    assert [getattr(r, "feature", None) for r in skipped] == ["sso"]
