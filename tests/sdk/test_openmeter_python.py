"""OpenMeter's official Python SDK (the `openmeter` package, pinned in pyproject.toml) against a real
`tallybook serve` wired to the fake Stripe: what an OpenMeter user's code does, unchanged, with only
the endpoint and the API key pointed at Tallybook.

The calls use the SDK's own models (models.Event, models.MeterCreate, …), so what goes over the wire is
what the SDK serializes, and the answers are read through its deserializers.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from corehttp.exceptions import HttpResponseError, ResourceExistsError, ResourceNotFoundError
from openmeter import Client, models

from tests.sdk.conftest import SdkServer

pytestmark = pytest.mark.slow

FROM = datetime(2026, 1, 1, tzinfo=UTC)
TO = datetime(2026, 1, 1, 2, tzinfo=UTC)
DAY_END = datetime(2026, 1, 2, tzinfo=UTC)
SUCCESS = "https://app.example.com/billing/done"
CANCEL = "https://app.example.com/billing/cancelled"


@pytest.fixture(scope="module")
def client(sdk_server: SdkServer) -> Iterator[Client]:
    with Client(endpoint=sdk_server.url, token=sdk_server.api_key) as sdk:
        yield sdk


def event(id: str, subject: str, time: datetime, **data: Any) -> models.Event:
    return models.Event(
        specversion="1.0", id=id, source="python-test", type="py_prompt", subject=subject, time=time, data=data
    )


def usage_rows(result: models.MeterQueryResult) -> list[dict[str, Any]]:
    """Rows with usage, in a stable order (OpenMeter may also answer empty windows, which say nothing here)."""
    rows = []
    for row in result.data:
        if row.value == 0:
            continue
        item: dict[str, Any] = {"start": row.window_start, "end": row.window_end, "value": row.value}
        if row.subject:
            item["subject"] = row.subject
        if row.customer_id:
            item["customerId"] = row.customer_id
        if row.group_by:
            item["groupBy"] = dict(row.group_by)
        rows.append(item)
    return sorted(rows, key=lambda r: json.dumps(r, default=str, sort_keys=True))


def hour(h: int) -> datetime:
    return FROM + timedelta(hours=h)


@pytest.fixture(scope="module")
def tokens_meter(client: Client) -> models.Meter:
    """A meter with the three events the queries below read (no other test sends it events)."""
    meter = client.meters.create(
        models.MeterCreate(
            slug="py_tokens",
            name="Python tokens",
            event_type="py_prompt",
            aggregation=models.MeterAggregation.SUM,
            value_property="$.tokens",
            group_by={"model": "$.model", "type": "$.type"},
        )
    )
    client.events.ingest_event(
        event("py-e1", "py-acme-prod", hour(0) + timedelta(minutes=10), tokens=10, model="gpt", type="input")
    )
    client.events.ingest_events(
        [
            event("py-e2", "py-acme-prod", hour(0) + timedelta(minutes=40), tokens=2.5, model="claude", type="output"),
            event("py-e3", "py-other", hour(1) + timedelta(minutes=20), tokens=7, model="claude", type="input"),
        ]
    )
    return meter


def test_meters_crud(client: Client) -> None:
    created = client.meters.create(
        models.MeterCreate(
            slug="py_calls",
            name="API calls",
            description="requests served",
            event_type="py_request",
            aggregation=models.MeterAggregation.COUNT,
            group_by={"route": "$.route"},
        )
    )
    assert created.slug == "py_calls" and created.aggregation == "COUNT"
    assert created.group_by == {"route": "$.route"}
    assert isinstance(created.created_at, datetime)
    assert client.meters.get("py_calls").id == created.id
    assert client.meters.get(created.id).slug == "py_calls"
    assert "py_calls" in [m.slug for m in client.meters.list()]

    updated = client.meters.update(
        "py_calls",
        models.MeterUpdate(name="API calls by route and method", group_by={"route": "$.route", "method": "$.method"}),
    )
    assert updated.id == created.id and updated.name == "API calls by route and method"
    assert updated.group_by == {"route": "$.route", "method": "$.method"}
    assert updated.event_type == "py_request" and updated.description == "requests served"

    with pytest.raises(ResourceExistsError):
        client.meters.create(
            models.MeterCreate(slug="py_calls", event_type="x", aggregation=models.MeterAggregation.COUNT)
        )
    client.meters.delete("py_calls")
    with pytest.raises(ResourceNotFoundError) as missing:
        client.meters.get("py_calls")
    assert "py_calls" in str(missing.value)
    assert "py_calls" not in [m.slug for m in client.meters.list()]


def test_ingest_and_list_events(client: Client, tokens_meter: models.Meter) -> None:
    # ingest_events_json takes one event or a list (application/json). Of a type no meter reads.
    note = event("py-e4", "py-other", hour(1) + timedelta(minutes=30), text="hello")
    note.type = "py_note"
    client.events.ingest_events_json(note)
    client.events.ingest_events_json([models.Event({**note, "id": "py-e5"})])

    listed = client.events.list(from_parameter=FROM, to=TO)
    assert sorted(e.event.id for e in listed) == ["py-e1", "py-e2", "py-e3", "py-e4", "py-e5"]
    first = next(e for e in listed if e.event.id == "py-e1")
    assert first.event.subject == "py-acme-prod" and first.event.source == "python-test"
    assert first.event.data == {"tokens": 10, "model": "gpt", "type": "input"}
    assert first.event.time == hour(0) + timedelta(minutes=10)
    assert isinstance(first.ingested_at, datetime)

    assert [e.event.id for e in client.events.list(from_parameter=FROM, to=TO, subject="py-acme-prod", limit=1)] in (
        ["py-e1"],
        ["py-e2"],
    )
    assert sorted(e.event.id for e in client.events.list(from_parameter=FROM, to=TO, subject="py-acme-prod")) == [
        "py-e1",
        "py-e2",
    ]
    assert [e.event.id for e in client.events.list(from_parameter=FROM, to=TO, id="py-e3")] == ["py-e3"]

    # An event the SDK's caller stamps with a fresh id and the current time is listed by default (last 72 h).
    fresh = str(uuid.uuid4())
    client.events.ingest_event(
        models.Event(specversion="1.0", id=fresh, source="python-test", type="py_ping", subject="py-other")
    )
    assert fresh in [e.event.id for e in client.events.list(subject="py-other")]

    with pytest.raises(HttpResponseError) as refused:
        client.events.ingest_events_json([{"specversion": "1.0", "id": "bad", "source": "s", "type": "t"}])
    assert refused.value.status_code == 400
    assert "subject" in str(refused.value)


def test_query_windows_group_by_filters_and_subjects(client: Client, tokens_meter: models.Meter) -> None:
    hourly = client.meters.query_json(
        "py_tokens", from_parameter=FROM, to=TO, window_size=models.WindowSize.HOUR, group_by=["model"]
    )
    assert hourly.from_property == FROM and hourly.to == TO and hourly.window_size == "HOUR"
    assert usage_rows(hourly) == sorted(
        [
            {"start": hour(0), "end": hour(1), "value": 10, "groupBy": {"model": "gpt"}},
            {"start": hour(0), "end": hour(1), "value": 2.5, "groupBy": {"model": "claude"}},
            {"start": hour(1), "end": hour(2), "value": 7, "groupBy": {"model": "claude"}},
        ],
        key=lambda r: json.dumps(r, default=str, sort_keys=True),
    )

    # filterGroupBy in the body of the POST query. (The SDK's GET query_json(filter_group_by=...) sends the
    # dict's Python repr, `filterGroupBy={'model': 'claude'}`, not the deepObject form `filterGroupBy[model]=`
    # of OpenMeter's spec; advanced_meter_group_by_filters is its replacement.)
    claude = client.meters.query(
        "py_tokens", models.MeterQueryRequest(from_property=FROM, to=TO, filter_group_by={"model": "claude"})
    )
    assert usage_rows(claude) == [{"start": FROM, "end": TO, "value": 9.5}]

    by_subject = client.meters.query_json(
        "py_tokens", from_parameter=FROM, to=TO, subject=["py-acme-prod"], group_by=["subject", "type"]
    )
    assert usage_rows(by_subject) == [
        {"start": FROM, "end": TO, "value": 10, "subject": "py-acme-prod", "groupBy": {"type": "input"}},
        {"start": FROM, "end": TO, "value": 2.5, "subject": "py-acme-prod", "groupBy": {"type": "output"}},
    ]

    posted = client.meters.query(
        "py_tokens",
        models.MeterQueryRequest(
            from_property=FROM, to=DAY_END, window_size=models.WindowSize.DAY, group_by=["subject"]
        ),
    )
    assert usage_rows(posted) == [
        {"start": FROM, "end": DAY_END, "value": 12.5, "subject": "py-acme-prod"},
        {"start": FROM, "end": DAY_END, "value": 7, "subject": "py-other"},
    ]

    csv_text = client.meters.query_csv("py_tokens", from_parameter=FROM, to=TO, group_by=["subject"])
    lines = csv_text.strip().splitlines()
    # OpenMeter's CSV: a subject column only when grouped by subject, no customer_id unless grouped by it.
    assert lines[0].split(",") == ["window_start", "window_end", "subject", "value"]
    assert sorted(line.split(",")[2] + "=" + line.split(",")[-1] for line in lines[1:]) == [
        "py-acme-prod=12.500000",
        "py-other=7.000000",
    ]

    with pytest.raises(ResourceNotFoundError):
        client.meters.query_json("py_no_such_meter", from_parameter=FROM, to=TO)


def test_customers_crud_and_query_by_customer(client: Client, tokens_meter: models.Meter) -> None:
    acme = client.customers.create(
        models.CustomerCreate(
            name="ACME, Inc.",
            key="py-acme",
            primary_email="billing@acme.example",
            currency="USD",
            usage_attribution=models.CustomerUsageAttribution(subject_keys=["py-acme-prod"]),
            metadata={"tier": "gold"},
        )
    )
    assert acme.key == "py-acme" and acme.usage_attribution.subject_keys == ["py-acme-prod"]
    assert acme.metadata == {"tier": "gold"} and acme.currency == "USD"
    assert client.customers.get("py-acme").id == acme.id
    assert client.customers.get(acme.id).name == "ACME, Inc."

    page = client.customers.list(key="py-acme", page_size=10)
    assert page.total_count == 1 and [c.id for c in page.items_property] == [acme.id]
    assert [c.id for c in client.customers.list(subject="py-acme-prod").items_property] == [acme.id]

    updated = client.customers.update(
        "py-acme",
        models.CustomerReplaceUpdate(
            name="ACME Corporation",
            key="py-acme",
            primary_email="billing@acme.example",
            currency="USD",
            usage_attribution=models.CustomerUsageAttribution(subject_keys=["py-acme-prod"]),
        ),
    )
    assert updated.id == acme.id and updated.name == "ACME Corporation"

    by_customer = client.meters.query_json(
        "py_tokens", from_parameter=FROM, to=TO, filter_customer_id=[acme.id], group_by=["customer_id"]
    )
    assert usage_rows(by_customer) == [{"start": FROM, "end": TO, "value": 12.5, "customerId": acme.id}]

    gone = client.customers.create(models.CustomerCreate(name="Short-lived", key="py-gone"))
    client.customers.delete(gone.id)
    assert isinstance(client.customers.get(gone.id).deleted_at, datetime)
    assert client.customers.list(key="py-gone").total_count == 0
    assert client.customers.list(key="py-gone", include_deleted=True).total_count == 1
    with pytest.raises(ResourceNotFoundError):
        client.customers.get("py-no-such-customer")


def test_customer_apps_and_checkout_against_the_fake_stripe(client: Client, sdk_server: SdkServer) -> None:
    fake = sdk_server.fake
    hooli = client.customers.create(
        models.CustomerCreate(
            name="Hooli",
            key="py-hooli",
            currency="USD",
            usage_attribution=models.CustomerUsageAttribution(subject_keys=["py-hooli-prod"]),
        )
    )
    in_stripe = fake.client().v1.customers.create({"name": "Hooli"})

    upserted = client.customer_apps.upsert_app_data(
        "py-hooli", [models.StripeCustomerAppData(type="stripe", stripe_customer_id=in_stripe.id)]
    )
    # CustomerAppData is a union (stripe | sandbox | custom_invoicing): the SDK answers its items as dicts.
    assert upserted == [{"type": "stripe", "stripeCustomerId": in_stripe.id}]
    listed = client.customer_apps.list_app_data("py-hooli")
    assert listed.total_count == 1 and listed.items_property == [{"type": "stripe", "stripeCustomerId": in_stripe.id}]
    assert client.customer_stripe.get(hooli.id).stripe_customer_id == in_stripe.id
    again = client.customer_stripe.upsert("py-hooli", models.StripeCustomerAppDataBase(stripe_customer_id=in_stripe.id))
    assert again.stripe_customer_id == in_stripe.id

    existing = client.app_stripe.create_checkout_session(
        models.CreateStripeCheckoutSessionRequest(
            customer=models.CustomerKey(key="py-hooli"),
            options=models.CreateStripeCheckoutSessionRequestOptions(
                success_url=SUCCESS, client_reference_id="py-1", metadata={"plan": "pro"}
            ),
        )
    )
    assert existing.customer_id == hooli.id and existing.stripe_customer_id == in_stripe.id
    assert existing.mode == "setup" and existing.status == "open" and existing.currency == "USD"
    assert existing.client_reference_id == "py-1" and existing.success_url == SUCCESS
    assert existing.expires_at > existing.created_at
    session = fake.state.get("checkout.session", existing.session_id)
    assert session["customer"] == in_stripe.id and session["mode"] == "setup" and session["currency"] == "usd"
    assert session["setup_intent"] == existing.setup_intent_id
    assert session["metadata"] == {"plan": "pro", "tallybook_customer_id": hooli.id}

    by_id = client.app_stripe.create_checkout_session(
        models.CreateStripeCheckoutSessionRequest(
            customer=models.CustomerId(id=hooli.id),
            options=models.CreateStripeCheckoutSessionRequestOptions(currency="EUR", success_url=SUCCESS),
        )
    )
    assert by_id.stripe_customer_id == in_stripe.id and by_id.currency == "EUR"

    created = client.app_stripe.create_checkout_session(
        models.CreateStripeCheckoutSessionRequest(
            customer=models.CustomerCreate(
                name="Globex",
                key="py-globex",
                primary_email="ap@globex.example",
                usage_attribution=models.CustomerUsageAttribution(subject_keys=["py-globex-prod"]),
            ),
            options=models.CreateStripeCheckoutSessionRequestOptions(currency="EUR", success_url=SUCCESS),
        )
    )
    globex = client.customers.get("py-globex")
    assert created.customer_id == globex.id and globex.usage_attribution.subject_keys == ["py-globex-prod"]
    assert created.customer_email == "ap@globex.example"
    stripe_globex = fake.state.get("customer", created.stripe_customer_id)
    assert stripe_globex["name"] == "Globex" and stripe_globex["metadata"] == {"tallybook_customer_id": globex.id}
    assert client.customer_stripe.get("py-globex").stripe_customer_id == created.stripe_customer_id
    assert fake.state.get("checkout.session", created.session_id)["customer"] == created.stripe_customer_id

    with pytest.raises(HttpResponseError) as refused:
        client.app_stripe.create_checkout_session(
            models.CreateStripeCheckoutSessionRequest(
                customer=models.CustomerKey(key="py-hooli"),
                options=models.CreateStripeCheckoutSessionRequestOptions(ui_mode="hosted"),
            )
        )
    assert refused.value.status_code == 400 and "successURL" in str(refused.value)

    # OpenMeter's clients and docs spell the options `successUrl`, `clientReferenceId`: Go's decoder
    # matches field names without case, and so does Tallybook. A raw JSON body, as such code sends it.
    spelled = client.app_stripe.create_checkout_session(
        {
            "customer": {"key": "py-hooli"},
            "options": {"successUrl": SUCCESS, "cancelUrl": CANCEL, "clientReferenceId": "py-2", "Currency": "eur"},
        }
    )
    assert spelled.success_url == SUCCESS and spelled.cancel_url == CANCEL
    assert spelled.client_reference_id == "py-2" and spelled.currency == "EUR"
    session = fake.state.get("checkout.session", spelled.session_id)
    assert session["success_url"] == SUCCESS and session["cancel_url"] == CANCEL
    assert session["client_reference_id"] == "py-2" and session["customer"] == in_stripe.id

    with pytest.raises(HttpResponseError) as twice:
        client.app_stripe.create_checkout_session(
            {"customer": {"key": "py-hooli"}, "options": {"successUrl": SUCCESS, "successURL": SUCCESS}}
        )
    assert twice.value.status_code == 400 and "options.successURL" in str(twice.value)


V2_START = datetime(2026, 2, 1, tzinfo=UTC)


def v2_stamp(minute: int) -> str:
    return (V2_START + timedelta(minutes=minute)).isoformat().replace("+00:00", "Z")


def test_events_v2_filters_and_cursor_pages(client: Client) -> None:
    """GET /api/v2/events through `events_v2.list`: the filter goes as a plain dict (the SDK sends it
    as JSON text; `models.ListRequestFilter` fails inside the SDK's own json.dumps), and the SDK's
    pager follows `nextCursor`."""
    acme = client.customers.create(
        models.CustomerCreate(
            name="V2 ACME",
            key="py-v2-acme",
            usage_attribution=models.CustomerUsageAttribution(subject_keys=["py-v2-acme-prod"]),
        )
    )
    subject_of = {i: "py-v2-globex" if i % 5 == 0 else "py-v2-acme-prod" for i in range(25)}
    client.events.ingest_events(
        [
            models.Event(
                specversion="1.0",
                id=f"py-v2-{i:02d}",
                source="python-test",
                type="py_v2_call",
                subject=subject_of[i],
                time=V2_START + timedelta(minutes=i),
                data={"n": i},
            )
            for i in range(25)
        ]
    )
    newest_first = [f"py-v2-{i:02d}" for i in reversed(range(25))]
    of_type = {"type": {"$eq": "py_v2_call"}}

    pages = client.events_v2.list(limit=10, client_id="py-v2-walk", filter=of_type).by_page()
    walked = [[item.event.id for item in page] for page in pages]
    assert [len(page) for page in walked] == [10, 10, 5]
    assert [i for page in walked for i in page] == newest_first

    # A walk resumed from the first page's cursor lists the rest, once each and in order.
    first_pages = client.events_v2.list(limit=10, filter=of_type).by_page()
    first = [item.event.id for item in next(first_pages)]
    cursor = first_pages.continuation_token
    assert first == newest_first[:10] and isinstance(cursor, str)
    rest = client.events_v2.list(limit=10, filter=of_type).by_page(continuation_token=cursor)
    assert [item.event.id for page in rest for item in page] == newest_first[10:]

    items = list(client.events_v2.list(limit=100, filter=of_type))
    item = next(i for i in items if i.event.id == "py-v2-07")
    assert item.event.subject == "py-v2-acme-prod" and item.event.data == {"n": 7}
    assert item.event.time == V2_START + timedelta(minutes=7) and item.customer_id == acme.id
    assert isinstance(item.ingested_at, datetime) and isinstance(item.stored_at, datetime)
    assert next(i for i in items if i.event.id == "py-v2-05").customer_id is None

    acme_ids = [i for i in newest_first if subject_of[int(i[-2:])] == "py-v2-acme-prod"]
    for customer in (acme.id, "py-v2-acme"):
        by_customer = client.events_v2.list(limit=7, filter={"customerId": {"$in": [customer]}})
        assert [e.event.id for e in by_customer] == acme_ids
    by_subject = client.events_v2.list(filter={**of_type, "subject": {"$eq": "py-v2-globex"}})
    assert [e.event.id for e in by_subject] == ["py-v2-20", "py-v2-15", "py-v2-10", "py-v2-05", "py-v2-00"]

    window = {**of_type, "time": {"$and": [{"$gte": v2_stamp(18)}, {"$lt": v2_stamp(22)}]}}
    assert [e.event.id for e in client.events_v2.list(filter=window)] == [
        "py-v2-21",
        "py-v2-20",
        "py-v2-19",
        "py-v2-18",
    ]
    like = {"id": {"$like": "py-v2-1%"}, "subject": {"$ne": "py-v2-globex"}}
    assert [e.event.id for e in client.events_v2.list(limit=4, filter=like)] == [
        f"py-v2-{i}" for i in (19, 18, 17, 16, 14, 13, 12, 11)
    ]

    with pytest.raises(HttpResponseError) as refused:
        list(client.events_v2.list(filter={"subject": {"$regex": "py-v2.*"}}))
    assert refused.value.status_code == 400 and "filter.subject: unknown operator '$regex'" in str(refused.value)


def test_meter_subjects_and_group_by_values(client: Client, tokens_meter: models.Meter) -> None:
    assert client.meters.list_subjects("py_tokens", from_parameter=FROM, to=TO) == ["py-acme-prod", "py-other"]
    assert client.meters.list_subjects(tokens_meter.id, from_parameter=hour(1), to=TO) == ["py-other"]
    assert client.meters.list_subjects("py_tokens", from_parameter=TO, to=DAY_END) == []

    values = client.meters.list_group_by_values
    assert values("py_tokens", "model", from_parameter=FROM, to=TO) == ["claude", "gpt"]
    assert values("py_tokens", "type", from_parameter=FROM, to=TO) == ["input", "output"]
    assert values(tokens_meter.id, "model", from_parameter=hour(1), to=TO) == ["claude"]
    # `to` is exclusive: the gpt event at 00:10 is in [00:00, 00:11), not in [00:00, 00:10).
    assert values("py_tokens", "model", from_parameter=FROM, to=FROM + timedelta(minutes=11)) == ["gpt"]
    assert values("py_tokens", "model", from_parameter=FROM, to=FROM + timedelta(minutes=10)) == []

    with pytest.raises(HttpResponseError) as refused:
        values("py_tokens", "region", from_parameter=FROM, to=TO)
    assert refused.value.status_code == 400
    assert "'region' is not a groupBy key of meter 'py_tokens' (its keys: model, type)" in str(refused.value)
    with pytest.raises(ResourceNotFoundError):
        client.meters.list_subjects("py_no_such_meter", from_parameter=FROM, to=TO)


def test_meter_list_pages_order_and_deleted(client: Client) -> None:
    for slug, name, aggregation in [
        ("py_page_a", "Page 5", models.MeterAggregation.SUM),
        ("py_page_b", "Page 4", models.MeterAggregation.COUNT),
        ("py_page_c", "Page 3", models.MeterAggregation.MAX),
        ("py_page_d", "Page 2", models.MeterAggregation.COUNT),
        ("py_page_e", "Page 1", models.MeterAggregation.SUM),
    ]:
        client.meters.create(
            models.MeterCreate(
                slug=slug,
                name=name,
                event_type="py_page",
                aggregation=aggregation,
                value_property=None if aggregation == models.MeterAggregation.COUNT else "$.n",
            )
        )
    # An update that changes nothing keeps updatedAt; a rename moves it.
    unchanged = client.meters.update("py_page_b", models.MeterUpdate(name="Page 4"))
    assert unchanged.updated_at == unchanged.created_at
    renamed = client.meters.update("py_page_b", models.MeterUpdate(name="Page 4, renamed"))
    assert renamed.updated_at > renamed.created_at
    mine = ["py_page_a", "py_page_b", "py_page_c", "py_page_d", "py_page_e"]

    def listed(**params: Any) -> list[str]:
        return [m.slug for m in client.meters.list(**params) if m.slug.startswith("py_page_")]

    everything = [m.slug for m in client.meters.list()]
    assert listed() == mine and everything == sorted(everything)
    assert [m.slug for m in client.meters.list(order="DESC")] == everything[::-1]
    assert listed(order_by="name") == mine[::-1]
    assert listed(order_by="createdAt") == mine
    assert listed(order_by="updatedAt", order="DESC")[0] == "py_page_b"
    # Ties (the same aggregation) go by id.
    by_aggregation = [(m.aggregation, m.id, m.slug) for m in client.meters.list(order_by="aggregation")]
    assert by_aggregation == sorted(by_aggregation)
    assert {slug: aggregation for aggregation, _, slug in by_aggregation if slug.startswith("py_page_")} == {
        "py_page_b": "COUNT",
        "py_page_d": "COUNT",
        "py_page_c": "MAX",
        "py_page_a": "SUM",
        "py_page_e": "SUM",
    }

    # Pages of two, walked until one comes back empty: every meter once, in order.
    pages: list[list[str]] = []
    while not pages or pages[-1]:
        pages.append([m.slug for m in client.meters.list(page=len(pages) + 1, page_size=2)])
    assert all(len(page) == 2 for page in pages[:-2]) and 1 <= len(pages[-2]) <= 2
    assert [slug for page in pages for slug in page] == everything

    client.meters.delete("py_page_c")
    assert listed() == ["py_page_a", "py_page_b", "py_page_d", "py_page_e"]
    with_deleted = [m for m in client.meters.list(include_deleted=True) if m.slug.startswith("py_page_")]
    assert [m.slug for m in with_deleted] == mine
    assert [m.slug for m in with_deleted if m.deleted_at is not None] == ["py_page_c"]
    newest = client.meters.list(page=1, page_size=3, order="DESC", order_by="createdAt", include_deleted=True)
    assert [m.slug for m in newest] == ["py_page_e", "py_page_d", "py_page_c"]

    with pytest.raises(HttpResponseError) as refused:
        client.meters.list(page=0)
    assert refused.value.status_code == 400 and "page" in str(refused.value)
    for slug in ("py_page_a", "py_page_b", "py_page_d", "py_page_e"):
        client.meters.delete(slug)


def test_query_with_advanced_group_by_filters(client: Client, tokens_meter: models.Meter) -> None:
    gpt = client.meters.query_json(
        "py_tokens", from_parameter=FROM, to=TO, advanced_meter_group_by_filters={"model": {"$eq": "gpt"}}
    )
    assert usage_rows(gpt) == [{"start": FROM, "end": TO, "value": 10}]

    inputs = client.meters.query_json(
        "py_tokens",
        from_parameter=FROM,
        to=TO,
        window_size=models.WindowSize.HOUR,
        group_by=["model"],
        advanced_meter_group_by_filters={"model": {"$in": ["gpt", "claude"]}, "type": {"$eq": "input"}},
    )
    assert usage_rows(inputs) == [
        {"start": hour(0), "end": hour(1), "value": 10, "groupBy": {"model": "gpt"}},
        {"start": hour(1), "end": hour(2), "value": 7, "groupBy": {"model": "claude"}},
    ]

    not_gpt = client.meters.query(
        "py_tokens",
        models.MeterQueryRequest(
            from_property=FROM,
            to=TO,
            group_by=["type"],
            advanced_meter_group_by_filters={"model": models.FilterString(ne="gpt")},
        ),
    )
    assert usage_rows(not_gpt) == [
        {"start": FROM, "end": TO, "value": 7, "groupBy": {"type": "input"}},
        {"start": FROM, "end": TO, "value": 2.5, "groupBy": {"type": "output"}},
    ]
    either = client.meters.query(
        "py_tokens",
        models.MeterQueryRequest(
            from_property=FROM,
            to=TO,
            subject=["py-acme-prod"],
            advanced_meter_group_by_filters={"type": models.FilterString(in_property=["output", "refund"])},
        ),
    )
    # A subject filter also groups by subject, as in OpenMeter.
    assert usage_rows(either) == [{"start": FROM, "end": TO, "value": 2.5, "subject": "py-acme-prod"}]

    with pytest.raises(HttpResponseError) as unknown:
        client.meters.query_json(
            "py_tokens", from_parameter=FROM, to=TO, advanced_meter_group_by_filters={"region": {"$eq": "eu"}}
        )
    assert unknown.value.status_code == 400
    assert "advancedMeterGroupByFilters.region: 'region' is not a groupBy key" in str(unknown.value)
    with pytest.raises(HttpResponseError) as both:
        client.meters.query(
            "py_tokens",
            models.MeterQueryRequest(
                from_property=FROM,
                to=TO,
                filter_group_by={"model": "gpt"},
                advanced_meter_group_by_filters={"type": models.FilterString(eq="input")},
            ),
        )
    assert both.value.status_code == 400


def test_currencies(client: Client) -> None:
    currencies = client.currencies.list_currencies()
    codes = [c.code for c in currencies]
    assert codes == sorted(set(codes)) and len(codes) > 100
    by_code = {c.code: c for c in currencies}
    assert (by_code["USD"].name, by_code["USD"].symbol, by_code["USD"].subunits) == ("US Dollar", "$", 2)
    assert (by_code["EUR"].name, by_code["EUR"].symbol, by_code["EUR"].subunits) == ("Euro", "€", 2)
    assert (by_code["JPY"].symbol, by_code["JPY"].subunits) == ("¥", 0)
    assert (by_code["KWD"].name, by_code["KWD"].subunits) == ("Kuwaiti Dinar", 3)
    assert "DEM" not in by_code and "XXX" not in by_code  # historic currencies and codes that are no money
