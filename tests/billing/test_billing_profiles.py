"""Billing profiles through the API, on SQLite and PostgreSQL: OpenMeter's shapes, validation
problems, the read-only config profile and the default, customer overrides, `for_customers`, and
per-customer grace and approval in the billing.invoice run."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import event

from tallybook.billing.profiles_model import (
    CONFIG_PROFILE_ID,
    CUSTOM_INVOICING,
    SEND_INVOICE,
    STRIPE,
    format_iso_duration,
    parse_iso_duration,
)
from tallybook.clock import FixedClock
from tallybook.config import ConfigError, Settings, load_settings
from tallybook.runtime import Runtime
from tests.billing_helpers import build as build_runtime
from tests.billing_helpers import (
    client_for,
    create_customer,
    create_plan,
    ok,
    run_billing,
    subscribe,
    utc,
)
from tests.test_webhook_helpers import reset_database

PROFILES = "/api/v1/billing/profiles"


def profile_body(name: str = "Enterprise", **extra: Any) -> dict[str, Any]:
    return {"name": name, "supplier": {"name": "Example Ltd"}, **extra}


def create_profile(api: httpx.Client, name: str = "Enterprise", **extra: Any) -> dict[str, Any]:
    return ok(api.post(PROFILES, json=profile_body(name, **extra)), 201)  # type: ignore[no-any-return]


def problem(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    return response.json()  # type: ignore[no-any-return]


def listed(api: httpx.Client, **params: Any) -> dict[str, Any]:
    return ok(api.get(PROFILES, params=params))  # type: ignore[no-any-return]


def default_id(api: httpx.Client) -> str:
    defaults = [p["id"] for p in listed(api)["items"] if p["default"]]
    assert len(defaults) == 1, defaults
    return defaults[0]


# -- CRUD and shapes ------------------------------------------------------------------------------------
def test_the_config_profile_is_listed_and_is_the_default(api: httpx.Client) -> None:
    page = listed(api)
    assert (page["totalCount"], page["page"], page["pageSize"]) == (1, 1, 100)
    (config,) = page["items"]
    assert config["id"] == CONFIG_PROFILE_ID
    assert (config["name"], config["default"], config["source"]) == ("Default", True, "config")
    assert config["workflow"] == {
        "collection": {"alignment": {"type": "subscription"}, "interval": "PT1H"},
        "invoicing": {
            "autoAdvance": False,
            "draftPeriod": "P0D",
            "dueAfter": "P30D",
            "progressiveBilling": False,
            "defaultTaxConfig": {"behavior": "exclusive"},
        },
        "payment": {"collectionMethod": "charge_automatically", "autoCollect": True},
        "tax": {"enabled": False, "enforced": False},
    }
    assert config["apps"] == {t: {"type": CUSTOM_INVOICING} for t in ("tax", "invoicing", "payment")}
    assert ok(api.get(f"{PROFILES}/{CONFIG_PROFILE_ID}")) == config


def test_create_get_replace_delete(api: httpx.Client, clock: FixedClock) -> None:
    body = profile_body(
        description="Invoices sent by email",
        metadata={"team": "sales"},
        supplier={
            "name": "Example Ltd",
            "taxId": {"code": "GB123456789"},
            "addresses": [{"country": "GB", "city": "London", "line1": "1 Example Street", "postalCode": "EC1A 1BB"}],
        },
        workflow={
            "collection": {"interval": "P1D"},
            "invoicing": {"autoAdvance": False, "draftPeriod": "PT12H", "dueAfter": "P14D"},
            "payment": {"collectionMethod": "send_invoice"},
            "tax": {"enabled": True, "enforced": True},
        },
        apps={"tax": "custom_invoicing", "invoicing": {"type": "custom_invoicing"}, "payment": "custom_invoicing"},
    )
    created = api.post(PROFILES, json=body)
    profile = ok(created, 201)
    assert created.headers["location"] == f"{PROFILES}/{profile['id']}"
    assert profile["name"] == "Enterprise"
    assert (profile["default"], profile["source"], profile["metadata"]) == (False, "api", {"team": "sales"})
    assert profile["supplier"] == body["supplier"]
    assert profile["createdAt"] == profile["updatedAt"] == "2026-01-01T00:00:00Z"
    assert "deletedAt" not in profile
    assert profile["workflow"]["collection"]["interval"] == "P1D"
    assert profile["workflow"]["invoicing"] | {} == {
        "autoAdvance": False,
        "draftPeriod": "PT12H",
        "dueAfter": "P14D",
        "progressiveBilling": False,
        "defaultTaxConfig": {"behavior": "exclusive"},
    }
    assert profile["workflow"]["payment"] == {"collectionMethod": "send_invoice", "autoCollect": True}
    assert profile["workflow"]["tax"] == {"enabled": True, "enforced": True}
    assert ok(api.get(f"{PROFILES}/{profile['id']}")) == profile
    assert listed(api)["totalCount"] == 2

    # PUT replaces everything: what is left out takes its default (OpenMeter's), apps stay.
    clock.advance(timedelta(minutes=5))
    replaced = ok(api.put(f"{PROFILES}/{profile['id']}", json={"name": "Enterprise 2", "supplier": {"name": "X"}}))
    assert replaced["name"] == "Enterprise 2"
    assert "description" not in replaced
    assert replaced["metadata"] is None
    assert replaced["workflow"]["collection"]["interval"] == "PT1H"
    assert replaced["workflow"]["invoicing"]["autoAdvance"] is True
    assert replaced["workflow"]["payment"]["collectionMethod"] == "charge_automatically"
    assert replaced["workflow"]["tax"] == {"enabled": True, "enforced": False}
    assert replaced["apps"] == profile["apps"]
    assert (replaced["createdAt"], replaced["updatedAt"]) == ("2026-01-01T00:00:00Z", "2026-01-01T00:05:00Z")

    # A GET body sent back as it is (read-only fields included) is a valid PUT.
    again = ok(api.put(f"{PROFILES}/{profile['id']}", json=replaced))
    assert {k: v for k, v in again.items() if k != "updatedAt"} == {
        k: v for k, v in replaced.items() if k != "updatedAt"
    }

    assert api.delete(f"{PROFILES}/{profile['id']}").status_code == 204
    gone = ok(api.get(f"{PROFILES}/{profile['id']}"))
    assert gone["deletedAt"] == "2026-01-01T00:05:00Z"
    assert listed(api)["totalCount"] == 1
    assert listed(api, includeArchived="true")["totalCount"] == 2
    assert listed(api, includeDeleted="true")["totalCount"] == 2
    again_deleted = problem(api.delete(f"{PROFILES}/{profile['id']}"), 404)
    assert "was deleted at" in again_deleted["detail"]
    assert problem(api.put(f"{PROFILES}/{profile['id']}", json=profile_body()), 404)


def test_list_pages_and_orders(api: httpx.Client, clock: FixedClock) -> None:
    for name in ("b", "c", "a"):
        clock.advance(timedelta(seconds=1))
        create_profile(api, name)
    names = [p["name"] for p in listed(api)["items"]]
    assert names == ["Default", "b", "c", "a"]
    assert [p["name"] for p in listed(api, orderBy="name")["items"]] == ["a", "b", "c", "Default"]
    assert [p["name"] for p in listed(api, order="DESC")["items"]] == ["a", "c", "b", "Default"]
    page = listed(api, page=2, pageSize=3)
    assert (page["totalCount"], page["page"], page["pageSize"]) == (4, 2, 3)
    assert [p["name"] for p in page["items"]] == ["a"]
    assert problem(api.get(PROFILES, params={"orderBy": "size"}), 400)["detail"].startswith("orderBy")


def test_scopes(rt: Runtime, api: httpx.Client) -> None:
    read = {"Authorization": f"Bearer {rt.keys.create('reader', 'read').plaintext}"}
    assert api.get(PROFILES, headers=read).status_code == 200
    assert api.get(f"{PROFILES}/{CONFIG_PROFILE_ID}", headers=read).status_code == 200
    assert problem(api.post(PROFILES, json=profile_body(), headers=read), 403)["detail"].endswith("needs 'admin'")
    assert api.get(PROFILES, headers={"Authorization": "Bearer nope"}).status_code == 401


# -- validation ------------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("body", "field", "message"),
    [
        ({"supplier": {"name": "X"}}, "name", "is required"),
        ({"name": "x"}, "supplier", "is required: an object with at least `name`"),
        ({"name": "x", "supplier": {}}, "supplier.name", "is required"),
        (profile_body(colour="red"), "colour", "unknown field; a billing profile takes name, description"),
        (profile_body(workflow={"invoicing": {"autoAdvanced": True}}), "workflow.invoicing.autoAdvanced", "unknown"),
        (profile_body(workflow={"collection": {"interval": "1h"}}), "workflow.collection.interval", "PT1H"),
        (profile_body(workflow={"collection": {"interval": "P1M"}}), "workflow.collection.interval", "write days"),
        (profile_body(workflow={"invoicing": {"dueAfter": "PT36H"}}), "workflow.invoicing.dueAfter", "whole days"),
        (profile_body(workflow={"invoicing": {"draftPeriod": "P400D"}}), "workflow.invoicing.draftPeriod", "P366D"),
        (profile_body(workflow={"invoicing": {"autoAdvance": "yes"}}), "workflow.invoicing.autoAdvance", "true or"),
        (
            profile_body(workflow={"payment": {"collectionMethod": "cheque"}}),
            "workflow.payment.collectionMethod",
            "must be charge_automatically or send_invoice",
        ),
        (
            profile_body(workflow={"invoicing": {"defaultTaxConfig": {"behavior": "included"}}}),
            "workflow.invoicing.defaultTaxConfig.behavior",
            "exclusive or inclusive",
        ),
        (profile_body(workflow={"tax": {"enabled": False, "enforced": True}}), "workflow.tax.enforced", "enabled"),
        (
            profile_body(workflow={"collection": {"alignment": {"type": "anchored"}}}),
            "workflow.collection.alignment.type",
            "only `subscription`",
        ),
        (
            profile_body(apps={"tax": "stripe", "invoicing": "custom_invoicing", "payment": "stripe"}),
            "apps",
            "must name the same app (tax=stripe, invoicing=custom_invoicing, payment=stripe)",
        ),
        (
            profile_body(apps={"tax": "avalara", "invoicing": "avalara", "payment": "avalara"}),
            "apps.tax",
            "must be stripe or custom_invoicing",
        ),
        (
            profile_body(apps={t: "01G65Z755AFWAKHE12NY0CQ9FH" for t in ("tax", "invoicing", "payment")}),
            "apps.tax",
            "no app ids",
        ),
        (profile_body(apps={"invoicing": "stripe"}), "apps.tax", "is required"),
        (profile_body(metadata={"n": 1}), "metadata", "string values"),
        (
            profile_body(supplier={"name": "X", "addresses": [{"country": "gb"}]}),
            "supplier.addresses[0].country",
            "ISO 3166-1",
        ),
    ],
)
def test_bad_bodies_name_the_field_to_fix(api: httpx.Client, body: dict[str, Any], field: str, message: str) -> None:
    found = problem(api.post(PROFILES, json=body), 400)
    assert found["type"] == "urn:tallybook:problem:invalid-billing-profile"
    fields = {e["field"]: e["message"] for e in found["errors"]}
    assert field in fields, found
    assert message in fields[field], found
    assert f"{field}: " in found["detail"]


def test_every_problem_is_listed_at_once(api: httpx.Client) -> None:
    body = {"name": "", "supplier": {"name": "X"}, "workflow": {"invoicing": {"dueAfter": "P1Y", "x": 1}}}
    found = problem(api.post(PROFILES, json=body), 400)
    assert [e["field"] for e in found["errors"]] == ["name", "workflow.invoicing.x", "workflow.invoicing.dueAfter"]


def test_malformed_bodies(api: httpx.Client) -> None:
    assert problem(api.post(PROFILES, content=b"{", headers={"content-type": "application/json"}), 400)
    assert problem(api.post(PROFILES, json=[1]), 400)["errors"][0]["field"] == "(body)"
    assert problem(api.post(PROFILES, content=b"name=x", headers={"content-type": "text/plain"}), 415)


def test_stripe_needs_the_stripe_integration(api: httpx.Client) -> None:
    body = profile_body(apps={t: STRIPE for t in ("tax", "invoicing", "payment")})
    found = problem(api.post(PROFILES, json=body), 400)
    assert "stripe.enabled: true" in found["detail"]


def test_stripe_profile_when_stripe_is_enabled(database_url: str, clock: FixedClock) -> None:
    reset_database(database_url)
    settings = Settings.model_validate(
        {
            "database": {"url": database_url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "stripe": {"enabled": True, "api_key": "sk_test_profiles"},
        }
    )
    runtime = Runtime.build(settings, clock=clock)
    try:
        with client_for(runtime) as api:
            profile = create_profile(api, apps={t: {"type": STRIPE} for t in ("tax", "invoicing", "payment")})
            assert profile["apps"]["invoicing"] == {"type": STRIPE}
            assert runtime.profiles.get(profile["id"]).collector == STRIPE
    finally:
        runtime.stop()


# -- the config profile and the default ------------------------------------------------------------------
def test_the_config_profile_is_read_only(api: httpx.Client) -> None:
    url = f"{PROFILES}/{CONFIG_PROFILE_ID}"
    for response in (api.put(url, json=profile_body()), api.put(url, json={"bad": 1}), api.delete(url)):
        found = problem(response, 409)
        assert found["type"] == "urn:tallybook:problem:billing-profile-conflict"
        assert "defined in tallybook.yaml" in found["detail"]


def test_the_config_profile_comes_from_the_billing_section(database_url: str, clock: FixedClock) -> None:
    runtime = build_runtime(
        database_url,
        clock,
        invoice_grace="2h",
        auto_issue=True,
        auto_issue_after="1d",
        profile={
            "name": "House rules",
            "description": "from tallybook.yaml",
            "collection_method": "send_invoice",
            "due_after": "14d",
            "auto_collect": False,
            "tax_enabled": True,
            "tax_enforced": True,
            "tax_behavior": "inclusive",
            "supplier": {"name": "Example Ltd", "tax_id": "GB1", "address": {"country": "GB", "postal_code": "E1"}},
        },
    )
    try:
        with client_for(runtime) as api:
            config = ok(api.get(f"{PROFILES}/{CONFIG_PROFILE_ID}"))
        assert (config["name"], config["description"], config["default"]) == (
            "House rules",
            "from tallybook.yaml",
            True,
        )
        assert config["supplier"] == {
            "name": "Example Ltd",
            "taxId": {"code": "GB1"},
            "addresses": [{"country": "GB", "postalCode": "E1"}],
        }
        assert config["workflow"]["collection"]["interval"] == "PT2H"
        assert config["workflow"]["invoicing"]["autoAdvance"] is True
        assert config["workflow"]["invoicing"]["draftPeriod"] == "P1D"
        assert config["workflow"]["invoicing"]["dueAfter"] == "P14D"
        assert config["workflow"]["invoicing"]["defaultTaxConfig"] == {"behavior": "inclusive"}
        assert config["workflow"]["payment"] == {"collectionMethod": "send_invoice", "autoCollect": False}
        assert config["workflow"]["tax"] == {"enabled": True, "enforced": True}
        default = runtime.profiles.default()
        assert (default.id, default.collection_method, default.days_until_due) == (CONFIG_PROFILE_ID, SEND_INVOICE, 14)
    finally:
        runtime.stop()


def test_a_changed_file_updates_the_config_profile_at_start(database_url: str, clock: FixedClock) -> None:
    first = build_runtime(database_url, clock, profile={"name": "One"})
    first.stop()
    clock.advance(timedelta(hours=1))
    settings = Settings.model_validate(
        {
            "database": {"url": database_url},
            "webhooks": {"scheduler": {"run_in_server": False}},
            "billing": {"profile": {"name": "Two"}},
        }
    )
    second = Runtime.build(settings, clock=clock)
    try:
        config = second.profiles.get(CONFIG_PROFILE_ID)
        assert config.name == "Two"
        assert (config.created_at, config.updated_at) == (utc(2026, 1, 1), utc(2026, 1, 1, 1))
        assert second.profiles.list_profiles().total_count == 1
    finally:
        second.stop()


@pytest.mark.parametrize(
    ("yaml", "message"),
    [
        ("billing:\n  profile:\n    collector: paypal\n", "billing.profile.collector: Input should be"),
        ("billing:\n  profile:\n    due_after: 36h\n", "billing.profile.due_after: must be a whole"),
        ("billing:\n  profile:\n    tax_enforced: true\n", "tax_enforced: true needs tax_enabled: true"),
        ("billing:\n  profile:\n    tax_behavior: included\n", "billing.profile.tax_behavior: Input should be"),
        ("billing:\n  profile:\n    colour: red\n", "billing.profile.colour: Extra inputs are not permitted"),
        (
            "billing:\n  profile:\n    supplier:\n      address:\n        country: Britain\n",
            "billing.profile.supplier.address.country: must be an ISO 3166-1 alpha-2",
        ),
    ],
)
def test_config_mistakes_name_the_key(tmp_path: Any, yaml: str, message: str) -> None:
    path = tmp_path / "tallybook.yaml"
    path.write_text(yaml)
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_settings(path, env={})


def test_switching_the_default(api: httpx.Client) -> None:
    assert default_id(api) == CONFIG_PROFILE_ID
    first = create_profile(api, "First", default=True)
    assert first["default"] is True
    assert default_id(api) == first["id"]
    assert ok(api.get(f"{PROFILES}/{CONFIG_PROFILE_ID}"))["default"] is False
    second = create_profile(api, "Second", default=True)
    assert default_id(api) == second["id"]
    assert ok(api.get(f"{PROFILES}/{first['id']}"))["default"] is False
    # Marking another one default again through PUT.
    ok(api.put(f"{PROFILES}/{first['id']}", json=profile_body("First", default=True)))
    assert default_id(api) == first["id"]
    # Unmarking the default: the config profile is the default again.
    ok(api.put(f"{PROFILES}/{first['id']}", json=profile_body("First", default=False)))
    assert default_id(api) == CONFIG_PROFILE_ID
    # Deleting the default: the same.
    ok(api.put(f"{PROFILES}/{second['id']}", json=profile_body("Second", default=True)))
    assert default_id(api) == second["id"]
    assert api.delete(f"{PROFILES}/{second['id']}").status_code == 204
    assert default_id(api) == CONFIG_PROFILE_ID
    assert ok(api.get(f"{PROFILES}/{second['id']}"))["default"] is False


# -- customer overrides ----------------------------------------------------------------------------------
def test_customer_override(rt: Runtime, api: httpx.Client) -> None:
    customer = create_customer(api, "acme")
    url = "/api/v1/billing/customers/acme"
    before = ok(api.get(url))
    assert before["customerId"] == customer["id"]
    assert before["billingProfileId"] == before["baseBillingProfileId"] == CONFIG_PROFILE_ID
    assert "customerOverride" not in before
    assert before["profile"]["id"] == CONFIG_PROFILE_ID
    assert set(before["customerProfile"]) == {"supplier", "workflow", "apps"}

    profile = create_profile(api, "Enterprise")
    assigned = ok(api.put(url, json={"billingProfileId": profile["id"]}))
    assert assigned["billingProfileId"] == profile["id"]
    assert assigned["customerOverride"] == {
        "customerId": customer["id"],
        "billingProfileId": profile["id"],
        "createdAt": "2026-01-01T00:00:00Z",
        "updatedAt": "2026-01-01T00:00:00Z",
    }
    assert ok(api.get(f"/api/v1/billing/customers/{customer['id']}")) == assigned  # by id as well as by key
    assert rt.profiles.for_customers([customer["id"]])[customer["id"]].id == profile["id"]

    # A profile with customers cannot be deleted.
    refused = problem(api.delete(f"{PROFILES}/{profile['id']}"), 409)
    assert refused["customerCount"] == 1
    assert customer["id"] in refused["detail"]
    assert "PUT /api/v1/billing/customers" in refused["detail"]

    # Back to the default: DELETE (or PUT without a profile).
    assert api.delete(url).status_code == 204
    assert ok(api.get(url))["billingProfileId"] == CONFIG_PROFILE_ID
    assert problem(api.delete(url), 404)["type"] == "urn:tallybook:problem:customer-override-not-found"
    ok(api.put(url, json={"billingProfileId": profile["id"]}))
    assert "customerOverride" not in ok(api.put(url, json={"billingProfileId": None}))
    ok(api.put(url, json={"billingProfileId": profile["id"]}))
    assert "customerOverride" not in ok(api.put(url, content=b""))
    assert api.delete(f"{PROFILES}/{profile['id']}").status_code == 204

    # Pinning a customer to the config profile works (it stays there whatever becomes default).
    ok(api.put(url, json={"billingProfileId": CONFIG_PROFILE_ID}))
    create_profile(api, "New default", default=True)
    assert ok(api.get(url))["billingProfileId"] == CONFIG_PROFILE_ID


def test_customer_override_problems(api: httpx.Client) -> None:
    url = "/api/v1/billing/customers/acme"
    assert problem(api.get(url), 404)["type"] == "urn:tallybook:problem:customer-not-found"
    create_customer(api, "acme")
    bad = problem(api.put(url, json={"billingProfileId": "01G65Z755AFWAKHE12NY0CQ9FH"}), 400)
    assert bad["errors"] == [
        {"field": "billingProfileId", "message": "no billing profile has the id '01G65Z755AFWAKHE12NY0CQ9FH'"}
    ]
    assert problem(api.put(url, json={"profile": "x"}), 400)["errors"][0]["field"] == "profile"
    deleted = create_profile(api, "Gone")
    assert api.delete(f"{PROFILES}/{deleted['id']}").status_code == 204
    assert "was deleted" in problem(api.put(url, json={"billingProfileId": deleted["id"]}), 400)["detail"]


def test_a_deleted_customer_does_not_block_deleting_its_profile(api: httpx.Client) -> None:
    customer = create_customer(api, "acme")
    profile = create_profile(api)
    ok(api.put("/api/v1/billing/customers/acme", json={"billingProfileId": profile["id"]}))
    assert api.delete(f"/api/v1/customers/{customer['id']}").status_code in (200, 204)
    assert api.delete(f"{PROFILES}/{profile['id']}").status_code == 204


def test_for_customers_reads_any_number_with_a_few_queries(rt: Runtime, api: httpx.Client) -> None:
    slow = create_profile(api, "Slow", workflow={"collection": {"interval": "P1D"}})
    ids = [create_customer(api, f"c{i}")["id"] for i in range(3)]
    ok(api.put(f"/api/v1/billing/customers/{ids[0]}", json={"billingProfileId": slow["id"]}))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if statement.lstrip().upper().startswith("SELECT"):
            statements.append(statement)

    unknown = [f"01KAAAAAAAAAAAAAAAAAAA{i:04d}" for i in range(5000)]
    event.listen(rt.store.engine, "before_cursor_execute", count)
    try:
        found = rt.profiles.for_customers([*ids, *unknown])
    finally:
        event.remove(rt.store.engine, "before_cursor_execute", count)
    assert len(statements) == 2, statements  # the profiles, then the assignments: not one per customer
    assert found[ids[0]].id == slow["id"]
    assert found[ids[0]].grace == timedelta(days=1)
    assert {found[i].id for i in [ids[1], ids[2], *unknown]} == {CONFIG_PROFILE_ID}
    assert rt.profiles.for_customers([]) == {}
    assert rt.profiles.shortest_grace() == timedelta(hours=1)


def test_iso_durations_read_back() -> None:
    for text, span in [
        ("P0D", timedelta(0)),
        ("PT1H", timedelta(hours=1)),
        ("P30D", timedelta(days=30)),
        ("P1DT2H30M", timedelta(days=1, hours=2, minutes=30)),
        ("PT1.5S", timedelta(seconds=1.5)),
    ]:
        assert parse_iso_duration(text) == span
        assert format_iso_duration(span) == text
    assert parse_iso_duration("P2W") == timedelta(days=14)
    for bad in ("P", "PT", "P1DT", "1h", "-P1D", "P1M", 5):
        with pytest.raises(ValueError):
            parse_iso_duration(bad)


# -- invoicing per profile -------------------------------------------------------------------------------
def period_invoices(rt: Runtime, customer_id: str) -> list[Any]:
    _, found = rt.invoicing.list_invoices(customer=customer_id)
    return [i for i in found if i.kind == "period"]


def test_grace_is_per_customer(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    slow = create_profile(
        api, "Slow", workflow={"collection": {"interval": "P1D"}, "invoicing": {"autoAdvance": False}}
    )
    on_default = create_customer(api, "acme")
    on_slow = create_customer(api, "beta")
    ok(api.put("/api/v1/billing/customers/beta", json={"billingProfileId": slow["id"]}))
    for key in ("acme", "beta"):
        subscribe(api, key, activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)  # the opening invoices
    clock.set(utc(2026, 2, 1, 1))  # January ended an hour ago: the default profile's grace
    assert run_billing(rt)["created"] == 1
    assert len(period_invoices(rt, on_default["id"])) == 1
    assert period_invoices(rt, on_slow["id"]) == []
    clock.set(utc(2026, 2, 1, 23, 59))
    assert run_billing(rt)["created"] == 0
    clock.set(utc(2026, 2, 2))  # a day after the period ended: the slow profile's grace
    assert run_billing(rt)["created"] == 1
    (late,) = period_invoices(rt, on_slow["id"])
    assert (late.created_at, late.status) == (utc(2026, 2, 2), "draft")
    assert run_billing(rt)["created"] == 0


def test_approval_is_per_customer(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    auto = create_profile(api, "Auto", workflow={"invoicing": {"autoAdvance": True}})
    review = create_profile(api, "Review a day", workflow={"invoicing": {"autoAdvance": True, "draftPeriod": "P1D"}})
    customers = {key: create_customer(api, key)["id"] for key in ("manual", "auto", "review")}
    ok(api.put("/api/v1/billing/customers/auto", json={"billingProfileId": auto["id"]}))
    ok(api.put("/api/v1/billing/customers/review", json={"billingProfileId": review["id"]}))
    for key in customers:
        subscribe(api, key, activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    clock.set(utc(2026, 2, 1, 1))
    result = run_billing(rt)
    # Issued: auto's period invoice at once, and review's opening invoice (drafted a month ago).
    assert (result["created"], result["issued"]) == (3, 2)
    statuses = {key: [i.status for i in period_invoices(rt, cid)] for key, cid in customers.items()}
    assert statuses == {"manual": ["draft"], "auto": ["issued"], "review": ["draft"]}
    clock.set(utc(2026, 2, 2, 1))  # the review draft is a day old now
    run_billing(rt)
    statuses = {key: [i.status for i in period_invoices(rt, cid)] for key, cid in customers.items()}
    assert statuses == {"manual": ["draft"], "auto": ["issued"], "review": ["issued"]}
    # The default profile (config: approval needed) never issues on its own.
    clock.set(utc(2026, 2, 20))
    run_billing(rt)
    assert [i.status for i in period_invoices(rt, customers["manual"])] == ["draft"]


def test_a_new_default_profile_applies_to_customers_without_one(
    rt: Runtime, api: httpx.Client, clock: FixedClock
) -> None:
    create_plan(api)
    customer = create_customer(api, "acme")
    subscribe(api, "acme", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
    run_billing(rt)
    create_profile(api, "Hands off", default=True, workflow={"invoicing": {"autoAdvance": True}})
    clock.set(utc(2026, 2, 1, 1))
    run_billing(rt)
    assert [i.status for i in period_invoices(rt, customer["id"])] == ["issued"]


def test_the_run_reads_profiles_once_for_all_customers(rt: Runtime, api: httpx.Client, clock: FixedClock) -> None:
    create_plan(api)
    slow = create_profile(api, "Slow", workflow={"collection": {"interval": "P1D"}})
    for i in range(4):
        create_customer(api, f"c{i}")
        subscribe(api, f"c{i}", activeFrom="2026-01-01T00:00:00Z", alignment="calendar")
        if i % 2:
            ok(api.put(f"/api/v1/billing/customers/c{i}", json={"billingProfileId": slow["id"]}))
    clock.set(utc(2026, 2, 2))
    statements: list[str] = []

    def count(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        if "billing_customer_profiles" in statement or "FROM billing_profiles" in statement:
            statements.append(statement)

    event.listen(rt.store.engine, "before_cursor_execute", count)
    try:
        assert run_billing(rt)["created"] == 8  # four opening and four period invoices
    finally:
        event.remove(rt.store.engine, "before_cursor_execute", count)
    # shortest_grace reads the profiles; for_customers reads them and the assignments: 3, for any number.
    assert len(statements) == 3, statements
