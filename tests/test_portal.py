"""Portal tokens (/api/v1/portal): issuing, scoping to one customer or subject, expiry, invalidation,
and that a portal token opens nothing but the portal (both engines)."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tallybook.clock import FixedClock, to_micros
from tallybook.customers import CustomerInput
from tallybook.ingest.events import Event
from tallybook.meters.models import Aggregation, MeterSpec
from tallybook.portal.service import PortalService
from tallybook.portal.sql import PortalTokenRepository
from tests.conftest import auth

PROBLEM = "application/problem+json"
ULID = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Z]{25}$")
START = datetime(2026, 1, 1, tzinfo=UTC)


def problem(response, status, code=None):
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith(PROBLEM)
    if code is not None:
        assert response.json()["type"] == f"urn:tallybook:problem:{code}"
    return response.json()


@pytest.fixture
def usage(runtime):
    """Two customers (acme: subjects acme and acme-batch; globex), a bare subject, two meters."""
    runtime.meters.create(MeterSpec(slug="api_calls", event_type="api.calls", aggregation=Aggregation.COUNT))
    runtime.meters.create(
        MeterSpec(slug="storage_gb", event_type="storage.gb", aggregation=Aggregation.MAX, value_property="$.value")
    )
    acme = runtime.customers.create(CustomerInput(name="Acme", key="acme", subject_keys=("acme-batch",)))
    globex = runtime.customers.create(CustomerInput(name="Globex", key="globex"))
    counts = {"acme": 3, "acme-batch": 2, "globex": 7, "loner": 4}
    events = [
        Event("t", f"{subject}-{n}", "api.calls", subject, to_micros(START + timedelta(hours=n)), {"value": 1})
        for subject, count in counts.items()
        for n in range(count)
    ]
    events.append(Event("t", "s1", "storage.gb", "globex", to_micros(START), {"value": 9}))
    runtime.ingest.ingest(events)
    return {"acme": acme, "globex": globex}


def issue(client, keys, status=200, **body):
    response = client.post("/api/v1/portal/tokens", json=body, headers=auth(keys["admin"]))
    assert response.status_code == status, response.text
    return response.json()


def total(client, token, meter="api_calls", **params):
    response = client.get(f"/api/v1/portal/meters/{meter}/query", params=params, headers=auth(token))
    assert response.status_code == 200, response.text
    return sum(Decimal(str(row["value"])) for row in response.json()["data"])


def test_issue_token_for_customer(client, keys, usage):
    body = issue(client, keys, customerId="acme")
    assert ULID.match(body["id"])
    assert body["token"].startswith("tbp_")
    assert body["subject"] == "acme"
    assert body["customerId"] == usage["acme"].id
    assert body["expired"] is False
    expires = datetime.fromisoformat(body["expiresAt"].replace("Z", "+00:00"))
    assert timedelta(hours=23) < expires - datetime.now(UTC) <= timedelta(days=1)
    listed = client.get("/api/v1/portal/tokens", headers=auth(keys["admin"])).json()
    assert [t["id"] for t in listed] == [body["id"]]
    assert "token" not in listed[0]


def test_customer_token_reads_only_that_customers_usage(client, keys, usage):
    token = issue(client, keys, customerId=usage["acme"].id)["token"]
    assert total(client, token) == 5  # acme + acme-batch, never globex (7) or loner (4)
    rows = client.get(
        "/api/v1/portal/meters/api_calls/query", params={"groupBy": "subject"}, headers=auth(token)
    ).json()["data"]
    assert {r["subject"] for r in rows} == {"acme", "acme-batch"}
    assert total(client, token, subject="acme-batch") == 2
    assert total(client, token, meter="storage_gb") == 0


@pytest.mark.parametrize(
    "params",
    [{"subject": "globex"}, {"subject": ["acme", "loner"]}, {"filterCustomerId": "OTHER"}],
)
def test_customer_token_asking_for_someone_else_is_forbidden(client, keys, usage, params):
    token = issue(client, keys, customerId="acme")["token"]
    response = client.get("/api/v1/portal/meters/api_calls/query", params=params, headers=auth(token))
    problem(response, 403, "forbidden")


def test_customer_token_cannot_name_another_customer(client, keys, usage):
    token = issue(client, keys, customerId="acme")["token"]
    response = client.get(
        "/api/v1/portal/meters/api_calls/query",
        params={"filterCustomerId": usage["globex"].id},
        headers=auth(token),
    )
    problem(response, 403, "forbidden")


def test_subject_token_reads_only_that_subject(client, keys, usage):
    token = issue(client, keys, subject="loner")["token"]
    assert total(client, token) == 4
    problem(
        client.get(
            "/api/v1/portal/meters/api_calls/query",
            params={"filterCustomerId": usage["acme"].id},
            headers=auth(token),
        ),
        403,
    )


def test_allowed_meters(client, keys, usage):
    token = issue(client, keys, customerId="globex", allowedMeterSlugs=["storage_gb"])["token"]
    assert total(client, token, meter="storage_gb") == 9
    problem(client.get("/api/v1/portal/meters/api_calls/query", headers=auth(token)), 403, "forbidden")
    me = client.get("/api/v1/portal/me", headers=auth(token)).json()
    assert [m["slug"] for m in me["meters"]] == ["storage_gb"]
    assert me["customer"] == {"id": usage["globex"].id, "name": "Globex"}
    problem(client.get("/api/v1/portal/meters/nope/query", headers=auth(token)), 404)


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({}, "exactly one of subject or customerId"),
        ({"subject": "a", "customerId": "acme"}, "exactly one"),
        ({"customerId": "nobody"}, "customerId"),
        ({"subject": "a", "allowedMeterSlugs": ["nope"]}, "no meter nope"),
        ({"subject": "a", "expiresAt": "2020-01-01T00:00:00Z"}, "future"),
        ({"subject": "a", "expiresAt": "2099-01-01T00:00:00Z"}, "at most"),
        ({"subject": "a", "extra": 1}, "extra"),
    ],
)
def test_bad_token_requests(client, keys, usage, body, fragment):
    response = client.post("/api/v1/portal/tokens", json=body, headers=auth(keys["admin"]))
    assert fragment in problem(response, 400)["detail"]


def test_only_admins_manage_tokens(client, keys, usage):
    for scope in ("read", "ingest"):
        problem(client.post("/api/v1/portal/tokens", json={"subject": "a"}, headers=auth(keys[scope])), 403)
        problem(client.get("/api/v1/portal/tokens", headers=auth(keys[scope])), 403)
        problem(client.post("/api/v1/portal/tokens/invalidate", json={"subject": "a"}, headers=auth(keys[scope])), 403)
    problem(client.post("/api/v1/portal/tokens", json={"subject": "a"}), 401)


@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("GET", "/api/v1/meters"),
        ("GET", "/api/v1/meters/api_calls/query"),
        ("GET", "/api/v1/customers"),
        ("GET", "/api/v1/events"),
        ("GET", "/api/v1/subjects"),
        ("GET", "/api/v1/overview"),
        ("GET", "/api/v1/notification/events"),
        ("GET", "/api/v1/jobs"),
        ("GET", "/api/v1/portal/tokens"),
        ("POST", "/api/v1/portal/tokens"),
        ("POST", "/api/v1/portal/tokens/invalidate"),
        ("POST", "/api/v1/events"),
        ("GET", "/events"),
    ],
)
def test_portal_token_opens_no_api_key_endpoint(client, keys, usage, method, path):
    token = issue(client, keys, customerId="acme")["token"]
    response = client.request(method, path, headers=auth(token), json={"subject": "acme"})
    assert response.status_code == 401, response.text


def test_api_keys_are_not_portal_tokens(client, keys, usage):
    for scope in ("admin", "read", "ingest"):
        response = client.get("/api/v1/portal/meters/api_calls/query", headers=auth(keys[scope]))
        problem(response, 401, "unauthenticated")
    problem(client.get("/api/v1/portal/me"), 401, "unauthenticated")
    problem(client.get("/api/v1/portal/me", headers=auth("tbp_made-up")), 401)


def test_invalidate_by_id_subject_and_customer(client, keys, usage):
    admin = auth(keys["admin"])
    by_id = issue(client, keys, customerId="acme")
    by_subject = issue(client, keys, subject="loner")
    by_customer = issue(client, keys, customerId="globex")
    keep = issue(client, keys, customerId="acme")
    for body in ({"id": by_id["id"]}, {"subject": "loner"}, {"customerId": "globex"}):
        response = client.post("/api/v1/portal/tokens/invalidate", json=body, headers=admin)
        assert response.status_code == 204, response.text
    for gone in (by_id, by_subject, by_customer):
        problem(client.get("/api/v1/portal/me", headers=auth(gone["token"])), 401)
    assert client.get("/api/v1/portal/me", headers=auth(keep["token"])).status_code == 200
    listed = {t["id"]: t for t in client.get("/api/v1/portal/tokens", headers=admin).json()}
    assert listed[by_id["id"]]["expired"] is True
    assert "invalidatedAt" in listed[by_id["id"]]
    assert listed[keep["id"]]["expired"] is False
    problem(client.post("/api/v1/portal/tokens/invalidate", json={}, headers=admin), 400)


def test_deleting_the_customer_ends_its_tokens(client, keys, usage):
    token = issue(client, keys, customerId="acme")["token"]
    assert client.delete("/api/v1/customers/acme", headers=auth(keys["admin"])).status_code == 204
    problem(client.get("/api/v1/portal/meters/api_calls/query", headers=auth(token)), 401)


def test_tokens_expire(runtime, usage):
    clock = FixedClock(datetime.now(UTC))
    portal = PortalService(PortalTokenRepository(runtime.store), clock, runtime.customers, runtime.meters)
    created = portal.create(customer="acme", expires_at=clock.now() + timedelta(minutes=5))
    assert portal.verify(created.plaintext) is not None
    clock.advance(timedelta(minutes=5))
    assert portal.verify(created.plaintext) is None
    assert portal.list()[0].expired(clock.now())


def test_tokens_are_stored_hashed(runtime, usage):
    created = runtime.portal.create(subject="loner")
    from tallybook.portal.sql import portal_tokens

    with runtime.store.read() as conn:
        stored = [tuple(row) for row in conn.execute(portal_tokens.select())]
    assert all(created.plaintext not in str(value) for row in stored for value in row)


def test_me_reports_the_current_month_in_the_customers_zone(client, keys, runtime):
    """Without a subscription the period is the calendar month, in the customer's zone."""
    runtime.customers.create(CustomerInput(name="Tokyo", key="tokyo", timezone="Asia/Tokyo"))
    token = issue(client, keys, customerId="tokyo")["token"]
    me = client.get("/api/v1/portal/me", headers=auth(token)).json()
    assert me["timeZone"] == "Asia/Tokyo"
    start = datetime.fromisoformat(me["currentPeriod"]["from"])
    assert start.utcoffset() == timedelta(hours=9)
    assert (start.day, start.hour, start.minute) == (1, 0, 0)
    assert start <= datetime.now(UTC) < datetime.fromisoformat(me["currentPeriod"]["to"])
    assert me["periodSource"] == "calendar_month"


def test_invoice_estimate_for_customer_tokens_only(client, keys, usage):
    customer_token = issue(client, keys, customerId="acme")["token"]
    response = client.get("/api/v1/portal/invoice-estimate", headers=auth(customer_token))
    assert response.status_code == 200, response.text
    assert response.json() == {"items": []}  # no subscription, so nothing to bill yet
    subject_token = issue(client, keys, subject="loner")["token"]
    problem(client.get("/api/v1/portal/invoice-estimate", headers=auth(subject_token)), 404, "not-a-customer")
    problem(client.get("/api/v1/portal/invoice-estimate", headers=auth(keys["admin"])), 401)


def test_me_reports_the_subscriptions_billing_period(client, keys, runtime):
    """A customer with a subscription sees its billing period (here anchored on the 10th), not the month."""
    admin = auth(keys["admin"])
    plan = {
        "key": "basic",
        "name": "Basic",
        "currency": "USD",
        "billingCadence": "P1M",
        "rateCards": [{"type": "flat_fee", "key": "fee", "name": "Fee", "price": {"type": "flat", "amount": "10"}}],
    }
    created = client.post("/api/v1/plans", json=plan, headers=admin)
    assert created.status_code == 201, created.text
    assert client.post(f"/api/v1/plans/{created.json()['id']}/publish", headers=admin).status_code == 200
    runtime.customers.create(CustomerInput(name="Anchored", key="anchored"))
    now = datetime.now(UTC)
    anchor = (now - timedelta(days=70)).replace(day=10, hour=0, minute=0, second=0, microsecond=0)
    body = {
        "customerKey": "anchored",
        "plan": {"key": "basic"},
        "activeFrom": anchor.isoformat(),
        "alignment": "anniversary",
    }
    subscribed = client.post("/api/v1/subscriptions", json=body, headers=admin)
    assert subscribed.status_code == 201, subscribed.text
    token = issue(client, keys, customerId="anchored")["token"]
    me = client.get("/api/v1/portal/me", headers=auth(token)).json()
    assert me["periodSource"] == "subscription"
    start = datetime.fromisoformat(me["currentPeriod"]["from"])
    end = datetime.fromisoformat(me["currentPeriod"]["to"])
    assert start <= now < end and (start.day, start.hour) == (10, 0) and end.day == 10
    assert subscribed.json()["currentPeriod"] == {"from": start.isoformat().replace("+00:00", "Z"),
                                                  "to": end.isoformat().replace("+00:00", "Z")}  # fmt: skip


def test_meter_scoped_token_sees_only_its_meters_in_the_invoice_estimate(client, keys, runtime, usage):
    """A token limited to api_calls once saw every meter's line (and the whole total) in the estimate."""
    admin = auth(keys["admin"])
    plan = {
        "key": "scoped",
        "name": "Scoped",
        "currency": "USD",
        "billingCadence": "P1M",
        "rateCards": [
            {"type": "flat_fee", "key": "fee", "name": "Fee", "price": {"type": "flat", "amount": "10"}},
            {"type": "usage_based", "key": "calls", "name": "Calls", "meterSlug": "api_calls",
             "price": {"type": "unit", "amount": "0.5"}},
            {"type": "usage_based", "key": "storage", "name": "Storage", "meterSlug": "storage_gb",
             "price": {"type": "unit", "amount": "2"}},
        ],
    }  # fmt: skip
    created = client.post("/api/v1/plans", json=plan, headers=admin)
    assert created.status_code == 201, created.text
    assert client.post(f"/api/v1/plans/{created.json()['id']}/publish", headers=admin).status_code == 200
    now = datetime.now(UTC)
    subscribed = client.post(
        "/api/v1/subscriptions",
        json={"customerKey": "globex", "plan": {"key": "scoped"}, "activeFrom": (now - timedelta(days=40)).isoformat()},
        headers=admin,
    )
    assert subscribed.status_code == 201, subscribed.text
    recent = to_micros(now - timedelta(minutes=1))
    runtime.ingest.ingest(
        [
            Event("t", "now-call", "api.calls", "globex", recent, {}),
            Event("t", "now-storage", "storage.gb", "globex", recent, {"value": 30}),
        ]
    )

    whole_token = issue(client, keys, customerId="globex")["token"]
    full = client.get("/api/v1/portal/invoice-estimate", headers=auth(whole_token))
    assert full.status_code == 200, full.text
    [invoice] = full.json()["items"]
    assert {line.get("meter") for line in invoice["lines"]} == {None, "api_calls", "storage_gb"}
    assert invoice["totals"]["total"] == "70.50"  # fee 10 + 1 call x 0.5 + peak 30 GB x 2
    assert "partial" not in invoice

    token = issue(client, keys, customerId="globex", allowedMeterSlugs=["api_calls"])["token"]
    scoped = client.get("/api/v1/portal/invoice-estimate", headers=auth(token))
    assert scoped.status_code == 200, scoped.text
    [invoice] = scoped.json()["items"]
    assert sorted((line["name"], line.get("meter") or "") for line in invoice["lines"]) == [
        ("Calls", "api_calls"),
        ("Fee", ""),
    ]
    assert invoice["totals"] == {"amount": "10.50", "commitments": "0.00", "total": "10.50"}
    assert invoice["partial"] is True
    assert "storage" not in scoped.text.lower()
