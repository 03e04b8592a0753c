"""The official Python `openmeter` SDK's feature, entitlement and grant calls against a live
Tallybook server (SQLite and PostgreSQL): what its generated models parse is what we answer.

Every entitlement and grant call the SDK (1.0.0b236) has is made: features; v1 `/api/v1/entitlements`
list/get and `/api/v1/grants` list/void; v1 customer access and value; the v2 entitlement, customer
entitlement and grant groups; and the v1 *subject* entitlement group (create, list, get, delete,
override, grants list/create, value, history, reset).

The v1 subject group needs help to be reached. The SDK generates two classes named
`SubjectsOperations` and two sets of `build_subjects_{list,get,delete}_request` in one module
(`openmeter/_generated/operations/_operations.py`): the second ones (subject CRUD) shadow the first
(subject entitlements), and the client assigns `client.subjects` twice, so `client.subjects` is the
CRUD group and the entitlement methods' list/get/delete would build CRUD URLs. `subject_entitlements`
below compiles the SDK's own first class and first builders from that module's source into a copy of
its namespace and instantiates the class with the client's pipeline, config and (de)serializers, as
the client does for every group: the requests, serialization and response parsing are the SDK's.
"""

from __future__ import annotations

import ast
import inspect
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tests.conftest import LiveServer
from tests.entitlement_helpers import T0, rt_fixture, usage  # noqa: F401  (fixture rt)

openmeter = pytest.importorskip("openmeter")
from openmeter import models  # noqa: E402
from openmeter._generated.operations import _operations as generated  # noqa: E402

SHADOWED_BUILDERS = ("build_subjects_list_request", "build_subjects_get_request", "build_subjects_delete_request")
RECOVERED = (*SHADOWED_BUILDERS, "SubjectsOperations")


def subject_entitlements(client: Any) -> Any:
    """The SDK's generated v1 subject-entitlement operations (the first `SubjectsOperations` of its
    operations module, with the request builders it was generated with), bound to `client`."""
    tree = ast.parse(inspect.getsource(generated))
    first: dict[str, ast.stmt] = {}
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef) and node.name in RECOVERED and node.name not in first:
            first[node.name] = node
    assert set(first) == set(RECOVERED), "the SDK's generated module changed"
    namespace = dict(vars(generated))
    code = compile(ast.Module(body=list(first.values()), type_ignores=[]), generated.__file__, "exec")
    exec(code, namespace)  # the installed SDK's own source, nothing else
    operations = namespace["SubjectsOperations"]
    return operations(client._client, client._config, client._serialize, client._deserialize)


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0 + timedelta(hours=1))


@pytest.fixture
def server(rt: Runtime) -> Iterator[tuple[str, str]]:
    key = rt.keys.create("sdk", "admin").plaintext
    with LiveServer(rt) as live:
        yield live.url, key


def test_sdk_entitlement_and_grant_calls(server: tuple[str, str], rt: Runtime) -> None:
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    assert http.post("/api/v1/customers", json={"name": "Acme", "key": "acme"}).status_code == 201
    usage(http, *[(f"e{i}", 10, "2026-03-10T12:05:00Z") for i in range(3)], subject="acme")
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
    assert client.entitlements_v2.get(created["id"])["customerKey"] == "acme"
    assert client.customer_entitlements_v2.get("acme", "api_calls")["id"] == created["id"]
    assert len(client.grants.list()) == 2 and client.grants_v2.list()["totalCount"] == 2
    assert {g["amount"] for g in client.grants.list(feature=["api_calls"], order_by="amount")} == {100, 500}

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


def test_sdk_v1_subject_entitlement_calls(server: tuple[str, str], rt: Runtime) -> None:
    url, key = server
    http = httpx.Client(base_url=url, headers={"Authorization": f"Bearer {key}"})
    customer = {"name": "Acme", "key": "acme", "usageAttribution": {"subjectKeys": ["acme-app"]}}
    assert http.post("/api/v1/customers", json=customer).status_code == 201
    usage(http, *[(f"e{i}", 10, "2026-03-10T12:05:00Z") for i in range(2)], subject="acme-app")
    client = openmeter.Client(endpoint=url, token=key)
    subjects = subject_entitlements(client)
    client.features.create(models.FeatureCreateInputs(key="api_calls", name="API calls", meter_slug="api_calls"))
    client.features.create(models.FeatureCreateInputs(key="sso", name="SSO"))

    created = subjects.post(
        "acme-app",
        models.EntitlementMeteredCreateInputs(
            type="metered",
            feature_key="api_calls",
            usage_period=models.RecurringPeriodCreateInput(interval="MONTH"),
            issue_after_reset=100,
            measure_usage_from=T0,
        ),
    )
    assert created["type"] == "metered" and created["featureKey"] == "api_calls" and created["issueAfterReset"] == 100
    sso = subjects.post("acme-app", models.EntitlementBooleanCreateInputs(type="boolean", feature_key="sso"))
    assert sso["type"] == "boolean"
    # A v1 subject path and the v2 customer path name the same entitlement.
    assert client.customer_entitlements_v2.get("acme", "api_calls")["id"] == created["id"]
    assert sorted(e["featureKey"] for e in subjects.list("acme-app")) == ["api_calls", "sso"]
    assert subjects.get("acme-app", created["id"])["usagePeriod"]["interval"] == "MONTH"

    grant = subjects.create_grant(
        "acme-app",
        "api_calls",
        models.EntitlementGrantCreateInput(
            amount=50, priority=1, effective_at=T0, expiration=models.ExpirationPeriod(duration="DAY", count=2)
        ),
    )
    assert grant.amount == 50 and grant.expires_at == datetime(2026, 3, 12, 12, tzinfo=UTC)
    assert sorted(g.amount for g in subjects.get_grants("acme-app", "api_calls")) == [50, 100]
    value = subjects.get_entitlement_value("acme-app", "api_calls")
    # 20 used, from the priority-1 grant first.
    assert (value.has_access, value.balance, value.usage, value.overage) == (True, 130, 20, 0)
    assert subjects.get_entitlement_value("acme-app", "api_calls", time=T0).balance == 150
    assert subjects.get_entitlement_value("acme-app", "sso").has_access is True
    history = subjects.get_entitlement_history(
        "acme-app", created["id"], window_size="HOUR", from_parameter=T0, to=datetime(2026, 3, 10, 13, tzinfo=UTC)
    )
    assert [(w.usage, w.balance_at_start) for w in history.windowed_history] == [(20, 150)]
    assert history.burndown_history[0].balance_at_start == 150

    subjects.reset(
        "acme-app",
        created["id"],
        models.ResetEntitlementUsageInput(effective_at=datetime(2026, 3, 10, 12, 30, tzinfo=UTC)),
    )
    after = subjects.get_entitlement_value("acme-app", "api_calls")
    # The default grant goes back to 100; the 50 grant (30 left) has no rollover.
    assert (after.balance, after.usage) == (100, 0)

    replaced = subjects.override(
        "acme-app", "sso", models.EntitlementStaticCreateInputs(type="static", feature_key="sso", config='{"seats": 5}')
    )
    assert replaced["type"] == "static" and replaced["id"] != sso["id"]
    assert subjects.get_entitlement_value("acme-app", "sso").config == '{"seats": 5}'
    subjects.delete("acme-app", replaced["id"])
    assert [e["featureKey"] for e in subjects.list("acme-app")] == ["api_calls"]
    assert len(subjects.list("acme-app", include_deleted=True)) == 3
    http.close()
