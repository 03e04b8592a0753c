"""Backoff with jitter, Retry-After, and the circuit breaker, on an injected clock (nothing sleeps)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from email.utils import format_datetime

import httpx
import pytest
from tallybook_client import Backoff, CircuitBreaker, NotAcknowledged, Tallybook
from tallybook_client._transport import parse_retry_after


def test_backoff_doubles_up_to_the_cap_with_jitter_in_the_upper_half():
    low = Backoff(base=0.5, cap=8, rand=lambda: 0.0)
    high = Backoff(base=0.5, cap=8, rand=lambda: 1.0)
    assert [low.delay(n) for n in range(1, 7)] == [0.25, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert [high.delay(n) for n in range(1, 7)] == [0.5, 1.0, 2.0, 4.0, 8.0, 8.0]
    assert high.delay(10_000) == 8.0  # no overflow for a server down for days


def test_retry_after_is_a_floor_never_a_ceiling():
    backoff = Backoff(base=1, cap=30, rand=lambda: 1.0)
    assert backoff.delay(1, retry_after=20) == 20
    assert backoff.delay(5, retry_after=2) == 16


def test_retry_after_parses_seconds_and_http_dates():
    now = datetime(2026, 12, 7, 12, 0, tzinfo=UTC)
    later = format_datetime(now + timedelta(seconds=90), usegmt=True)
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after(later, now=now.timestamp()) == pytest.approx(90)
    assert parse_retry_after("soon") is None and parse_retry_after(None) is None


def test_circuit_breaker_opens_after_the_threshold_probes_after_the_timeout(clock):
    breaker = CircuitBreaker(failure_threshold=3, reset_timeout=10, clock=clock)
    for _ in range(2):
        breaker.record_failure()
    assert breaker.state == "closed"
    breaker.record_failure()
    assert breaker.state == "open" and breaker.open_until() == clock.now + 10
    clock.now += 10
    assert breaker.state == "half_open"
    breaker.record_failure()  # the probe failed: open for another reset_timeout
    assert breaker.state == "open" and breaker.open_until() == clock.now + 10
    clock.now += 10
    breaker.record_success()
    assert breaker.state == "closed" and breaker.open_until() == 0.0


def _client(clock, transport, **options):
    return Tallybook(
        "http://tb",
        clock=clock,
        sleep=clock.sleep,
        http_transport=transport,
        backoff=Backoff(base=1, cap=60, rand=lambda: 1.0),
        breaker=CircuitBreaker(failure_threshold=3, reset_timeout=30, clock=clock),
        **options,
    )


def test_sync_mode_retries_with_backoff_and_honours_retry_after(clock, recorder):
    rec = recorder(
        httpx.Response(503),
        httpx.Response(429, headers={"Retry-After": "7"}),
        httpx.Response(204),
    )
    tb = _client(clock, rec.transport, sync_mode=True)
    event_id = tb.track("api.calls", "acme")
    assert clock.slept == [1.0, 7.0]  # backoff 1s, then the server's Retry-After beats backoff's 2s
    assert rec.ids == [event_id] * 3  # the same id every time: the server stores it once
    assert (tb.stats().sent, tb.stats().failed) == (1, 2)
    tb.close()


def test_network_errors_are_retried(clock):
    calls = []

    def flaky(request):
        calls.append(request)
        if len(calls) == 1:
            raise httpx.ConnectError("connection refused")
        return httpx.Response(204)

    tb = _client(clock, httpx.MockTransport(flaky), sync_mode=True)
    tb.track("api.calls", "acme")
    assert len(calls) == 2 and clock.slept == [1.0] and "ConnectError" in tb.stats().last_error
    tb.close()


def test_an_open_breaker_stops_sending_and_keeps_the_events_until_the_server_is_back(clock, tmp_path):
    server_up = False
    requests = []

    def server(request):
        requests.append(request)
        return httpx.Response(204) if server_up else httpx.Response(503)

    tb = _client(clock, httpx.MockTransport(server), sync_mode=True, spool=tmp_path)
    with pytest.raises(NotAcknowledged) as caught:
        tb.track("api.calls", "acme")
    assert len(requests) == 3 and clock.slept == [1.0, 2.0]  # three failures open the breaker
    assert tb.stats().breaker == "open" and tb.stats().spool_size == 1
    # While open, nothing is sent and track does not wait: the event is spooled, the caller told.
    with pytest.raises(NotAcknowledged):
        tb.track("api.calls", "acme")
    assert len(requests) == 3 and tb.stats().spool_size == 2
    assert caught.value.event_id
    server_up = True
    clock.now += 30  # the breaker's reset timeout: the next send is a probe
    assert tb.flush(timeout=5)
    assert len(requests) == 4 and tb.stats().breaker == "closed" and tb.stats().spool_size == 0
    assert tb.stats().sent == 2
    tb.close()


def test_the_sender_schedules_the_next_attempt_by_backoff_and_breaker(clock):
    tb = _client(clock, httpx.MockTransport(lambda r: httpx.Response(503)))
    dispatcher = tb._dispatcher
    tb._dispatcher.buffer.put(b'{"id":"x"}')
    dispatcher.notify_put()
    start = clock.now
    delays = []
    for _ in range(4):
        assert dispatcher.step() is False
        delays.append(dispatcher.retry_at - clock.now)
        clock.now = dispatcher.retry_at
    # 1s, 2s, then the breaker opened (3 failures): 30s; the failed probe: another 30s.
    assert delays == [1.0, 2.0, 30.0, 30.0]
    assert clock.now - start == 63.0
    assert tb.stats().failed == 4 and tb.stats().queue_depth == 1
    tb._dispatcher.buffer.remove([1])
    tb.close(timeout=0)


def test_sync_mode_with_a_full_queue_raises_instead_of_waiting_forever(clock):
    from tallybook_client import QueueFull

    tb = _client(clock, httpx.MockTransport(lambda r: httpx.Response(503)), sync_mode=True, max_queue=1)
    with pytest.raises(NotAcknowledged):
        tb.track("api.calls", "acme")
    with pytest.raises(QueueFull):  # no sender thread could ever make room for a blocked call
        tb.track("api.calls", "acme")
    tb.close(timeout=0)
