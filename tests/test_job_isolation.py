"""Fault isolation in the webhook jobs, on SQLite and PostgreSQL: period close, report.meter and
the delivery worker each skip the one item that fails (recorded at GET /api/v1/jobs/failures, in
the metric and the log), finish the others, and retry the failed item on a later run.

The failures are made inside SQL where the job writes (a statement the database refuses: on
PostgreSQL that aborts the transaction, so only a transaction of the item's own keeps the others
safe), or by a meter query that raises for one meter.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from sqlalchemy import text

from tallybook import jsonutil
from tallybook.clock import FixedClock
from tallybook.jobs.aggregation_sql import SqlAggregationTransaction
from tallybook.webhooks.model import EventFilter
from tallybook.webhooks.sql import SqlWebhookTransaction
from tests.test_webhook_aggregation import make, run_jobs, usage
from tests.test_webhook_helpers import SECRET, Receiver, api

T0 = datetime(2026, 1, 12, 10, 15, tzinfo=UTC)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as r:
        yield r


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


def failures(client: Any, **params: Any) -> list[dict[str, Any]]:
    response = client.get("/api/v1/jobs/failures", params=params)
    assert response.status_code == 200, response.text
    return response.json()["items"]  # type: ignore[no-any-return]


def metric(client: Any, job: str, kind: str) -> float:
    wanted = f'tallybook_job_item_failures_total{{job="{job}",kind="{kind}"}}'
    rows = [r for r in client.get("/metrics").text.splitlines() if r.startswith(wanted)]
    return float(rows[0].split()[-1]) if rows else 0.0


def fail_inside_sql_for(monkeypatch: pytest.MonkeyPatch, adapter: Any, method: str, bad: Any) -> None:
    """The SQL adapter's `method` runs a statement the database refuses when `bad(args)` says so."""
    real = getattr(adapter, method)

    def wrapped(self: Any, *args: Any, **kwargs: Any) -> Any:
        if bad(*args):
            self.conn.execute(text("SELECT no_such_column FROM no_such_table"))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(adapter, method, wrapped)


def test_period_close_skips_the_subject_that_fails_and_retries_it(
    database_url: str, clock: FixedClock, receiver: Receiver, monkeypatch: pytest.MonkeyPatch, caplog: Any
) -> None:
    runtime = make(database_url, clock, receiver, periods=["hourly"])
    client = api(runtime)
    try:
        for customer in ("cust_a", "cust_bad", "cust_c"):
            usage(client, "api.calls", customer, 2)
        fail_inside_sql_for(
            monkeypatch, SqlAggregationTransaction, "record_sent", lambda figures, _now: figures.subject == "cust_bad"
        )
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        with caplog.at_level(logging.ERROR, logger="tallybook.jobs.failures"):
            jobs = run_jobs(client)
        close = jobs["aggregation.close"]
        assert (close["status"], close["result"]["completed"], close["result"]["failedItems"]) == ("partial", 2, 1)
        assert "error" not in close
        sent = sorted(jsonutil.loads(r.body)["customerId"] for r in receiver.wait_for(2))
        assert sent == ["cust_a", "cust_c"]
        [failure] = failures(client)
        assert (failure["job"], failure["itemKind"]) == ("aggregation.close", "subject_period")
        assert failure["context"] == {
            "subject": "cust_bad",
            "period": "hourly",
            "periodStart": "2026-01-12T10:00:00Z",
            "periodEnd": "2026-01-12T11:00:00Z",
        }
        assert "no_such_table" in failure["error"]
        assert metric(client, "aggregation.close", "subject_period") == 1.0
        [line] = [r for r in caplog.records if r.getMessage().startswith("job item failed")]
        assert (line.job, line.item_kind, line.subject) == ("aggregation.close", "subject_period", "cust_bad")  # type: ignore[attr-defined]
        listed = {j["name"]: j for j in client.get("/api/v1/jobs").json()["items"]}
        assert listed["aggregation.close"]["lastStatus"] == "partial"
        # The cursor moved on: the next hour closes for everyone, and the failed one is retried.
        monkeypatch.undo()
        clock.set(datetime(2026, 1, 12, 13, 0, tzinfo=UTC))
        jobs = run_jobs(client)
        assert jobs["aggregation.close"]["status"] == "ok"
        late = [jsonutil.loads(r.body) for r in receiver.wait_for(3)[2:]]
        assert [(b["customerId"], b["data"]["periodStart"]) for b in late] == [("cust_bad", "2026-01-12T10:00:00.000Z")]
        assert failures(client) == []
        # Sent once: a run after that sends nothing again.
        run_jobs(client)
        assert len(receiver.requests) == 3
    finally:
        client.close()
        runtime.stop()


def test_report_meter_skips_the_meter_that_fails_and_retries_its_window(
    database_url: str, clock: FixedClock, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    endpoint = {"url": receiver.url, "secret": SECRET, "events": ["report.meter"]}
    runtime = make(database_url, clock, receiver, endpoints=[endpoint], grace="10m", reports={"interval": "hourly"})
    client = api(runtime)
    try:
        run_jobs(client)
        usage(client, "api.calls", "cust_1", 2)
        usage(client, "storage.bytes", "cust_1", 7)
        real_query = runtime.meters.query

        def query(q: Any) -> Any:
            if q.meter == "storage_bytes":
                raise RuntimeError("storage_bytes cannot be read")
            return real_query(q)

        monkeypatch.setattr(runtime.meters, "query", query)
        clock.set(datetime(2026, 1, 12, 11, 10, tzinfo=UTC))
        report = run_jobs(client)["report.meter"]
        assert (report["status"], report["result"]["reports"], report["result"]["failedItems"]) == ("partial", 1, 1)
        [got] = receiver.wait_for(1)
        assert jsonutil.loads(got.body)["meter"]["slug"] == "api_calls"
        [failure] = failures(client, job="report.meter")
        assert failure["itemKind"] == "meter_window"
        assert failure["context"] == {
            "meter": "storage_bytes",
            "from": "2026-01-12T10:00:00Z",
            "to": "2026-01-12T11:00:00Z",
        }
        monkeypatch.undo()
        clock.advance(timedelta(minutes=5))
        assert run_jobs(client)["report.meter"]["result"]["reports"] == 1
        retried = jsonutil.loads(receiver.wait_for(2)[1].body)
        assert (retried["meter"]["slug"], retried["query"]["from"]) == ("storage_bytes", "2026-01-12T10:00:00Z")
        assert failures(client) == []
    finally:
        client.close()
        runtime.stop()


def test_delivery_worker_goes_on_when_recording_one_attempt_fails(
    database_url: str, clock: FixedClock, receiver: Receiver, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = make(database_url, clock, receiver, periods=["hourly"])
    client = api(runtime)
    try:
        for customer in ("cust_a", "cust_bad", "cust_c"):
            usage(client, "api.calls", customer, 2)
        clock.set(datetime(2026, 1, 12, 12, 0, tzinfo=UTC))
        # Queue the period's events without sending them, then break the record of one.
        close = next(j for j in runtime.jobs.jobs if j.name == "aggregation.close")
        assert runtime.jobs.run_job(close, force=True).result["completed"] == 3
        _, events = runtime.webhooks.list_events(EventFilter(limit=10))
        bad_events = {e.id for e in events if e.subject == "cust_bad"}
        fail_inside_sql_for(
            monkeypatch, SqlWebhookTransaction, "finish_attempt", lambda claimed, *_: claimed.event_id in bad_events
        )
        deliver = run_jobs(client)["webhooks.deliver"]
        assert (deliver["status"], deliver["result"]["delivered"], deliver["result"]["failedItems"]) == (
            "partial",
            2,
            1,
        )
        [failure] = failures(client, job="webhooks.deliver")
        assert failure["itemKind"] == "delivery" and failure["context"]["eventId"] in bad_events
        assert metric(client, "webhooks.deliver", "delivery") == 1.0
        # Its claim runs out; the next worker run sends it again and the failure is cleared.
        monkeypatch.undo()
        clock.advance(runtime.settings.webhooks.claim_lease + timedelta(seconds=1))
        assert run_jobs(client)["webhooks.deliver"]["result"]["delivered"] == 1
        customers = sorted(jsonutil.loads(r.body)["customerId"] for r in receiver.wait_for(4))
        assert customers == ["cust_a", "cust_bad", "cust_bad", "cust_c"]  # at least once: sent, not recorded
        assert failures(client) == []
    finally:
        client.close()
        runtime.stop()


def test_failures_endpoint_is_admin_only_and_filters(client: Any, keys: dict[str, str], runtime: Any) -> None:
    from tests.conftest import auth

    failures_log = runtime.jobs.failures
    with failures_log.run("aggregation.close") as run:
        # An error quoting bad data with a NUL byte is still recorded (PostgreSQL text refuses NULs).
        run.fail("subject_period", "hourly|2026-01-12T10:00:00Z|s\x00b", ValueError("bad \x00 value"), subject="s\x00b")
        with run.item("subject_period", "hourly|2026-01-12T10:00:00Z|fine"):
            pass
    with failures_log.run("report.meter") as run, run.item("meter_window", "api_calls|a|b", meter="api_calls"):
        raise RuntimeError("query failed")
    assert client.get("/api/v1/jobs/failures", headers=auth(keys["read"])).status_code == 403
    assert client.get("/api/v1/jobs/failures").status_code == 401
    admin = auth(keys["admin"])
    both = client.get("/api/v1/jobs/failures", headers=admin).json()
    assert both["totalCount"] == 2
    close = client.get("/api/v1/jobs/failures", headers=admin, params={"job": "aggregation.close"}).json()
    [item] = close["items"]
    assert (item["itemId"], item["error"], item["context"]) == (
        "hourly|2026-01-12T10:00:00Z|s\\x00b",
        "ValueError: bad \\x00 value",
        {"subject": "s\\x00b"},
    )
    kind = client.get("/api/v1/jobs/failures", headers=admin, params={"itemKind": "meter_window"}).json()
    assert [i["job"] for i in kind["items"]] == ["report.meter"]
    assert client.get("/api/v1/jobs/failures", headers=admin, params={"limit": 0}).status_code == 400
    # The same item failing and then succeeding in one run stays listed: the failure wins.
    with failures_log.run("report.meter") as run:
        with run.item("meter_window", "api_calls|a|b"):
            raise RuntimeError("again")
        with run.item("meter_window", "api_calls|a|b"):
            pass
    [again] = client.get("/api/v1/jobs/failures", headers=admin, params={"job": "report.meter"}).json()["items"]
    assert (again["count"], again["error"]) == (2, "RuntimeError: again")
    with failures_log.run("report.meter") as run, run.item("meter_window", "api_calls|a|b"):
        pass
    assert client.get("/api/v1/jobs/failures", headers=admin, params={"job": "report.meter"}).json()["items"] == []
