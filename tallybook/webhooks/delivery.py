"""The delivery worker: sends due outbox deliveries, records every attempt, schedules retries.

Outcomes: 2xx is delivered. 410 Gone disables the channel (the receiver asked to stop). Anything
else (other 4xx and 5xx, timeouts, refused connections) is retried on the configured schedule,
each delay scaled by a random factor in [1 - jitter, 1 + jitter] so a fleet of failed deliveries
doesn't return all at once; after the last delay the delivery is FAILED (a re-send starts a new
round). Retry times are stored (next_attempt_us), never slept on: whoever runs the worker next
after that instant sends it.

Fault isolation: a failure inside Tallybook while sending is an attempt outcome like any other
(recorded, retried). A failure while recording an outcome (item kind `delivery`) is logged, counted
and listed at GET /api/v1/jobs/failures, and the worker goes on with the other deliveries; the one
that failed stays claimed until its lease runs out, then it is sent again.
"""

from __future__ import annotations

import functools
import logging
import random
import secrets
import ssl
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import httpx

import tallybook
from tallybook.clock import Clock, format_rfc3339, to_micros
from tallybook.jobs.runs import ItemFailureLog, JobRun
from tallybook.webhooks.model import FAILED, PENDING, SUCCESS, Claimed
from tallybook.webhooks.ports import WebhookStorage
from tallybook.webhooks.settings import WebhookSettings
from tallybook.webhooks.signing import signature_headers

log = logging.getLogger(__name__)

USER_AGENT = f"Tallybook-Webhooks/{tallybook.__version__}"
RESPONSE_BODY_LIMIT = 1024  # characters of the receiver's answer kept per attempt
MAX_ROUNDS = 250  # claim rounds per run_once call; each takes up to max_concurrency deliveries
DELIVERY_JOB = "webhooks.deliver"


@functools.cache
def _tls_context() -> ssl.SSLContext:
    """httpx's default verifying context, built once per process: loading the CA bundle takes tens of
    milliseconds of CPU, and every worker of the process trusts the same roots."""
    return httpx.create_ssl_context()


@dataclass
class DeliveryReport:
    attempted: int = 0
    delivered: int = 0
    retrying: int = 0
    failed: int = 0
    disabled_channels: list[str] = field(default_factory=list)
    failed_items: int = 0  # deliveries whose outcome could not be recorded (see FailureLog)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "attempted": self.attempted,
            "delivered": self.delivered,
            "retrying": self.retrying,
            "failed": self.failed,
            "disabledChannels": self.disabled_channels,
        }
        if self.failed_items:
            body["failedItems"] = self.failed_items
        return body


@dataclass(frozen=True, slots=True)
class _Outcome:
    attempted_at: datetime
    status_code: int | None
    duration_ms: int
    error: str | None
    response_body: str | None

    @property
    def ok(self) -> bool:
        return self.error is None and self.status_code is not None and 200 <= self.status_code < 300


class DeliveryWorker:
    def __init__(
        self,
        store: WebhookStorage,
        settings: WebhookSettings,
        clock: Clock,
        rng: random.Random | None = None,
        transport: httpx.BaseTransport | None = None,
        failures: ItemFailureLog | None = None,
    ) -> None:
        self.storage = store
        # Where undeliverable outcomes are recorded; the runtime always passes its log (a worker
        # built without one, e.g. to compute retry delays, cannot run).
        self.failures = failures
        self.settings = settings
        self.clock = clock
        self.rng = rng or random.Random()
        self._client = httpx.Client(
            timeout=settings.timeout.total_seconds(),
            follow_redirects=False,
            verify=_tls_context(),
            transport=transport,
            headers={"User-Agent": USER_AGENT},
        )
        self._pool = ThreadPoolExecutor(settings.max_concurrency, thread_name_prefix="tallybook-webhook")

    def close(self) -> None:
        self._pool.shutdown(wait=True)
        self._client.close()

    def retry_delay(self, attempts_done: int) -> timedelta | None:
        """The wait after the `attempts_done`-th failed attempt, or None when retries are spent."""
        schedule = self.settings.retry_schedule
        if attempts_done > len(schedule):
            return None
        jitter = self.settings.jitter
        factor = self.rng.uniform(1 - jitter, 1 + jitter) if jitter else 1.0
        return schedule[attempts_done - 1] * factor

    def run_once(self) -> DeliveryReport:
        """Send everything due now (including retries whose time has come); return what happened."""
        report = DeliveryReport()
        if self.failures is None:
            raise RuntimeError("the delivery worker needs a failure log to run")
        with self.failures.run(DELIVERY_JOB) as run:
            self._rounds(report, run)
        report.failed_items = run.failed
        return report

    def _rounds(self, report: DeliveryReport, run: JobRun) -> None:
        # One request per thread per round: every claimed delivery is sent right away, so each
        # finishes within `timeout`, well inside its lease.
        batch = self.settings.max_concurrency
        for _ in range(MAX_ROUNDS):
            now = self.clock.now()
            now_us = to_micros(now)
            with self.storage.reading() as tx:
                if not tx.has_due(now_us):
                    break
            token = secrets.token_hex(8)
            lease_until_us = to_micros(now + self.settings.claim_lease)
            with self.storage.writing() as tx:
                claimed = tx.claim_due(now_us, lease_until_us, token, batch)
            if not claimed:
                break
            outcomes = list(self._pool.map(self._send, claimed))
            for item, outcome in zip(claimed, outcomes, strict=True):
                with run.item(
                    "delivery",
                    str(item.delivery.id),
                    eventId=item.event.id,
                    eventType=item.event.type,
                    channelId=item.channel.id,
                ):
                    self._record(item, outcome, report)
            if len(claimed) < batch:
                break

    # -- sending ----------------------------------------------------------------------------------
    def _send(self, item: Claimed) -> _Outcome:
        try:
            return self._attempt(item)
        except Exception as exc:  # recorded and retried like any failure, never left SENDING
            log.exception("webhook attempt failed inside Tallybook", extra={"event_id": item.event.id})
            return _Outcome(self.clock.now(), None, 0, f"internal error: {type(exc).__name__}: {exc}", None)

    def _attempt(self, item: Claimed) -> _Outcome:
        sent_at = self.clock.now()
        body = item.event.body
        headers = {
            "Content-Type": "application/json",
            **item.channel.custom_headers,
            **signature_headers(item.channel.signing_secret, item.event.id, sent_at, body),
        }
        if self.settings.dry_run:
            log.info(
                "webhook dry run: not sent",
                extra={
                    "url": item.channel.url,
                    "event_id": item.event.id,
                    "event_type": item.event.type,
                    "headers": headers,
                    "payload": body,
                },
            )
            return _Outcome(sent_at, None, 0, None, "dry run: not sent")
        started = time.perf_counter()
        try:
            response = self._client.post(item.channel.url, content=body.encode(), headers=headers)
        except httpx.TimeoutException:
            elapsed = _elapsed_ms(started)
            error = f"timed out after {self.settings.timeout.total_seconds():g}s"
            return _Outcome(sent_at, None, elapsed, error, None)
        except httpx.HTTPError as exc:
            return _Outcome(sent_at, None, _elapsed_ms(started), f"{type(exc).__name__}: {exc}", None)
        elapsed = _elapsed_ms(started)
        text = response.text[:RESPONSE_BODY_LIMIT]
        if 200 <= response.status_code < 300:
            return _Outcome(sent_at, response.status_code, elapsed, None, text)
        return _Outcome(sent_at, response.status_code, elapsed, f"HTTP {response.status_code}", text)

    def _record(self, item: Claimed, outcome: _Outcome, report: DeliveryReport) -> None:
        now = self.clock.now()
        now_us = to_micros(now)
        delivery = item.delivery
        attempts_done = delivery.attempt_count + 1
        disable_reason: str | None = None
        next_attempt_us: int | None = None
        if outcome.ok or (self.settings.dry_run and outcome.error is None):
            state, reason = SUCCESS, "dry run: not sent" if self.settings.dry_run else "delivered"
        elif outcome.status_code == 410:
            state = FAILED
            reason = "the endpoint answered 410 Gone; the channel is disabled"
            disable_reason = "the endpoint answered 410 Gone"
        else:
            delay = self.retry_delay(attempts_done)
            if delay is None:
                state = FAILED
                reason = f"{outcome.error}; gave up after {attempts_done} attempts"
            else:
                state = PENDING
                next_at = now + delay
                next_attempt_us = to_micros(next_at)
                reason = f"{outcome.error}; next attempt at {format_rfc3339(next_at)}"
        attempt = {
            "attempted_us": to_micros(outcome.attempted_at),
            "state": SUCCESS if state == SUCCESS else FAILED,
            "status_code": outcome.status_code,
            "duration_ms": outcome.duration_ms,
            "url": item.channel.url,
            "error": outcome.error,
            "response_body": outcome.response_body,
        }
        with self.storage.writing() as tx:
            kept = tx.finish_attempt(delivery, attempt, state, next_attempt_us, reason, now_us)
            if disable_reason is not None:
                tx.disable_channel(item.channel.id, disable_reason, now_us)
        # Counted once recorded: an outcome whose record failed is not an outcome yet.
        report.attempted += 1
        if state == SUCCESS:
            report.delivered += 1
        elif state == PENDING:
            report.retrying += 1
        else:
            report.failed += 1
        if disable_reason is not None:
            report.disabled_channels.append(item.channel.id)
        if not kept:
            log.warning(
                "webhook delivery lease ran out before the attempt finished; another worker owns it now",
                extra={"event_id": item.event.id, "channel_id": item.channel.id},
            )
        level = logging.INFO if state == SUCCESS else logging.WARNING
        log.log(
            level,
            "webhook attempt",
            extra={
                "event_id": item.event.id,
                "event_type": item.event.type,
                "channel_id": item.channel.id,
                "state": state,
                "status_code": outcome.status_code,
                "error": outcome.error,
                "duration_ms": outcome.duration_ms,
            },
        )


def _elapsed_ms(started: float) -> int:
    return int((time.perf_counter() - started) * 1000)
