"""Features, entitlements, grants, value, access, reset and history through the API, on SQLite and
PostgreSQL, with a fixed clock: figures are checked against hand-computed balances."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import httpx

from tallybook.clock import FixedClock
from tallybook.runtime import Runtime
from tallybook.voids.model import Actor, EventKey, VoidRequest
from tests.entitlement_helpers import admin_fixture, clock_fixture, ok, rt_fixture, setup_acme, usage  # noqa: F401  (fixtures)


def value(client: httpx.Client, feature: str = "api_calls", **params: str) -> dict[str, Any]:
    return ok(client.get(f"/api/v1/customers/acme/entitlements/{feature}/value", params=params))


def test_the_issue_walkthrough(admin: httpx.Client, clock: FixedClock) -> None:
    setup_acme(admin)
    entitlement = ok(
        admin.post(
            "/api/v1/subjects/acme/entitlements",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "MONTH"},
                "issueAfterReset": 10000,
                "isSoftLimit": False,
            },
        ),
        201,
    )
    assert entitlement["subjectKey"] == "acme" and entitlement["usagePeriod"]["interval"] == "MONTH"
    assert entitlement["currentUsagePeriod"] == {"from": "2026-03-10T12:00:00Z", "to": "2026-04-10T12:00:00Z"}
    grant = ok(
        admin.post(
            "/api/v1/subjects/acme/entitlements/api_calls/grants",
            json={
                "amount": 50000,
                "priority": 1,
                "effectiveAt": "2026-03-10T12:00:00Z",
                "expiration": {"duration": "MONTH", "count": 3},
                "maxRolloverAmount": 5000,
            },
        ),
        201,
    )
    assert grant["expiresAt"] == "2026-06-10T12:00:00Z"
    usage(admin, ("e1", 12000, "2026-03-10T12:30:00Z"), ("e2", 500, "2026-03-11T00:00:00Z"))
    clock.set(datetime(2026, 3, 12, tzinfo=UTC))
    # Both grants have priority 1; the 50000 grant expires (June), the default one never: it burns first.
    assert value(admin) == {
        "hasAccess": True,
        "balance": 47500,
        "usage": 12500,
        "overage": 0,
        "totalAvailableGrantAmount": 60000,
    }
    access = ok(admin.get("/api/v1/customers/acme/access"))
    assert access["entitlements"]["api_calls"]["balance"] == 47500
    assert access["entitlements"]["api_calls"]["entitlementId"] == entitlement["id"]
    # At the monthly reset: the default grant is back to 10000, the other rolls over at most 5000.
    clock.set(datetime(2026, 4, 10, 12, 0, tzinfo=UTC))
    assert value(admin) == {
        "hasAccess": True,
        "balance": 15000,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 15000,
    }
    # The value at a past instant is still the one of then.
    assert value(admin, time="2026-03-12T00:00:00Z")["balance"] == 47500


def test_hard_limit_overage_and_soft_limit(admin: httpx.Client, clock: FixedClock) -> None:
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
    # Daily periods: a value 8,000 years on would walk millions of periods; refused, not computed.
    far = admin.get("/api/v1/customers/acme/entitlements/api_calls/value", params={"time": "6332-01-01T00:00:00Z"})
    assert far.status_code == 400 and far.json()["type"].endswith("too-many-periods")
    end = admin.get("/api/v1/customers/acme/entitlements/api_calls/value", params={"time": "9999-12-31T23:59:59Z"})
    assert end.status_code == 400
    usage(
        admin,
        ("e1", 60, "2026-03-10T12:10:00Z"),
        (
            "e2",
            70,
            "2026-03-10T12:20:00Z",
        ),
        subject="acme-2",
    )
    clock.advance(timedelta(hours=1))
    assert value(admin) == {
        "hasAccess": False,
        "balance": 0,
        "usage": 130,
        "overage": 30,
        "totalAvailableGrantAmount": 100,
    }
    ok(
        admin.put(
            "/api/v2/customers/acme/entitlements/api_calls/override",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "DAY"},
                "issueAfterReset": 100,
                "isSoftLimit": True,
                "measureUsageFrom": "2026-03-10T12:00:00Z",
            },
        ),
        201,
    )
    assert value(admin)["hasAccess"] is True and value(admin)["overage"] == 30
    listed = ok(admin.get("/api/v2/customers/acme/entitlements", params={"includeDeleted": "true"}))
    assert listed["totalCount"] == 2 and sum(1 for e in listed["items"] if "deletedAt" in e) == 1


def test_boolean_and_static_entitlements(admin: httpx.Client) -> None:
    setup_acme(admin)
    ok(admin.post("/api/v1/features", json={"key": "sso", "name": "SSO"}), 201)
    ok(admin.post("/api/v1/features", json={"key": "plan_limits", "name": "Limits"}), 201)
    ok(admin.post("/api/v2/customers/acme/entitlements", json={"type": "boolean", "featureKey": "sso"}), 201)
    ok(
        admin.post(
            "/api/v2/customers/acme/entitlements",
            json={"type": "static", "featureKey": "plan_limits", "config": '{"seats": 5}'},
        ),
        201,
    )
    assert value(admin, "sso") == {"hasAccess": True}
    assert value(admin, "plan_limits") == {"hasAccess": True, "config": '{"seats": 5}'}
    bad = admin.post(
        "/api/v2/customers/acme/entitlements", json={"type": "static", "featureKey": "plan_limits", "config": "{nope"}
    )
    assert bad.status_code in (400, 409)
    ok(admin.delete("/api/v2/customers/acme/entitlements/sso"), 204)
    assert admin.get("/api/v1/customers/acme/entitlements/sso/value").status_code == 404
    assert set(ok(admin.get("/api/v1/customers/acme/access"))["entitlements"]) == {"plan_limits"}


def test_group_by_filters_priority_and_expiry(admin: httpx.Client, clock: FixedClock) -> None:
    ok(admin.post("/api/v1/customers", json={"name": "Acme", "key": "acme"}), 201)
    ok(
        admin.post(
            "/api/v1/features",
            json={"key": "gpt_calls", "name": "GPT", "meterSlug": "api_calls", "meterGroupByFilters": {"model": "gpt"}},
        ),
        201,
    )
    ok(
        admin.post(
            "/api/v1/subjects/acme/entitlements",
            json={"type": "metered", "featureKey": "gpt_calls", "usagePeriod": {"interval": "MONTH"}},
        ),
        201,
    )
    grants = "/api/v1/subjects/acme/entitlements/gpt_calls/grants"
    late = {
        "amount": 100,
        "priority": 2,
        "effectiveAt": "2026-03-10T12:00:00Z",
        "expiration": {"duration": "DAY", "count": 1},
    }
    first = {
        "amount": 30,
        "priority": 1,
        "effectiveAt": "2026-03-10T12:00:00Z",
        "expiration": {"duration": "YEAR", "count": 1},
    }
    soon = {
        "amount": 50,
        "priority": 2,
        "effectiveAt": "2026-03-10T12:00:00Z",
        "expiration": {"duration": "HOUR", "count": 2},
    }
    ids = [ok(admin.post(grants, json=g), 201)["id"] for g in (late, first, soon)]
    usage(
        admin,
        ("g1", 40, "2026-03-10T12:30:00Z"),
        (
            "c1",
            999,
            "2026-03-10T12:30:00Z",
        ),
        model="gpt",
    )
    usage(admin, ("c2", 999, "2026-03-10T12:30:00Z"), model="claude")
    clock.set(datetime(2026, 3, 10, 13, 0, tzinfo=UTC))
    # 40 + 999 = 1039 of gpt usage (claude filtered out): priority 1 (30) then the sooner expiring
    # priority-2 grant (50), then the later one (100): 180 granted, 859 overage.
    history = ok(
        admin.get(
            "/api/v1/subjects/acme/entitlements/gpt_calls/history",
            params={"windowSize": "HOUR", "from": "2026-03-10T12:00:00Z", "to": "2026-03-10T13:00:00Z"},
        )
    )
    segment = history["burndownHistory"][0]
    assert [u["grantId"] for u in segment["grantUsages"]] == [ids[1], ids[2], ids[0]]
    assert value(admin, "gpt_calls")["overage"] == 859
    # Void the big event: the balance comes back.
    admin_rt_void(admin, [("app", "c1")])
    assert value(admin, "gpt_calls") == {
        "hasAccess": True,
        "balance": 140,
        "usage": 40,
        "overage": 0,
        "totalAvailableGrantAmount": 180,
    }
    # After two hours the 50 grant has expired; after a day the 100 one too.
    clock.set(datetime(2026, 3, 11, 13, 0, tzinfo=UTC))
    assert value(admin, "gpt_calls")["balance"] == 0
    assert admin.delete(f"/api/v1/grants/{ids[1]}").status_code == 204
    listed = ok(admin.get("/api/v1/grants", params={"includeDeleted": "true"}))
    assert {g["id"] for g in listed} == set(ids) and sum(1 for g in listed if "voidedAt" in g) == 1


def admin_rt_void(client: httpx.Client, keys: list[tuple[str, str]]) -> None:
    body = {"events": [{"source": s, "id": i} for s, i in keys], "reason": "test"}
    ok(client.post("/api/v1/events/void", json=body), 201)


def test_reset_and_history(admin: httpx.Client, clock: FixedClock) -> None:
    setup_acme(admin)
    ok(
        admin.post(
            "/api/v1/subjects/acme/entitlements",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "MONTH"},
                "issueAfterReset": 100,
                "preserveOverageAtReset": True,
            },
        ),
        201,
    )
    entitlement_id = ok(admin.get("/api/v1/subjects/acme/entitlements"))[0]["id"]
    usage(admin, ("e1", 150, "2026-03-10T13:10:00Z"))
    clock.set(datetime(2026, 3, 10, 15, 0, tzinfo=UTC))
    ok(admin.post(f"/api/v1/subjects/acme/entitlements/{entitlement_id}/reset", json={"retainAnchor": False}), 204)
    # The 50 overage is preserved: it burns the default grant's fresh 100.
    assert value(admin) == {
        "hasAccess": True,
        "balance": 50,
        "usage": 0,
        "overage": 0,
        "totalAvailableGrantAmount": 100,
    }
    got = ok(admin.get(f"/api/v1/subjects/acme/entitlements/{entitlement_id}"))
    assert got["lastReset"] == "2026-03-10T15:00:00Z" and got["currentUsagePeriod"]["to"] == "2026-04-10T15:00:00Z"
    history = ok(
        admin.get(
            "/api/v2/customers/acme/entitlements/api_calls/history",
            params={"windowSize": "HOUR", "from": "2026-03-10T12:00:00Z", "to": "2026-03-10T15:00:00Z"},
        )
    )
    assert [(w["usage"], w["balanceAtStart"]) for w in history["windowedHistory"]] == [(0, 100), (150, 100), (0, 0)]
    refused = admin.post(
        f"/api/v1/subjects/acme/entitlements/{entitlement_id}/reset", json={"effectiveAt": "2026-03-10T14:00:00Z"}
    )
    assert refused.status_code == 400 and "period" in refused.json()["detail"]


def test_calendar_period_in_the_customer_time_zone(admin: httpx.Client, clock: FixedClock) -> None:
    setup_acme(admin, timezone="America/New_York")
    created = ok(
        admin.post(
            "/api/v2/customers/acme/entitlements",
            json={
                "type": "metered",
                "featureKey": "api_calls",
                "usagePeriod": {"interval": "MONTH", "anchor": "2026-01-01T00:00:00-05:00"},
                "measureUsageFrom": "CURRENT_PERIOD_START",
                "issueAfterReset": 10,
            },
        ),
        201,
    )
    # March starts at local midnight (EST, -05:00); April at local midnight after DST (EDT, -04:00).
    assert created["currentUsagePeriod"] == {"from": "2026-03-01T05:00:00Z", "to": "2026-04-01T04:00:00Z"}
    assert created["customerKey"] == "acme"


def test_refusals_say_what_to_fix(admin: httpx.Client) -> None:
    setup_acme(admin)
    missing = admin.post("/api/v1/subjects/nobody/entitlements", json={"type": "boolean", "featureKey": "api_calls"})
    assert missing.status_code == 404 and "subjectKeys" in missing.json()["detail"]
    no_period = admin.post("/api/v2/customers/acme/entitlements", json={"type": "metered", "featureKey": "api_calls"})
    assert no_period.status_code == 400 and "usagePeriod" in no_period.json()["detail"]
    ok(admin.post("/api/v1/features", json={"key": "seats", "name": "Seats", "meterSlug": "latest_seats"}), 201)
    latest = admin.post(
        "/api/v2/customers/acme/entitlements",
        json={"type": "metered", "featureKey": "seats", "usagePeriod": {"interval": "MONTH"}},
    )
    assert latest.status_code == 400 and "SUM or COUNT" in latest.json()["detail"]
    dup = admin.post("/api/v1/features", json={"key": "api_calls", "name": "again"})
    assert dup.status_code == 409
    ok(admin.post("/api/v2/customers/acme/entitlements", json={"type": "boolean", "featureKey": "api_calls"}), 201)
    twice = admin.post("/api/v2/customers/acme/entitlements", json={"type": "boolean", "featureKey": "api_calls"})
    assert twice.status_code == 409 and "override" in twice.json()["detail"]
    in_use = admin.delete("/api/v1/features/api_calls")
    assert in_use.status_code == 409
    grant = admin.post(
        "/api/v2/customers/acme/entitlements/api_calls/grants",
        json={"amount": 1, "effectiveAt": "2026-03-10T12:00:00Z"},
    )
    assert grant.status_code == 400 and "metered" in grant.json()["detail"]
    bad_filter = admin.post(
        "/api/v1/features",
        json={"key": "x", "name": "x", "meterSlug": "api_calls", "meterGroupByFilters": {"nope": "1"}},
    )
    assert bad_filter.status_code == 400 and "model" in bad_filter.json()["detail"]


def test_late_events_change_the_balance(admin: httpx.Client, rt: Runtime, clock: FixedClock) -> None:
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
    clock.set(datetime(2026, 3, 10, 18, 0, tzinfo=UTC))
    assert value(admin)["balance"] == 100
    usage(admin, ("late", 30, "2026-03-10T12:05:00Z"))  # arrives hours after its event time
    assert value(admin)["balance"] == 70
    rt.voids.void(VoidRequest("wrong", Actor("cli"), events=(EventKey("app", "late"),)))
    assert value(admin)["balance"] == 100


def test_portal_token_reads_its_own_entitlements(admin: httpx.Client, clock: FixedClock) -> None:
    setup_acme(admin)
    ok(admin.post("/api/v1/customers", json={"name": "Other", "key": "other"}), 201)
    for customer in ("acme", "other"):
        ok(
            admin.post(
                f"/api/v2/customers/{customer}/entitlements",
                json={
                    "type": "metered",
                    "featureKey": "api_calls",
                    "usagePeriod": {"interval": "DAY"},
                    "issueAfterReset": 100,
                },
            ),
            201,
        )
    usage(admin, ("e1", 30, "2026-03-10T12:05:00Z"))
    clock.advance(timedelta(minutes=10))
    token = ok(admin.post("/api/v1/portal/tokens", json={"customerId": "acme"}))["token"]
    portal = {"Authorization": f"Bearer {token}"}
    mine = ok(admin.get("/api/v1/portal/entitlements", headers=portal))["entitlements"]
    assert [(e["featureKey"], e["balance"], e["usage"]) for e in mine] == [("api_calls", 70, 30)]
    assert [g["amount"] for g in mine[0]["grants"]] == [100]
    # The portal token reads nothing else: not another customer's values, not the admin API.
    assert admin.get("/api/v1/customers/other/access", headers=portal).status_code == 401
    assert admin.get("/api/v1/customers/acme/entitlements/api_calls/value", headers=portal).status_code == 401


def test_recurring_grant_refills_and_min_rollover(admin: httpx.Client, clock: FixedClock) -> None:
    setup_acme(admin)
    ok(
        admin.post(
            "/api/v2/customers/acme/entitlements",
            json={"type": "metered", "featureKey": "api_calls", "usagePeriod": {"interval": "MONTH"}},
        ),
        201,
    )
    grants = "/api/v2/customers/acme/entitlements/api_calls/grants"
    daily = {"amount": 100, "effectiveAt": "2026-03-10T12:00:00Z", "recurrence": {"interval": "DAY"}}
    floor = {
        "amount": 5,
        "priority": 9,
        "effectiveAt": "2026-03-10T12:00:00Z",
        "minRolloverAmount": 20,
        "maxRolloverAmount": 50,
    }
    recurring = ok(admin.post(grants, json=daily), 201)
    assert recurring["recurrence"]["interval"] == "DAY" and recurring["nextRecurrence"] == "2026-03-11T12:00:00Z"
    ok(admin.post(grants, json=floor), 201)
    usage(admin, ("a", 90, "2026-03-10T13:00:00Z"))
    clock.set(datetime(2026, 3, 10, 18, 0, tzinfo=UTC))
    assert value(admin)["balance"] == 15  # 10 left of the daily 100, and the 5
    clock.set(datetime(2026, 3, 11, 12, 30, tzinfo=UTC))
    assert value(admin)["balance"] == 105  # refilled at 12:00; usage in the month is still 90
    assert value(admin)["usage"] == 90
    # The monthly reset: the recurring grant would roll over nothing (max 0), but it recurs at the
    # same instant (after the rollover), so it is 100 again; the other one is raised to its minimum.
    clock.set(datetime(2026, 4, 10, 12, 0, tzinfo=UTC))
    assert value(admin)["balance"] == 100 + 20
