from tests.conftest import auth


def test_single_event_round_trip(client, keys):
    body = (
        b'{"specversion":"1.0","id":"e1","source":"svc","type":"api.calls","subject":"cust_1",'
        b'"time":"2026-01-05T10:00:00Z","data":{"value":1}}'
    )
    headers = {**auth(keys["ingest"]), "Content-Type": "application/cloudevents+json"}
    assert client.post("/api/v1/events", content=body, headers=headers).status_code == 204
    listed = client.get("/api/v1/events", headers=auth(keys["read"])).json()
    assert [item["event"]["id"] for item in listed] == ["e1"]
