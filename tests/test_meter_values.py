"""OpenMeter's meter surface beyond queries, on SQLite and PostgreSQL: group-by values, subjects with
from/to, listMeters paging and order, advancedMeterGroupByFilters, and GET /api/v1/info/currencies."""

# Fixtures are imported from tests.test_meters_helpers; test parameters then shadow the names.
# ruff: noqa: F811

from __future__ import annotations

import json
from datetime import timedelta
from decimal import Decimal
from typing import Any

import pytest

from tallybook.billing.currency import validate_currency
from tallybook.voids.model import Actor, EventKey, VoidRequest
from tests.test_meters_helpers import (  # noqa: F401  (fixtures)
    bearer,
    event,
    ingest,
    mclient,
    mclock,
    meter,
    mkeys,
    mrt,
    utc,
)

BASE = "/api/v1/meters"


def get(client: Any, key: str, path: str, **params: Any) -> Any:
    response = client.get(path, params=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return response.json()


def refused(response: Any, code: str = "invalid-query") -> str:
    assert response.status_code == 400, response.text
    assert response.headers["content-type"] == "application/problem+json"
    problem = response.json()
    assert problem["type"] == f"urn:tallybook:problem:{code}", problem
    return str(problem["detail"])


@pytest.fixture
def models(mrt, mclock):
    """A SUM meter grouped by model and region; events over a week before the clock's now."""
    meter(mrt, "tokens", "SUM", group_by={"model": "$.model", "region": "$.region"})
    now = mclock.now()
    ingest(
        mrt,
        event(subject="acme", time=now - timedelta(hours=2), data={"tokens": 1, "model": "gpt-4o", "region": "eu"}),
        event(subject="acme", time=now - timedelta(hours=3), data={"tokens": 2, "model": "GPT-4", "region": "us"}),
        event(subject="beta", time=now - timedelta(hours=5), data={"tokens": 4, "model": "gpt-4o"}),
        event(subject="beta", time=now - timedelta(days=2), data={"tokens": 8, "model": "claude", "region": "eu"}),
        event(subject="gamma", time=now - timedelta(days=6), data={"tokens": 16, "model": "émoji", "region": "us"}),
        event(subject="delta", time=now - timedelta(hours=1), data={"tokens": 32, "model": "gpt-4o"}, type="other"),
        event(subject="acme", time=now - timedelta(hours=4), data={"tokens": 64, "model": "void-me"}, id="gone"),
    )
    mrt.voids.void(VoidRequest(reason="test", actor=Actor("cli", name="t"), events=(EventKey("svc", "gone"),)))
    return mrt


# -- group-by values ------------------------------------------------------------------------------------


def test_group_by_values_default_to_the_last_day(models, mclient, mkeys):
    read = mkeys["read"]
    # Sorted by code point ("GPT-4" < "gpt-4o"); other event types and voided events add nothing.
    assert get(mclient, read, f"{BASE}/tokens/group-by/model/values") == ["GPT-4", "gpt-4o"]
    assert get(mclient, read, f"{BASE}/tokens/group-by/region/values") == ["eu", "us"]


def test_group_by_values_between_from_and_to(models, mclient, mkeys, mclock):
    read = mkeys["read"]
    path = f"{BASE}/tokens/group-by/model/values"
    week = (mclock.now() - timedelta(days=7)).isoformat()
    assert get(mclient, read, path, **{"from": week}) == ["GPT-4", "claude", "gpt-4o", "émoji"]
    # `to` is exclusive; `to` alone reaches back to the first event.
    to = (mclock.now() - timedelta(hours=3)).isoformat()
    assert get(mclient, read, path, to=to) == ["claude", "gpt-4o", "émoji"]
    between = {"from": (mclock.now() - timedelta(days=3)).isoformat(), "to": to}
    assert get(mclient, read, path, **between) == ["claude", "gpt-4o"]
    # Events without the value add none; the meter's id works as well as its slug.
    meter_id = get(mclient, read, f"{BASE}/tokens")["id"]
    assert get(mclient, read, f"{BASE}/{meter_id}/group-by/region/values", **{"from": week}) == ["eu", "us"]


def test_group_by_values_refusals(models, mclient, mkeys):
    read = bearer(mkeys["read"])
    detail = refused(mclient.get(f"{BASE}/tokens/group-by/colour/values", headers=read))
    assert detail == "groupByKey: 'colour' is not a groupBy key of meter 'tokens' (its keys: model, region)"
    assert "GET /api/v1/meters/{meterIdOrSlug}/subjects" in refused(
        mclient.get(f"{BASE}/tokens/group-by/subject/values", headers=read)
    )
    same = {"from": "2026-06-01T00:00:00Z", "to": "2026-06-01T00:00:00Z"}
    backwards = mclient.get(f"{BASE}/tokens/group-by/model/values", params=same, headers=read)
    assert "must be before to" in refused(backwards)
    bad_time = mclient.get(f"{BASE}/tokens/group-by/model/values", params={"from": "yesterday"}, headers=read)
    assert "not an RFC 3339 timestamp" in refused(bad_time, "invalid-parameters")
    missing = mclient.get(f"{BASE}/nope/group-by/model/values", headers=read)
    assert missing.status_code == 404
    assert missing.json()["type"] == "urn:tallybook:problem:meter-not-found"


def test_subjects_between_from_and_to(models, mclient, mkeys, mclock):
    read = mkeys["read"]
    path = f"{BASE}/tokens/subjects"
    assert get(mclient, read, path) == ["acme", "beta", "gamma"]  # from defaults to the beginning
    since = (mclock.now() - timedelta(days=1)).isoformat()
    assert get(mclient, read, path, **{"from": since}) == ["acme", "beta"]
    assert get(mclient, read, path, to=(mclock.now() - timedelta(hours=5)).isoformat()) == ["beta", "gamma"]
    backwards = {"from": mclock.now().isoformat(), "to": since}
    assert "must be before to" in refused(mclient.get(path, params=backwards, headers=bearer(read)))


# -- listMeters -----------------------------------------------------------------------------------------


def test_list_meters_paging_order_and_deleted(mrt, mclient, mkeys, mclock):
    read, admin = mkeys["read"], mkeys["admin"]
    made = (("b_calls", "Zeta", "COUNT"), ("a_tokens", "Alpha", "SUM"), ("c_max", "Mid", "MAX"))
    for slug, name, aggregation in made:
        meter(mrt, slug, aggregation, name=name)
        mclock.advance(timedelta(minutes=1))

    def slugs(**params: Any) -> list[str]:
        return [m["slug"] for m in get(mclient, read, BASE, **params)]

    assert slugs() == ["a_tokens", "b_calls", "c_max"]  # every meter, by key (slug)
    assert slugs(order="DESC") == ["c_max", "b_calls", "a_tokens"]
    assert slugs(orderBy="name") == ["a_tokens", "c_max", "b_calls"]
    assert slugs(orderBy="aggregation") == ["b_calls", "c_max", "a_tokens"]
    assert slugs(orderBy="createdAt", order="DESC") == ["c_max", "a_tokens", "b_calls"]
    assert slugs(pageSize=2) == ["a_tokens", "b_calls"]
    assert slugs(page=2, pageSize=2) == ["c_max"]
    assert slugs(page=3, pageSize=2) == []
    assert slugs(page=1) == ["a_tokens", "b_calls", "c_max"]  # pageSize defaults to 100

    assert mclient.delete(f"{BASE}/b_calls", headers=bearer(admin)).status_code == 204
    assert slugs() == ["a_tokens", "c_max"]
    listed = get(mclient, read, BASE, includeDeleted="true")
    assert [m["slug"] for m in listed] == ["a_tokens", "b_calls", "c_max"]
    assert listed[1]["deletedAt"] == "2026-06-01T12:03:00Z"
    assert "deletedAt" not in listed[0]

    for params, field in (
        ({"page": "0"}, "page"),
        ({"pageSize": "1001"}, "pageSize"),
        ({"order": "UP"}, "order"),
        ({"orderBy": "slug"}, "orderBy"),
    ):
        assert field in refused(mclient.get(BASE, params=params, headers=bearer(read)), "invalid-parameters")


# -- advancedMeterGroupByFilters --------------------------------------------------------------------------


def total(client: Any, key: str, method: str = "GET", **params: Any) -> Decimal:
    if method == "GET":
        response = client.get(f"{BASE}/tokens/query", params=params, headers=bearer(key))
    else:
        response = client.post(f"{BASE}/tokens/query", json=params, headers=bearer(key))
    assert response.status_code == 200, response.text
    return sum((Decimal(str(row["value"])) for row in response.json()["data"]), Decimal(0))


@pytest.mark.parametrize(
    ("filters", "expected"),
    [
        ({"model": {"$eq": "gpt-4o"}}, 5),
        ({"model": {"$in": ["gpt-4o", "claude"]}}, 13),
        ({"model": {"$like": "gpt%"}}, 5),  # case-sensitive
        ({"model": {"$ilike": "gpt%"}}, 7),
        ({"model": {"$nlike": "gpt%"}}, 26),
        ({"region": {"$ne": "eu"}}, 22),  # a missing region compares as '' and so is not 'eu'
        ({"region": {"$nin": ["eu", "us"]}}, 4),
        ({"region": {"$lt": "f"}}, 13),  # '' and 'eu'
        ({"model": {"$or": [{"$eq": "claude"}, {"$gt": "gpt-5"}]}}, 24),  # 'émoji' > 'gpt-5' in code points
        ({"model": {"$and": [{"$like": "%o%"}, {"$ne": "gpt-4o"}]}}, 16),
        ({"model": {"$eq": "gpt-4o"}, "region": {"$eq": "eu"}}, 1),
        ({"model": {}}, 31),  # an empty filter object filters nothing
    ],
)
def test_advanced_group_by_filters(models, mclient, mkeys, filters, expected):
    read = mkeys["read"]
    week = {"from": "2026-05-25T00:00:00Z", "to": "2026-06-02T00:00:00Z"}
    as_json = json.dumps(filters)
    assert total(mclient, read, advancedMeterGroupByFilters=as_json, **week) == expected
    assert total(mclient, read, "POST", advancedMeterGroupByFilters=filters, **week) == expected


def test_advanced_filters_and_grouping_together(models, mclient, mkeys):
    params = {
        "from": "2026-05-25T00:00:00Z",
        "to": "2026-06-02T00:00:00Z",
        "groupBy": ["model"],
        "advancedMeterGroupByFilters": json.dumps({"model": {"$like": "gpt%"}}),
    }
    rows = get(mclient, mkeys["read"], f"{BASE}/tokens/query", **params)["data"]
    assert {row["groupBy"]["model"]: row["value"] for row in rows} == {"gpt-4o": 5}


def test_the_portal_query_takes_advanced_filters(models, mclient, mkeys):
    token = mclient.post("/api/v1/portal/tokens", json={"subject": "acme"}, headers=bearer(mkeys["admin"]))
    assert token.status_code == 200, token.text
    params = {
        "from": "2026-05-25T00:00:00Z",
        "to": "2026-06-02T00:00:00Z",
        "advancedMeterGroupByFilters": json.dumps({"model": {"$ilike": "GPT%"}}),
    }
    answer = mclient.get("/api/v1/portal/meters/tokens/query", params=params, headers=bearer(token.json()["token"]))
    assert answer.status_code == 200, answer.text
    assert [row["value"] for row in answer.json()["data"]] == [3]


@pytest.mark.parametrize(
    ("params", "code", "detail"),
    [
        (
            {"advancedMeterGroupByFilters": '{"model": {"$eq": "a"}}', "filterGroupBy[model]": "a"},
            "invalid-parameters",
            "advancedMeterGroupByFilters and filterGroupBy cannot be used together",
        ),
        (
            {"advancedMeterGroupByFilters": '{"colour": {"$eq": "red"}}'},
            "invalid-query",
            "advancedMeterGroupByFilters.colour: 'colour' is not a groupBy key of meter 'tokens' "
            "(its keys: model, region)",
        ),
        ({"advancedMeterGroupByFilters": "{"}, "invalid-filter", "advancedMeterGroupByFilters: not valid JSON"),
        ({"advancedMeterGroupByFilters": "[]"}, "invalid-filter", "advancedMeterGroupByFilters: must be an object"),
        (
            {"advancedMeterGroupByFilters": '{"model": {"$eq": "a", "$ne": "b"}}'},
            "invalid-filter",
            "advancedMeterGroupByFilters.model: give exactly one operator",
        ),
        (
            {"advancedMeterGroupByFilters": '{"model": {"$like": "%\\\\"}}'},
            "invalid-filter",
            "advancedMeterGroupByFilters.model.$like: the pattern ends with a lone escape character",
        ),
    ],
)
def test_advanced_filter_refusals(models, mclient, mkeys, params, code, detail):
    response = mclient.get(f"{BASE}/tokens/query", params=params, headers=bearer(mkeys["read"]))
    assert detail in refused(response, code)


def test_advanced_filter_refusals_in_a_body(models, mclient, mkeys):
    read = bearer(mkeys["read"])
    both = {"advancedMeterGroupByFilters": {"model": {"$eq": "a"}}, "filterGroupBy": {"model": "a"}}
    assert "cannot be used together" in refused(
        mclient.post(f"{BASE}/tokens/query", json=both, headers=read), "invalid-parameters"
    )
    typo = {"advancedMeterGroupByFilters": {"model": {"$equals": "a"}}}
    assert "unknown operator '$equals'" in refused(
        mclient.post(f"{BASE}/tokens/query", json=typo, headers=read), "invalid-filter"
    )


# -- currencies --------------------------------------------------------------------------------------------


def test_currencies_in_openmeters_shape(mrt, mclient, mkeys):
    currencies = get(mclient, mkeys["read"], "/api/v1/info/currencies")
    by_code = {c["code"]: c for c in currencies}
    assert by_code["USD"] == {"code": "USD", "name": "US Dollar", "symbol": "$", "subunits": 2}
    assert by_code["EUR"]["symbol"] == "€" and by_code["JPY"]["subunits"] == 0 and by_code["BHD"]["subunits"] == 3
    assert [c["code"] for c in currencies] == sorted(by_code)
    assert "DEM" not in by_code and "XAU" not in by_code  # historic currencies and units of account
    assert all(validate_currency(code) == code for code in by_code)
    assert mclient.get("/api/v1/info/currencies").status_code == 401
