"""OpenMeter's listCustomerAppData (GET /api/v1/customers/{id}/apps): an empty page for a customer
linked to no app, its Stripe data once linked, 404 only for an unknown customer (both engines)."""

from __future__ import annotations

from tests.conftest import auth


def test_list_customer_apps(client, keys):
    admin = auth(keys["admin"])
    assert client.post("/api/v1/customers", json={"name": "Acme", "key": "acme"}, headers=admin).status_code == 201
    empty = client.get("/api/v1/customers/acme/apps", headers=auth(keys["read"]))
    assert empty.status_code == 200, empty.text
    assert empty.json() == {"items": [], "page": 1, "pageSize": 100, "totalCount": 0}

    link = {"stripeCustomerId": "cus_123", "stripeDefaultPaymentMethodId": "pm_456"}
    assert client.put("/api/v1/customers/acme/stripe", json=link, headers=admin).status_code == 200
    listed = client.get("/api/v1/customers/acme/apps", params={"type": "stripe"}, headers=admin).json()
    assert listed["items"] == [{"type": "stripe", **link}]
    assert listed["totalCount"] == 1

    assert client.get("/api/v1/customers/nobody/apps", headers=admin).status_code == 404
    assert client.get("/api/v1/customers/acme/apps", params={"type": "paddle"}, headers=admin).status_code == 400
    assert client.get("/api/v1/customers/acme/apps", headers=auth(keys["ingest"])).status_code == 403
