"""Fork safety, asyncio, reads, metrics hooks and tracing (fake HTTP, no server)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
from datetime import UTC, datetime
from decimal import Decimal

import httpx
import pytest
from tallybook_client import ApiError, AsyncTallybook, EntitlementValue, Tallybook


def _appending_transport(path):
    def handle(request):
        with open(path, "a") as out:
            out.write("".join(f"{os.getpid()} {e['subject']}\n" for e in json.loads(request.content)))
        return httpx.Response(204)

    return httpx.MockTransport(handle)


@pytest.mark.parametrize("with_spool", [False, True], ids=["memory", "spool"])
def test_a_forked_child_gets_its_own_sender_and_the_parent_keeps_working(tmp_path, with_spool):
    log = tmp_path / "received.log"
    tb = Tallybook(
        "http://tb",
        batch_size=100,
        flush_interval=60,
        spool=tmp_path / "spool" if with_spool else None,
        http_transport=_appending_transport(log),
    )
    tb.track("api.calls", "before-fork")
    assert tb.flush(timeout=10)
    parent_thread = tb._dispatcher._thread
    tb.track("api.calls", "queued-in-parent")  # unsent at fork time (flush_interval=60)
    pid = os.fork()
    if pid == 0:  # the child: report through the exit code, never return into pytest
        code = 1
        try:
            tb.track("api.calls", "from-child")
            ok = tb.flush(timeout=10)
            thread = tb._dispatcher._thread
            code = 0 if ok and thread is not None and thread is not parent_thread and thread.is_alive() else 2
            tb.close(timeout=5)
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert tb.flush(timeout=10)
    tb.close()
    lines = [line.split() for line in log.read_text().splitlines()]
    by_subject = {subject: {int(p) for p, s in lines if s == subject} for _, subject in lines}
    assert by_subject["before-fork"] == {os.getpid()}
    assert by_subject["from-child"] == {pid}
    if with_spool:
        # One spool file, two senders: the child may send the parent's spooled event too (same id,
        # stored once by the server); it is sent at least once and never lost.
        assert os.getpid() in by_subject["queued-in-parent"] or pid in by_subject["queued-in-parent"]
    else:
        # The parent's queue is the parent's: the child drops its copy instead of sending it twice.
        assert [s for _, s in lines].count("queued-in-parent") == 1
        assert by_subject["queued-in-parent"] == {os.getpid()}


QUERY_ANSWER = {
    "from": "2026-01-01T00:00:00Z",
    "to": "2026-01-01T02:00:00Z",
    "windowSize": "HOUR",
    "data": [
        {
            "value": 1.5,
            "windowStart": "2026-01-01T00:00:00Z",
            "windowEnd": "2026-01-01T01:00:00Z",
            "subject": "acme",
            "customerId": None,
            "groupBy": {"endpoint": "/items"},
        },
        {
            "value": "EXACT",
            "windowStart": "2026-01-01T01:00:00Z",
            "windowEnd": "2026-01-01T02:00:00Z",
            "subject": "acme",
            "customerId": None,
            "groupBy": {"endpoint": "/items"},
        },
    ],
}


def _reads_stub(seen):
    """A tiny stand-in for the read endpoints (entitlements exist in OpenMeter's API, not yet here)."""

    def handle(request):
        seen.append(request)
        path = request.url.path
        if path == "/api/v1/meters/api_calls/query":
            body = json.dumps(QUERY_ANSWER).replace('"EXACT"', "12345678901234567890.25")  # a number, as sent
            return httpx.Response(200, content=body, headers={"content-type": "application/json"})
        if path == "/api/v1/customers/acme/entitlements/api_calls/value":
            return httpx.Response(200, json={"hasAccess": True, "balance": 100, "usage": 50, "overage": 0})
        if path == "/api/v1/customers/acme/entitlements/sso/value":
            return httpx.Response(200, json={"hasAccess": True, "config": '{"provider": "okta"}'})
        problem = {"type": "urn:tallybook:problem:not-found", "status": 404, "detail": f"no such thing: {path}"}
        return httpx.Response(404, json=problem, headers={"content-type": "application/problem+json"})

    return httpx.MockTransport(handle)


def test_query_and_entitlement_value_are_typed_reads():
    seen: list[httpx.Request] = []
    tb = Tallybook("http://tb", "tbk_x", http_transport=_reads_stub(seen))
    result = tb.query(
        "api_calls",
        from_=datetime(2026, 1, 1, tzinfo=UTC),
        to="2026-01-01T02:00:00Z",
        window_size="HOUR",
        subject=["acme"],
        group_by=["endpoint"],
        filter_group_by={"endpoint": "/items"},
    )
    params = seen[0].url.params
    assert params["from"] == "2026-01-01T00:00:00Z" and params["windowSize"] == "HOUR"
    assert params["subject"] == "acme" and params["filterGroupBy[endpoint]"] == "/items"
    assert seen[0].headers["authorization"] == "Bearer tbk_x"
    assert result.window_size == "HOUR" and len(result.rows) == 2
    assert result.rows[0].value == Decimal("1.5") and result.rows[0].group_by == {"endpoint": "/items"}
    assert result.rows[1].value == Decimal("12345678901234567890.25")  # exact, never a float
    assert result.rows[0].window_start == datetime(2026, 1, 1, tzinfo=UTC)
    assert result.total == Decimal("12345678901234567891.75")

    metered = tb.entitlement_value("acme", "api_calls", time=datetime(2026, 1, 5, tzinfo=UTC))
    assert metered == EntitlementValue(True, Decimal(100), Decimal(50), Decimal(0), None, None)
    assert seen[1].url.params["time"] == "2026-01-05T00:00:00Z"
    static = tb.entitlement_value("acme", "sso")
    assert static.has_access and static.config == '{"provider": "okta"}' and static.balance is None
    with pytest.raises(ApiError) as caught:
        tb.entitlement_value("nobody", "api_calls")
    assert caught.value.status == 404 and "no such thing" in str(caught.value)
    tb.close()


def test_async_client_tracks_flushes_and_reads(recorder):
    rec = recorder()
    seen: list[httpx.Request] = []

    async def main():
        async with AsyncTallybook(
            "http://tb", "k", http_transport=rec.transport, async_http_transport=_reads_stub(seen), batch_size=10
        ) as tb:
            ids = [await tb.track("api.calls", "acme", {"i": i}) for i in range(25)]
            assert await tb.flush(timeout=10)
            assert rec.ids == ids and tb.stats().sent == 25
            result = await tb.query("api_calls", window_size="HOUR")
            value = await tb.entitlement_value("acme", "api_calls")
            return result, value

    result, value = asyncio.run(main())
    assert result.rows[0].value == Decimal("1.5") and value.has_access and value.balance == Decimal(100)
    assert [len(b) for b in rec.batches] == [10, 10, 5]


def test_async_sync_mode_runs_off_the_event_loop(recorder):
    rec = recorder(httpx.Response(204))

    async def main():
        tb = AsyncTallybook("http://tb", sync_mode=True, http_transport=rec.transport)
        loop_thread = asyncio.get_running_loop()
        event_id = await tb.track("api.calls", "acme")
        await tb.close()
        return loop_thread, event_id

    _, event_id = asyncio.run(main())
    assert rec.ids == [event_id]


def test_metrics_hook_sees_queue_depth_spool_size_sent_and_failed(tmp_path, clock):
    answers = [httpx.Response(503), httpx.Response(204)]
    snapshots = []
    tb = Tallybook(
        "http://tb",
        spool=tmp_path,
        sync_mode=True,
        clock=clock,
        sleep=clock.sleep,
        http_transport=httpx.MockTransport(lambda r: answers.pop(0)),
        on_metrics=snapshots.append,
    )
    tb.track("api.calls", "acme")
    first, second = snapshots
    assert (first.queue_depth, first.spool_size, first.sent, first.failed) == (1, 1, 0, 1)
    assert (second.queue_depth, second.spool_size, second.sent, second.failed) == (0, 0, 1, 1)
    tb.close()


class RecordingTracer:
    def __init__(self):
        self.spans = []

    @contextlib.contextmanager
    def start_as_current_span(self, name, **kwargs):
        span = {"name": name}
        self.spans.append(span)

        class Span:
            def set_attribute(self, key, value):
                span[key] = value

        yield Span()


def test_each_batch_send_is_a_span(recorder):
    tracer = RecordingTracer()
    rec = recorder(httpx.Response(503), httpx.Response(204))
    tb = Tallybook("http://tb", sync_mode=True, tracer=tracer, sleep=lambda s: None, http_transport=rec.transport)
    tb.track("api.calls", "acme")
    assert tracer.spans == [
        {
            "name": "tallybook.send_batch",
            "tallybook.batch.events": 1,
            "tallybook.outcome": "retry",
            "http.response.status_code": 503,
        },
        {
            "name": "tallybook.send_batch",
            "tallybook.batch.events": 1,
            "tallybook.outcome": "acknowledged",
            "http.response.status_code": 204,
        },
    ]
    tb.close()


def test_track_after_close_is_refused(recorder):
    from tallybook_client import ClientClosed

    tb = Tallybook("http://tb", http_transport=recorder().transport)
    tb.close()
    with pytest.raises(ClientClosed):
        tb.track("api.calls", "acme")
