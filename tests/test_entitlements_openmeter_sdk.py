"""The official Python `openmeter` SDK's feature, entitlement and grant calls against a live
Tallybook server (SQLite and PostgreSQL): what its generated models parse is what we answer.

(The SDK's `client.subjects` is the subject CRUD group: its generated client assigns the name twice,
so the v1 subject-entitlement calls are not reachable through it; the customer v1/v2 ones are.)
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import pytest

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.conftest import LiveServer
from tests.test_entitlements_api import METERS
from tests.test_webhook_helpers import build_runtime

openmeter = pytest.importorskip("openmeter")
from openmeter import models  # noqa: E402

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


@pytest.fixture
def rt(database_url: str) -> Iterator[Runtime]:
    runtime = build_runtime(database_url, FixedClock(datetime(2026, 3, 10, 13, 0, tzinfo=UTC)), meters=METERS)
    try:
        yield runtime
    finally:
        runtime.stop()


@pytest.fixture
def server(rt: Runtime) -> Iterator[tuple[str, str]]:
    key = rt.keys.create("sdk", "admin").plaintext
    with LiveServer(rt) as live:
        yield live.url, key


def test_sdk_entitlement_and_grant_calls(server: tuple[str, str], rt: Runtime) -> None:
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    assert http.post("/api/v1/customers", json={"name": "Acme", "key": "acme"}).status_code == 201
    events = [
        {
            "specversion": "1.0",
            "id": f"e{i}",
            "source": "app",
            "type": "api.calls",
            "subject": "acme",
            "time": "2026-03-10T12:05:00Z",
            "data": {"value": 10, "model": "gpt"},
        }
        for i in range(3)
    ]
    ingested = http.post("/api/v1/events", json=events, headers={"Content-Type": "application/cloudevents-batch+json"})
    assert ingested.status_code == 204
    client = openmeter.Client(endpoint=url, token=key)

    feature = client.features.create(
        models.FeatureCreateInputs(key="api_calls", name="API calls", meter_slug="api_calls")
    )
    assert feature.key == "api_calls" and feature.meter_slug == "api_calls"
    # ListFeaturesResult is a union (array or page): the SDK hands back the parsed JSON.
    assert [f["key"] for f in client.features.list(meter_slug=["api_calls"])] == ["api_calls"]
    assert client.features.get(feature.id).name == "API calls"

    created = client.customer_entitlements_v2.post(
        "acme",
        models.EntitlementMeteredV2CreateInputs(
            type="metered",
            feature_key="api_calls",
            usage_period=models.RecurringPeriodCreateInput(interval="MONTH"),
            issue_after_reset=100,
            measure_usage_from=T0,
        ),
    )
    # Entitlements are a union (metered | static | boolean): the SDK hands back the parsed JSON.
    assert created["type"] == "metered" and created["customerKey"] == "acme"
    assert created["usagePeriod"]["interval"] == "MONTH" and created["issueAfterReset"] == 100
    grant = client.customer_entitlement_v2.create_customer_entitlement_grant(
        "acme",
        "api_calls",
        models.EntitlementGrantCreateInputV2(
            amount=500,
            priority=2,
            effective_at=T0,
            expiration=models.ExpirationPeriod(duration="MONTH", count=3),
            max_rollover_amount=100,
        ),
    )
    assert grant.amount == 500 and grant.expires_at == datetime(2026, 6, 10, 12, tzinfo=UTC)

    value = client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls")
    assert (value.has_access, value.balance, value.usage, value.overage) == (True, 570, 30, 0)
    v2_value = client.customer_entitlement_v2.get_customer_entitlement_value("acme", "api_calls")
    assert v2_value.balance == 570
    access = client.customer.get_customer_access("acme")
    assert access.entitlements["api_calls"].balance == 570

    grants = client.customer_entitlement_v2.get_grants("acme", "api_calls")
    # (a page model's `items` field is shadowed by the mapping method of the same name)
    assert {g["amount"] for g in grants["items"]} == {100, 500}
    history = client.customer_entitlement_v2.get_customer_entitlement_history(
        "acme", "api_calls", window_size="HOUR", from_parameter=T0, to=datetime(2026, 3, 10, 13, tzinfo=UTC)
    )
    assert history.windowed_history[0].usage == 30 and history.windowed_history[0].balance_at_start == 600

    listed = client.entitlements.list()
    assert [e["id"] for e in listed] == [created["id"]]
    assert client.entitlements.get(created["id"])["featureKey"] == "api_calls"
    assert [e["id"] for e in client.entitlements_v2.list()["items"]] == [created["id"]]
    assert client.customer_entitlements_v2.get("acme", "api_calls")["id"] == created["id"]
    assert len(client.grants.list()) == 2 and client.grants_v2.list()["totalCount"] == 2

    client.customer_entitlement_v2.reset_customer_entitlement(
        "acme", "api_calls", models.ResetEntitlementUsageInput(effective_at=datetime(2026, 3, 10, 12, 30, tzinfo=UTC))
    )
    after = client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls")
    # Default grant back to 100; the 500 grant (470 left) rolls over at most 100.
    assert (after.balance, after.usage) == (200, 0)

    client.grants.delete(grant.id)
    assert client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls").balance == 100

    replaced = client.customer_entitlements_v2.override(
        "acme", "api_calls", models.EntitlementBooleanCreateInputs(type="boolean", feature_key="api_calls")
    )
    assert replaced["type"] == "boolean"
    assert client.customer_entitlement.get_customer_entitlement_value("acme", "api_calls").has_access is True
    client.customer_entitlements_v2.delete("acme", "api_calls")
    assert client.customer_entitlements_v2.list("acme")["totalCount"] == 0
    client.features.delete(feature.id)
    http.close()
