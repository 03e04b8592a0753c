"""Health, readiness and metrics."""

from __future__ import annotations

from tests.helpers import BATCH, SINGLE, body, cloudevent, headers


def test_healthz_and_readyz(client, runtime):
    assert client.get("/healthz").json() == {"status": "ok"}
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert ready.json() == {"status": "ready", "checks": {"store": "ok", "ingest": "ok"}}


def test_readyz_is_503_when_the_writer_is_stopped(client, runtime):
    runtime.ingest.stop()
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["ingest"] == "stopped"
    ingest = client.post(
        "/api/v1/events",
        content=body(cloudevent("x")),
        headers=headers(runtime.keys.create("k", "admin").plaintext, SINGLE),
    )
    assert ingest.status_code == 503
    runtime.ingest.start()


def test_metrics_count_accepted_duplicate_rejected_and_latency(client, keys):
    hdrs = headers(keys["ingest"], BATCH)
    client.post("/api/v1/events", content=body([cloudevent("m1"), cloudevent("m2")]), headers=hdrs)
    client.post("/api/v1/events", content=body([cloudevent("m1")]), headers=hdrs)
    client.post("/api/v1/events", content=body([cloudevent("m3", time="bad"), cloudevent("m4")]), headers=hdrs)
    client.post("/api/v1/events", content=b"{}", headers=headers(keys["ingest"], "text/plain"))
    text = client.get("/metrics").text
    assert "tallybook_events_accepted_total 2.0" in text
    assert 'tallybook_events_duplicate_total{kind="retry"} 1.0' in text
    assert 'tallybook_events_rejected_total{reason="invalid"} 2.0' in text
    assert 'tallybook_events_rejected_total{reason="content_type"} 1.0' in text
    assert 'tallybook_http_request_seconds_count{method="POST",route="/api/v1/events",status="204"} 2.0' in text
    assert 'route="/api/v1/events",status="400"' in text


def test_unknown_route_is_a_404_problem(client):
    response = client.get("/nope")
    assert response.status_code == 404
    assert response.headers["content-type"] == "application/problem+json"
