"""API keys: Bearer or x-apikey, scopes, revocation (both engines)."""

from __future__ import annotations

import pytest

from tallybook.auth.keys import hash_key
from tests.helpers import SINGLE, body, cloudevent, headers


def test_no_key_is_401_with_a_problem_body(client):
    response = client.post("/api/v1/events", content=body(cloudevent("a")), headers={"Content-Type": SINGLE})
    assert response.status_code == 401
    assert response.headers["www-authenticate"] == "Bearer"
    assert "Authorization: Bearer" in response.json()["detail"]


def test_unknown_key_is_401(client):
    response = client.get("/api/v1/events", headers=headers("tbk_not_a_real_key"))
    assert response.status_code == 401
    assert "unknown or revoked" in response.json()["detail"]


@pytest.mark.parametrize(
    ("scope", "method", "path", "expected"),
    [
        ("ingest", "POST", "/api/v1/events", 204),
        ("ingest", "GET", "/api/v1/events", 403),
        ("ingest", "GET", "/events", 403),
        ("read", "POST", "/api/v1/events", 403),
        ("read", "GET", "/api/v1/events", 200),
        ("admin", "POST", "/api/v1/events", 204),
        ("admin", "GET", "/api/v1/events", 200),
    ],
)
def test_scopes(client, keys, scope, method, path, expected):
    response = client.request(
        method, path, content=body(cloudevent(f"{scope}{method}")), headers=headers(keys[scope], SINGLE)
    )
    assert response.status_code == expected
    if expected == 403:
        assert f"this key has scope '{scope}'" in response.json()["detail"]


def test_x_apikey_header_is_accepted(client, keys):
    response = client.post(
        "/usage/api.calls", json={"customerId": "c1", "value": 1}, headers={"x-apikey": keys["ingest"]}
    )
    assert response.status_code == 202


def test_revoked_key_stops_working(client, keys, runtime):
    record = runtime.keys.storage.by_hash(hash_key(keys["read"]))
    assert client.get("/api/v1/events", headers=headers(keys["read"])).status_code == 200
    assert runtime.keys.revoke(record.id) is True
    assert client.get("/api/v1/events", headers=headers(keys["read"])).status_code == 401
    assert runtime.keys.revoke(record.id) is False


def test_keys_are_stored_hashed(runtime, keys):
    for record in runtime.keys.list():
        assert record.key_hash != keys[record.scope]
        assert len(record.key_hash) == 64
        assert keys[record.scope].startswith(record.prefix)
