"""Plans API (/api/v1/plans) on both engines: drafts, publishing, versions, validation, scopes."""

from __future__ import annotations

import copy
import threading
from decimal import Decimal as D
from typing import Any

import pytest

from tallybook.api.wire.plan_prices import parse_usage_price
from tallybook.api.wire.plans import parse_plan
from tallybook.billing.catalog_model import (
    InvalidPlan,
    PlanConflict,
    PlanListQuery,
    PlanNotFound,
    parse_cadence,
)
from tallybook.billing.models import (
    BillingCadence,
    Cadence,
    FlatPrice,
    PackagePrice,
    PaymentTerm,
    RoundingMode,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
)
from tallybook.config import ConfigError, load_settings
from tests.conftest import auth

METERS = [
    {"slug": "api_calls", "eventType": "api.calls", "aggregation": "COUNT"},
    {"slug": "storage_gb", "eventType": "storage", "aggregation": "MAX", "valueProperty": "$.gb"},
    {"slug": "compute_seconds", "eventType": "compute", "aggregation": "SUM", "valueProperty": "$.seconds"},
]

STARTER: dict[str, Any] = {
    "key": "starter",
    "name": "Starter",
    "description": "For small teams",
    "currency": "USD",
    "billingCadence": "P1M",
    "phases": [
        {
            "key": "default",
            "name": "Default",
            "duration": None,
            "rateCards": [
                {
                    "type": "flat_fee",
                    "key": "platform",
                    "name": "Platform fee",
                    "billingCadence": "P1M",
                    "price": {"type": "flat", "amount": "49", "paymentTerm": "in_advance"},
                },
                {
                    "type": "usage_based",
                    "key": "api_calls",
                    "name": "API calls",
                    "meterSlug": "api_calls",
                    "price": {"type": "unit", "amount": "0.001", "minimumAmount": "5"},
                    "taxConfig": {"stripe": {"code": "txcd_10000000"}},
                },
                {
                    "type": "usage_based",
                    "key": "storage",
                    "name": "Storage",
                    "meterSlug": "storage_gb",
                    "price": {"type": "unit", "amount": "0.01"},
                },
                {
                    "type": "usage_based",
                    "key": "compute",
                    "name": "Compute",
                    "featureKey": "compute_seconds",
                    "price": {
                        "type": "tiered",
                        "mode": "graduated",
                        "tiers": [
                            {"upToAmount": "3600", "unitPrice": {"type": "unit", "amount": "0"}},
                            {"unitPrice": {"type": "unit", "amount": "0.0001"}, "flatPrice": {"amount": "1"}},
                        ],
                        "maximumAmount": "500",
                    },
                },
            ],
        }
    ],
}


@pytest.fixture
def admin(keys: dict[str, str]) -> dict[str, str]:
    return auth(keys["admin"])


@pytest.fixture
def reader(keys: dict[str, str]) -> dict[str, str]:
    return auth(keys["read"])


@pytest.fixture
def meters(client: Any, admin: dict[str, str]) -> None:
    for meter in METERS:
        assert client.post("/api/v1/meters", json=meter, headers=admin).status_code == 201


def create(client: Any, admin: dict[str, str], body: dict[str, Any] | None = None) -> dict[str, Any]:
    response = client.post("/api/v1/plans", json=body or STARTER, headers=admin)
    assert response.status_code == 201, response.text
    return dict(response.json())


def problem_fields(response: Any) -> dict[str, str]:
    assert response.headers["content-type"].startswith("application/problem+json")
    return {e["field"]: e["message"] for e in response.json()["errors"]}


# -- lifecycle -------------------------------------------------------------------------------------
def test_create_returns_a_draft_in_openmeters_shape(client, admin, meters) -> None:
    response = client.post("/api/v1/plans", json=STARTER, headers=admin)
    assert response.status_code == 201
    plan = response.json()
    assert response.headers["location"] == f"/api/v1/plans/{plan['id']}"
    assert plan["key"] == "starter" and plan["version"] == 1 and plan["status"] == "draft"
    assert plan["currency"] == "USD" and plan["billingCadence"] == "P1M"
    assert "effectiveFrom" not in plan and plan["validationErrors"] == []
    cards = plan["phases"][0]["rateCards"]
    assert [c["key"] for c in cards] == ["platform", "api_calls", "storage", "compute"]
    assert cards[0]["price"] == {"type": "flat", "amount": "49", "paymentTerm": "in_advance"}
    assert cards[1]["price"] == {"type": "unit", "amount": "0.001", "minimumAmount": "5"}
    assert cards[1]["taxConfig"] == {"stripe": {"code": "txcd_10000000"}}
    assert cards[3]["meterSlug"] == "compute_seconds"  # given as featureKey
    assert cards[3]["price"]["tiers"] == [
        {"upToAmount": "3600", "unitPrice": {"type": "unit", "amount": "0"}, "flatPrice": None},
        {"unitPrice": {"type": "unit", "amount": "0.0001"}, "flatPrice": {"type": "flat", "amount": "1"}},
    ]
    assert cards[3]["price"]["maximumAmount"] == "500"


def test_draft_can_be_updated_then_publish_makes_it_immutable(client, admin, reader, meters) -> None:
    plan = create(client, admin)
    changed = copy.deepcopy(STARTER)
    del changed["key"], changed["currency"]  # OpenMeter's update body has neither
    changed["name"] = "Starter (2026)"
    changed["phases"][0]["rateCards"][0]["price"]["amount"] = "59"
    updated = client.put(f"/api/v1/plans/{plan['id']}", json=changed, headers=admin)
    assert updated.status_code == 200, updated.text
    assert updated.json()["name"] == "Starter (2026)"
    assert updated.json()["phases"][0]["rateCards"][0]["price"]["amount"] == "59"
    assert updated.json()["currency"] == "USD" and updated.json()["createdAt"] == plan["createdAt"]

    published = client.post(f"/api/v1/plans/{plan['id']}/publish", headers=admin)
    assert published.status_code == 200
    assert published.json()["status"] == "active" and "effectiveFrom" in published.json()

    again = client.put(f"/api/v1/plans/{plan['id']}", json=changed, headers=admin)
    assert again.status_code == 409
    assert again.json()["type"] == "urn:tallybook:problem:plan-conflict"
    assert "immutable" in again.json()["detail"]
    assert client.post(f"/api/v1/plans/{plan['id']}/publish", headers=admin).status_code == 409
    assert client.delete(f"/api/v1/plans/{plan['id']}", headers=admin).status_code == 409
    assert client.get(f"/api/v1/plans/{plan['id']}", headers=reader).json()["name"] == "Starter (2026)"


def test_versions_next_publish_archives_the_previous_one(client, admin, reader, meters) -> None:
    v1 = create(client, admin)
    client.post(f"/api/v1/plans/{v1['id']}/publish", headers=admin)
    v2 = client.post("/api/v1/plans/starter/next", headers=admin)
    assert v2.status_code == 201, v2.text
    v2 = v2.json()
    assert v2["version"] == 2 and v2["status"] == "draft" and v2["id"] != v1["id"]
    assert v2["phases"] == client.get(f"/api/v1/plans/{v1['id']}", headers=reader).json()["phases"]
    # one draft at a time
    assert client.post("/api/v1/plans/starter/next", headers=admin).status_code == 409

    # by key: the published version; includeLatest: the draft; version=N: that one
    assert client.get("/api/v1/plans/starter", headers=reader).json()["version"] == 1
    assert client.get("/api/v1/plans/starter?includeLatest=true", headers=reader).json()["version"] == 2
    assert client.get("/api/v1/plans/starter?version=1", headers=reader).json()["id"] == v1["id"]

    client.post(f"/api/v1/plans/{v2['id']}/publish", headers=admin)
    old = client.get(f"/api/v1/plans/{v1['id']}", headers=reader).json()
    assert old["status"] == "archived" and "effectiveTo" in old
    assert client.get("/api/v1/plans/starter", headers=reader).json()["version"] == 2

    # next from an old version's id is refused; from the newest it works
    assert client.post(f"/api/v1/plans/{v1['id']}/next", headers=admin).status_code == 409
    v3 = client.post(f"/api/v1/plans/{v2['id']}/next", headers=admin)
    assert v3.status_code == 201 and v3.json()["version"] == 3

    listed = client.get("/api/v1/plans?key=starter&orderBy=version", headers=reader).json()
    assert [(p["version"], p["status"]) for p in listed["items"]] == [(1, "archived"), (2, "active"), (3, "draft")]
    assert listed["totalCount"] == 3
    active = client.get("/api/v1/plans?status=active", headers=reader).json()
    assert [p["version"] for p in active["items"]] == [2]


def test_archive_and_delete(client, admin, reader, meters) -> None:
    plan = create(client, admin)
    assert client.post(f"/api/v1/plans/{plan['id']}/archive", headers=admin).status_code == 409  # a draft
    client.post(f"/api/v1/plans/{plan['id']}/publish", headers=admin)
    archived = client.post(f"/api/v1/plans/{plan['id']}/archive", headers=admin)
    assert archived.status_code == 200 and archived.json()["status"] == "archived"
    assert client.delete(f"/api/v1/plans/{plan['id']}", headers=admin).status_code == 204
    # still readable by id, with deletedAt; gone from lists and key lookups
    gone = client.get(f"/api/v1/plans/{plan['id']}", headers=reader).json()
    assert "deletedAt" in gone
    assert client.get("/api/v1/plans", headers=reader).json()["items"] == []
    assert len(client.get("/api/v1/plans?includeDeleted=true", headers=reader).json()["items"]) == 1
    assert client.get("/api/v1/plans/starter", headers=reader).status_code == 404
    # the key is free again; the version number keeps counting
    again = create(client, admin)
    assert again["version"] == 2


def test_create_with_a_taken_key_is_409(client, admin, meters) -> None:
    create(client, admin)
    response = client.post("/api/v1/plans", json=STARTER, headers=admin)
    assert response.status_code == 409
    assert "/next" in response.json()["detail"]


def test_unknown_plan_is_404(client, admin, reader) -> None:
    missing = "01J00000000000000000000000"
    assert client.get("/api/v1/plans/nope", headers=reader).status_code == 404
    assert client.get(f"/api/v1/plans/{missing}", headers=reader).status_code == 404
    response = client.post(f"/api/v1/plans/{missing}/publish", headers=admin)
    assert response.status_code == 404
    assert response.json()["type"] == "urn:tallybook:problem:plan-not-found"
    assert client.post("/api/v1/plans/nope/next", headers=admin).status_code == 404


def test_publishing_needs_a_rate_card(client, admin) -> None:
    empty = {**STARTER, "phases": [{"key": "default", "name": "Default", "rateCards": []}]}
    plan = create(client, admin, empty)
    response = client.post(f"/api/v1/plans/{plan['id']}/publish", headers=admin)
    assert response.status_code == 400
    assert "at least one rate card" in response.json()["detail"]


def test_rate_cards_may_be_given_without_phases(client, admin, meters) -> None:
    body = {k: v for k, v in STARTER.items() if k != "phases"}
    body["rateCards"] = STARTER["phases"][0]["rateCards"]
    plan = create(client, admin, body)
    assert len(plan["phases"][0]["rateCards"]) == 4


def test_plan_level_commitments_round_trip(client, admin, meters) -> None:
    plan = create(client, admin, {**STARTER, "commitments": {"minimumAmount": "100", "maximumAmount": "1000"}})
    assert plan["commitments"] == {"minimumAmount": "100", "maximumAmount": "1000"}


# -- validation ------------------------------------------------------------------------------------
def with_card(card: dict[str, Any]) -> dict[str, Any]:
    body = copy.deepcopy(STARTER)
    body["phases"][0]["rateCards"] = [card]
    return body


def usage_card(price: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"type": "usage_based", "key": "calls", "name": "Calls", "meterSlug": "api_calls", "price": price, **extra}


INVALID: list[tuple[dict[str, Any], str, str]] = [
    ({**STARTER, "currency": "XYZ"}, "currency", "not a known ISO 4217"),
    ({**STARTER, "key": "Not A Key"}, "key", "lower-case"),
    ({**STARTER, "billingCadence": "P2M"}, "billingCadence", "P1M"),
    ({**STARTER, "name": ""}, "name", "non-empty"),
    (
        {**STARTER, "commitments": {"minimumAmount": "10", "maximumAmount": "5"}},
        "commitments.minimumAmount",
        "greater than maximumAmount",
    ),
    (with_card(usage_card({"type": "unit", "amount": "-0.01"})), "phases[0].rateCards[0].price.amount", "negative"),
    (with_card(usage_card({"type": "unit", "amount": "abc"})), "phases[0].rateCards[0].price.amount", "not a decimal"),
    (with_card(usage_card({"type": "unit", "amount": True})), "phases[0].rateCards[0].price.amount", "string"),
    (
        with_card(usage_card({"type": "package", "amount": "1", "quantityPerPackage": "0"})),
        "phases[0].rateCards[0].price.quantityPerPackage",
        "greater than 0",
    ),
    (
        with_card(usage_card({"type": "unit", "amount": "1", "minimumAmount": "9", "maximumAmount": "3"})),
        "phases[0].rateCards[0].price.minimumAmount",
        "not be greater than maximumAmount",
    ),
    (
        with_card(
            usage_card(
                {
                    "type": "tiered",
                    "mode": "graduated",
                    "tiers": [{"upToAmount": "100", "unitPrice": {"amount": "1"}}, {"upToAmount": "50"}],
                }
            )
        ),
        "phases[0].rateCards[0].price.tiers[1].upToAmount",
        "open-ended",
    ),
    (
        with_card(
            usage_card(
                {
                    "type": "tiered",
                    "mode": "volume",
                    "tiers": [
                        {"upToAmount": "100", "unitPrice": {"amount": "1"}},
                        {"upToAmount": "100", "unitPrice": {"amount": "1"}},
                        {"unitPrice": {"amount": "1"}},
                    ],
                }
            )
        ),
        "phases[0].rateCards[0].price.tiers[1].upToAmount",
        "greater than the previous",
    ),
    (
        with_card(
            usage_card(
                {
                    "type": "tiered",
                    "mode": "volume",
                    "tiers": [{"unitPrice": {"amount": "1"}}, {"unitPrice": {"amount": "2"}}],
                }
            )
        ),
        "phases[0].rateCards[0].price.tiers[0].upToAmount",
        "only the last tier",
    ),
    (
        with_card(usage_card({"type": "tiered", "mode": "stairs", "tiers": [{"unitPrice": {"amount": "1"}}]})),
        "phases[0].rateCards[0].price.mode",
        "graduated",
    ),
    (
        with_card(usage_card({"type": "tiered", "mode": "volume", "tiers": [{"upToAmount": None}]})),
        "phases[0].rateCards[0].price.tiers[0]",
        "unitPrice, a flatPrice",
    ),
    (with_card(usage_card({"type": "flat", "amount": "1"})), "phases[0].rateCards[0].price.type", "flat_fee"),
    (with_card(usage_card({"type": "dynamic"})), "phases[0].rateCards[0].price.type", "not supported"),
    (
        with_card({"type": "usage_based", "key": "calls", "name": "Calls", "price": {"type": "unit", "amount": "1"}}),
        "phases[0].rateCards[0].meterSlug",
        "is required",
    ),
    (
        with_card({"type": "flat_fee", "key": "fee", "name": "Fee", "price": {"type": "unit", "amount": "1"}}),
        "phases[0].rateCards[0].price.type",
        "'flat'",
    ),
    (
        with_card(
            {
                "type": "flat_fee",
                "key": "fee",
                "name": "Fee",
                "price": {"type": "flat", "amount": "1", "paymentTerm": "x"},
            }
        ),
        "phases[0].rateCards[0].price.paymentTerm",
        "in_arrears",
    ),
    (
        with_card(usage_card({"type": "unit", "amount": "1"}, taxConfig={"stripe": {"code": "tax_1"}})),
        "phases[0].rateCards[0].taxConfig.stripe.code",
        "txcd_",
    ),
    (
        with_card(usage_card({"type": "unit", "amount": "1"}, billingCadence="P1Y")),
        "phases[0].rateCards[0].billingCadence",
        "plan's billingCadence",
    ),
    (with_card(usage_card({"type": "unit", "amount": "1e20"})), "phases[0].rateCards[0].price.amount", "less than"),
    (
        {**STARTER, "phases": [STARTER["phases"][0], STARTER["phases"][0]]},
        "phases",
        "exactly one phase",
    ),
]


@pytest.mark.parametrize(("body", "field", "fragment"), INVALID, ids=[case[1] + ":" + case[2] for case in INVALID])
def test_invalid_plans_are_400_naming_the_field(client, admin, meters, body, field, fragment) -> None:
    response = client.post("/api/v1/plans", json=body, headers=admin)
    assert response.status_code == 400, response.text
    assert response.json()["type"] == "urn:tallybook:problem:invalid-plan"
    fields = problem_fields(response)
    assert field in fields, fields
    assert fragment in fields[field]


def test_duplicate_rate_card_keys_are_refused(client, admin, meters) -> None:
    body = copy.deepcopy(STARTER)
    body["phases"][0]["rateCards"][2]["key"] = "api_calls"
    fields = problem_fields(client.post("/api/v1/plans", json=body, headers=admin))
    assert "already the key" in fields["phases[0].rateCards[2].key"]


def test_unknown_meter_is_400(client, admin, meters) -> None:
    body = with_card(usage_card({"type": "unit", "amount": "1"}, meterSlug="no_such_meter"))
    response = client.post("/api/v1/plans", json=body, headers=admin)
    assert response.status_code == 400
    assert problem_fields(response) == {"phases[0].rateCards[0].meterSlug": "no meter has the slug 'no_such_meter'"}


def test_publish_checks_the_meters_again(client, admin, meters) -> None:
    plan = create(client, admin)
    assert client.delete("/api/v1/meters/storage_gb", headers=admin).status_code == 204
    response = client.post(f"/api/v1/plans/{plan['id']}/publish", headers=admin)
    assert response.status_code == 400
    assert problem_fields(response) == {"phases[0].rateCards[2].meterSlug": "no meter has the slug 'storage_gb'"}


def test_not_json_and_wrong_media_type(client, admin) -> None:
    response = client.post("/api/v1/plans", content=b"{", headers={**admin, "content-type": "application/json"})
    assert response.status_code == 400
    response = client.post("/api/v1/plans", content=b"<a/>", headers={**admin, "content-type": "text/xml"})
    assert response.status_code == 415


def test_scopes(client, keys, meters) -> None:
    read, ingest = auth(keys["read"]), auth(keys["ingest"])
    assert client.get("/api/v1/plans").status_code == 401
    assert client.get("/api/v1/plans", headers=ingest).status_code == 403
    assert client.get("/api/v1/plans", headers=read).status_code == 200
    denied = client.post("/api/v1/plans", json=STARTER, headers=read)
    assert denied.status_code == 403
    assert "admin" in denied.json()["detail"]
    plan = create(client, auth(keys["admin"]))
    for path in (
        f"/api/v1/plans/{plan['id']}/publish",
        f"/api/v1/plans/{plan['id']}/archive",
        "/api/v1/plans/starter/next",
    ):
        assert client.post(path, headers=read).status_code == 403
    assert client.put(f"/api/v1/plans/{plan['id']}", json=STARTER, headers=read).status_code == 403
    assert client.delete(f"/api/v1/plans/{plan['id']}", headers=read).status_code == 403


# -- the service, directly -------------------------------------------------------------------------
def test_plan_version_lookup_for_subscriptions(runtime, meters, client, admin) -> None:
    catalog = runtime.catalog
    with pytest.raises(PlanNotFound):
        catalog.plan_version("starter")
    plan = catalog.create(parse_plan(STARTER))
    with pytest.raises(PlanNotFound, match="no published version"):
        catalog.plan_version("starter")
    catalog.publish(plan.id)
    spec = catalog.plan_version("starter")
    assert spec.version == 1 and spec.status == "published"
    assert spec.cadence == Cadence(BillingCadence.MONTHLY)
    assert spec.rate_cards[0].price == FlatPrice(D(49), PaymentTerm.IN_ADVANCE)
    assert spec.rate_cards[1].price == UnitPrice(D("0.001")) and spec.rate_cards[1].commitments.minimum == D(5)
    assert spec.rate_cards[1].meter == "api_calls"
    assert catalog.tax_code_for(spec.rate_cards[1]) == "txcd_10000000"
    assert catalog.tax_code_for(spec.rate_cards[2]) == runtime.settings.billing.default_tax_code == "txcd_10103001"
    assert spec.rate_cards[3].price == TieredPrice(
        TierMode.GRADUATED, (Tier(D(3600), D(0), D(0)), Tier(None, D("0.0001"), D(1)))
    )
    draft = catalog.next_version("starter")
    catalog.publish(draft.id)
    catalog.archive(draft.id)
    assert catalog.plan_version("starter", 1).status == "archived"  # old subscriptions still bill
    with pytest.raises(PlanConflict):
        catalog.archive(draft.id)


def test_meter_given_by_id_is_stored_by_slug(runtime, meters) -> None:
    meter_id = runtime.meters.get("api_calls").id
    plan = runtime.catalog.create(
        parse_plan(with_card(usage_card({"type": "unit", "amount": "1"}, meterSlug=meter_id)))
    )
    assert plan.spec.rate_cards[0].meter == "api_calls"


# -- parsing helpers (no database) -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("text", "cadence"),
    [
        ("P1D", Cadence(BillingCadence.DAILY)),
        ("P1W", Cadence(BillingCadence.WEEKLY)),
        ("P7D", Cadence(BillingCadence.WEEKLY)),
        ("P1M", Cadence(BillingCadence.MONTHLY)),
        ("P3M", Cadence(BillingCadence.QUARTERLY)),
        ("P1Y", Cadence(BillingCadence.YEARLY)),
        ("P12M", Cadence(BillingCadence.YEARLY)),
        ("P30D", Cadence(BillingCadence.EVERY_N_DAYS, days=30)),
        ("P2W", Cadence(BillingCadence.EVERY_N_DAYS, days=14)),
    ],
)
def test_parse_cadence(text: str, cadence: Cadence) -> None:
    assert parse_cadence(text) == cadence


@pytest.mark.parametrize("text", ["P", "P2M", "P1M1D", "PT1H", "1M", "P0D"])
def test_unsupported_cadences(text: str) -> None:
    with pytest.raises(ValueError, match="P1M"):
        parse_cadence(text)


def test_parse_usage_price_shapes() -> None:
    price, commitments = parse_usage_price({"type": "package", "amount": "0.20", "quantityPerPackage": "1e6"})
    assert price == PackagePrice(D("0.20"), D(1_000_000))
    assert commitments.minimum is None and commitments.maximum is None
    price, commitments = parse_usage_price({"type": "unit", "amount": 2, "maximumAmount": "10"})
    assert price == UnitPrice(D(2)) and commitments.maximum == D(10)
    with pytest.raises(InvalidPlan) as caught:
        parse_usage_price({"type": "unit"})
    assert caught.value.errors == (("price.amount", 'is required: a decimal number written as a string, e.g. "0.001"'),)


# -- concurrency -----------------------------------------------------------------------------------
def run_together(count: int, work: Any) -> list[Any]:
    """Run `work` in `count` threads started together; return each result or exception."""
    barrier = threading.Barrier(count)
    results: list[Any] = [None] * count

    def run(index: int) -> None:
        barrier.wait()
        try:
            results[index] = work()
        except Exception as exc:
            results[index] = exc

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    return results


def test_concurrent_creates_and_next_versions_make_exactly_one(runtime, meters) -> None:
    catalog = runtime.catalog
    created = run_together(6, lambda: catalog.create(parse_plan(STARTER)))
    winners = [r for r in created if not isinstance(r, Exception)]
    assert len(winners) == 1
    assert all(isinstance(r, PlanConflict) for r in created if r not in winners)
    catalog.publish(winners[0].id)

    drafts = run_together(6, lambda: catalog.next_version("starter"))
    assert len([r for r in drafts if not isinstance(r, Exception)]) == 1
    assert all(isinstance(r, PlanConflict) for r in drafts if isinstance(r, Exception))

    draft = catalog.get("starter", include_latest=True)
    published = run_together(4, lambda: catalog.publish(draft.id))
    assert len([r for r in published if not isinstance(r, Exception)]) == 1
    assert all(isinstance(r, PlanConflict) for r in published if isinstance(r, Exception))
    statuses = sorted((p.version, p.status.value) for p in catalog.list(PlanListQuery(keys=("starter",))).items)
    assert statuses == [(1, "archived"), (2, "published")]


# -- settings and API description --------------------------------------------------------------------
def test_billing_settings_in_tallybook_yaml(tmp_path) -> None:
    config = tmp_path / "tallybook.yaml"
    config.write_text("billing:\n  rounding: half_up\n  default_tax_code: txcd_20030000\n", encoding="utf-8")
    settings = load_settings(config, env={})
    assert settings.billing.rounding is RoundingMode.HALF_UP
    assert settings.billing.default_tax_code == "txcd_20030000"

    config.write_text("billing:\n  default_tax_code: sales\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"billing\.default_tax_code: .*txcd_"):
        load_settings(config, env={})
    config.write_text("billing:\n  rounding: half_down\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"billing\.rounding"):
        load_settings(config, env={})


def test_openapi_describes_the_plan_routes(client) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    for path in ("", "/{planId}", "/{planId}/publish", "/{planId}/archive", "/{planIdOrKey}/next"):
        assert "/api/v1/plans" + path in paths
    body = paths["/api/v1/plans"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert "phases" in body["required"]
