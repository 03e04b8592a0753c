"""The webhook service and delivery worker on each storage adapter: in memory, SQLite, PostgreSQL.

One set of cases holds `webhooks/memory.py` to what `webhooks/sql.py` does, so tests of the service
can run without a database. Sending goes through httpx's MockTransport: no server, no sleeping.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import httpx
import pytest

from tallybook.clock import FixedClock
from tallybook.jobs.memory import MemoryFailureRecords
from tallybook.jobs.runs import ItemFailureLog
from tallybook.store import open_store
from tallybook.webhooks.delivery import DeliveryWorker
from tallybook.webhooks.memory import MemoryWebhookStorage
from tallybook.webhooks.model import ChannelInput, EventFilter, InvalidInput, NotFound, OutboxMessage, RuleInput
from tallybook.webhooks.ports import WebhookStorage
from tallybook.webhooks.service import WebhookService
from tallybook.webhooks.settings import WebhookSettings
from tests.conftest import _postgres_database, empty_all_tables

START = datetime(2026, 5, 4, 9, 0, tzinfo=UTC)
REPORT = "report.meter"


@dataclass
class Adapter:
    storage: WebhookStorage
    # An open transaction of the caller, as other rooms hand it to `enqueue`.
    transaction: Callable[[], AbstractContextManager[object]]


@pytest.fixture(params=["memory", "sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def adapter(request: pytest.FixtureRequest, tmp_path: Any) -> Iterator[Adapter]:
    if request.param == "memory":
        yield Adapter(MemoryWebhookStorage(), lambda: nullcontext(object()))
        return
    from tallybook.webhooks.sql import SqlWebhookStorage

    url = f"sqlite:///{tmp_path / 'hooks.db'}" if request.param == "sqlite" else _postgres_database()
    store = open_store(url)
    store.migrate()
    empty_all_tables(SimpleNamespace(store=store))  # type: ignore[arg-type]  # PostgreSQL tests share a database
    try:
        yield Adapter(SqlWebhookStorage(store), store.write)
    finally:
        store.close()


def service_on(adapter: Adapter, clock: FixedClock) -> WebhookService:
    return WebhookService(adapter.storage, WebhookSettings(jitter=0, retry_schedule=["1m"]), clock)


def test_routing_the_outbox_and_its_dedup_key(adapter: Adapter) -> None:
    clock = FixedClock(START)
    service = service_on(adapter, clock)
    first = service.create_channel(ChannelInput("one", "https://one.example/hook", custom_headers={"X-Team": "a"}))
    clock.advance(timedelta(seconds=1))
    second = service.create_channel(ChannelInput("two", "https://two.example/hook"))
    clock.advance(timedelta(seconds=1))  # listings are in creation order
    off = service.create_channel(ChannelInput("off", "https://off.example/hook", disabled=True))
    rule = service.create_rule(RuleInput(REPORT, "reports", [second.id, first.id, off.id, first.id]))
    assert rule.channel_ids == [second.id, first.id, off.id]  # order kept, each once
    assert [c.name for c in service.list_channels(include_disabled=True)] == ["one", "two", "off"]
    assert [c.name for c in service.list_channels()] == ["one", "two"]
    assert service.get_channel(first.id).custom_headers == {"X-Team": "a"}

    message = OutboxMessage(REPORT, "report|api|cust_1|w1", {"n": 1}, subject="cust_1", stable_id=True)
    with adapter.transaction() as conn:
        destinations = service.destinations(conn, REPORT)
        assert [d.channel_id for d in destinations] == sorted([first.id, second.id])
        event = service.enqueue(conn, message, destinations, clock.now())
    assert event is not None and json.loads(event.body) == {"n": 1}
    with adapter.transaction() as conn:  # the same report again: nothing is written
        assert service.enqueue(conn, message, destinations, clock.now()) is None
        assert service.destinations(conn, "aggregation.completed") == []

    total, events = service.list_events(EventFilter(channels=[second.id]))
    assert total == 1 and events == [event]
    assert service.list_events(EventFilter(subjects=["cust_2"])) == (0, [])
    [detail] = service.details(events)
    assert detail.rule == rule
    assert sorted(d.channel_id for d, attempts in detail.deliveries if attempts == []) == sorted([first.id, second.id])


def test_refusals_change_nothing(adapter: Adapter) -> None:
    clock = FixedClock(START)
    service = service_on(adapter, clock)
    channel = service.create_channel(ChannelInput("one", "https://one.example/hook"))
    rule = service.create_rule(RuleInput(REPORT, "reports", [channel.id]))
    with pytest.raises(InvalidInput, match="used by notification rule"):
        service.delete_channel(channel.id)
    with pytest.raises(InvalidInput, match="does not exist"):
        service.update_rule(rule.id, RuleInput(REPORT, "renamed", [channel.id, "nope"]))
    with pytest.raises(InvalidInput, match="customHeaders may not set"):
        service.create_channel(ChannelInput("bad", "https://x.example", custom_headers={"Webhook-Id": "x"}))
    with pytest.raises(NotFound):
        service.get_rule("nope")
    assert service.get_rule(rule.id).name == "reports"
    assert [c.name for c in service.list_channels()] == ["one"]
    service.delete_rule(rule.id)
    service.delete_channel(channel.id)
    assert service.list_channels() == [] and len(service.list_channels(include_deleted=True)) == 1
    assert NotFound("x").status == 404 and InvalidInput("x").status == 400


def test_the_worker_delivers_retries_and_disables_a_gone_channel(adapter: Adapter) -> None:
    clock = FixedClock(START)
    service = service_on(adapter, clock)
    ok = service.create_channel(ChannelInput("ok", "https://ok.example/hook"))
    flaky = service.create_channel(ChannelInput("flaky", "https://flaky.example/hook"))
    gone = service.create_channel(ChannelInput("gone", "https://gone.example/hook"))
    rule = service.create_rule(RuleInput(REPORT, "reports", [ok.id, flaky.id, gone.id]))
    answers = {"ok.example": [200], "flaky.example": [503, 204], "gone.example": [410]}
    seen: list[tuple[str, str]] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append((request.url.host, request.headers["webhook-id"]))
        return httpx.Response(answers[request.url.host].pop(0))

    failures = ItemFailureLog(MemoryFailureRecords(), clock)
    worker = DeliveryWorker(
        adapter.storage, service.settings, clock, transport=httpx.MockTransport(answer), failures=failures
    )
    try:
        event = service.send_test(rule, {"type": REPORT, "test": True})
        report = worker.run_once()
        assert (report.delivered, report.retrying, report.failed, report.disabled_channels) == (1, 1, 1, [gone.id])
        assert {webhook_id for _, webhook_id in seen} == {event.id}
        assert service.get_channel(gone.id).disabled_reason == "the endpoint answered 410 Gone"
        assert worker.run_once().attempted == 0  # the retry is not due yet
        clock.advance(timedelta(minutes=1))
        assert worker.run_once().delivered == 1
        [detail] = service.details([event])
        states = {d.channel_id: (d.state, [a.status_code for a in attempts]) for d, attempts in detail.deliveries}
        assert states == {ok.id: ("SUCCESS", [200]), flaky.id: ("SUCCESS", [503, 204]), gone.id: ("FAILED", [410])}
        service.resend(event.id, [ok.id])
        answers["ok.example"].append(200)
        assert worker.run_once().delivered == 1
        assert failures.list() == (0, [])
    finally:
        worker.close()
