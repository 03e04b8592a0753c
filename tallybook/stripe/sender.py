"""Writing intents to the ledger, sending them to Stripe, and recording Stripe's answers.

`LedgerSender` is the half of the reporter that talks to Stripe: it writes a plan's rows as PENDING
intents in one transaction, sends them (v1 meter events, cancel adjustments, legacy usage records,
or the v2 stream in batches), records each answer (or refusal, with backoff) on its row, and decides
rows in doubt by Stripe's event summaries. `reporter.Reporter` decides what to send.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from functools import partial
from typing import Any

import stripe

from tallybook.clock import Clock, format_rfc3339, to_micros
from tallybook.jobs.runs import ItemFailureLog, JobRun
from tallybook.meters.service import MeterService
from tallybook.meters.windows import window_start
from tallybook.stripe.client import TokenBucket
from tallybook.stripe.ledger import (
    KEY_TAKEN,
    OUTCOME_BATCH,
    SESSION_REFRESH,
    STREAM_BATCH,
    UTC_ZONE,
    Halt,
    RunSummary,
    Target,
    already_done,
    error_info,
    held_in_window,
    http_status_of,
    idempotency_key,
    jsonable,
    outcome_name,
    range_problem,
    received_us,
)
from tallybook.stripe.model import (
    CANCEL,
    EVENT,
    OUT_OF_RANGE,
    PENDING,
    REJECTED,
    SENT,
    USAGE_RECORD,
    CustomerLink,
    ReportRow,
)
from tallybook.stripe.ports import StripeStorage
from tallybook.stripe.settings import LEGACY_API_VERSION, StripeSettings

log = logging.getLogger(__name__)


class LedgerSender:
    """The reporter's state and its sending half (see `reporter.Reporter`, which builds it)."""

    db: StripeStorage
    meters: MeterService
    settings: StripeSettings
    clock: Clock
    failures: ItemFailureLog
    client: stripe.StripeClient
    session_client: Callable[[str], stripe.StripeClient]
    budget: TokenBucket | None
    _job_run: JobRun | None
    _session_token: str | None
    _session_expires: datetime | None
    _stream_client: stripe.StripeClient | None
    _settle: timedelta
    _run_lock: threading.Lock
    _meter_ids: dict[str, str]

    # -- shared by every kind of report ---------------------------------------------------------------
    def _horizon(self, target: Target, now: datetime, to: datetime | None) -> datetime:
        """End of the last whole window that is settled (and not after `to`)."""
        limit = now - self._settle
        if to is not None:
            limit = min(limit, to)
        return window_start(target.size, limit, UTC_ZONE)

    def _linked(self, customer_ids: Sequence[str] | None) -> dict[str, CustomerLink]:
        return self.db.customers(customer_ids)

    # -- persisting and sending ---------------------------------------------------------------------
    def _persist_and_send(
        self,
        target: Target,
        plans: list[dict[str, Any]],
        now: datetime,
        summary: RunSummary,
        item_id: str | None = None,
    ) -> None:
        now_us = to_micros(now)
        intents = []
        out_of_range = []
        for plan in plans:
            values = {
                **plan,
                "value": str(plan["value"]),
                "target": str(plan["target"]),
                "carried": None if plan.get("carried") is None else str(plan["carried"]),
                "cancelled": False,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_us": now_us,
                "request": self._request_body(target, plan, item_id),
                "response": None,
                "error": None,
                "created_us": now_us,
                "updated_us": now_us,
                "sent_us": None,
            }
            problem = range_problem(plan["timestamp_us"], now) if plan["kind"] == EVENT else None
            if problem is not None:
                values.update(status=OUT_OF_RANGE, error=problem, next_attempt_us=None)
                out_of_range.append(plan)
            intents.append(values)
        with self.db.writing() as tx:
            ids = tx.insert_reports(intents)
        summary.out_of_range += len(out_of_range)
        for plan in out_of_range:
            log.error(
                "usage not reported: timestamp outside Stripe's accepted range",
                extra={"meter": plan["meter"], "customer_id": plan["customer_id"]},
            )
        pending = [
            ReportRow(
                id=report_id,
                **{
                    **values,
                    "value": Decimal(values["value"]),
                    "target": Decimal(values["target"]),
                    "carried": None if values["carried"] is None else Decimal(values["carried"]),
                },
            )
            for report_id, values in zip(ids, intents, strict=True)
            if values["status"] == PENDING
        ]
        self._send(target, pending, now, summary)

    def _request_body(self, target: Target, plan: dict[str, Any], item_id: str | None) -> dict[str, Any]:
        if plan["kind"] == USAGE_RECORD:
            return {
                "path": f"/v1/subscription_items/{item_id}/usage_records",
                "quantity": int(plan["value"]),
                "timestamp": plan["timestamp_us"] // 1_000_000,
                "action": "set",
                "idempotency_key": plan["identifier"],
                "stripe_version": LEGACY_API_VERSION,
            }
        event_name = target.mapping.event_name
        if plan["kind"] == CANCEL:
            return {"event_name": event_name, "type": "cancel", "cancel": {"identifier": plan["cancels"]}}
        return {
            "event_name": event_name,
            "identifier": plan["identifier"],
            "timestamp": plan["timestamp_us"] // 1_000_000,
            "payload": {"stripe_customer_id": plan["stripe_customer_id"], "value": str(plan["value"])},
            "transport": target.mapping.transport,
        }

    def _settle_by_summaries(
        self, target: Target, row: ReportRow, now: datetime, summary: RunSummary, why: str
    ) -> None:
        """Decide a row in doubt (`why`: unconfirmed for 23 h, or its idempotency key taken by other
        parameters) by what Stripe holds for its window: its event summaries (Stripe processes meter
        events asynchronously, but not for a day).

        Stripe's window total equal to the ledger's with the row: it arrived (SENT, `confirmed`).
        Equal to the ledger's without it: it did not (REJECTED with `verifiedAbsent`; the window is
        planned again under the next version). Neither: REJECTED `inDoubt`, holding Stripe's total,
        which the window's next correction starts from (Stripe is the truth); counted as rejected.
        """
        now_us = to_micros(now)
        try:
            held, total = self._window_totals(target, row)
        except stripe.StripeError as exc:
            # Stripe's figure cannot be read now: the row stays PENDING and is decided at its next attempt.
            info = error_info(exc)
            delay = min(self.settings.retry_base * (2**row.attempts), self.settings.retry_max)
            waiting = f"waiting for Stripe's event summaries to decide whether it arrived: {info['message']}"
            with self.db.writing() as tx:
                tx.record_outcome(
                    row.id,
                    {
                        "next_attempt_us": to_micros(now + delay),
                        "response": info,
                        "error": waiting,
                        "updated_us": now_us,
                    },
                )
            summary.pending += 1
            return
        # What Stripe holds with the row and without it (a `last` meter holds its latest value).
        with_row = row.value if target.formula == "last" and row.kind == EVENT else held + row.value
        if total is not None and (total == with_row or (row.kind == EVENT and row.value == 0)):
            done = "it arrived" if row.kind == EVENT else "the cancel was applied"
            confirmed = f"Stripe's event summaries for the window hold {total}: {done}"
            self._succeeded([(row, {"confirmed": confirmed, "stripeWindowTotal": str(total)})], now, summary)
            return
        if total is not None and total == held:
            response: dict[str, Any] = {"verifiedAbsent": True, "stripeWindowTotal": str(total)}
            error = (
                f"did not reach Stripe: its event summaries for the window hold {total}, what the ledger "
                "holds without it; " + ("sent again under the next version" if row.kind == EVENT else "not retried")
            )
        else:
            response = {"inDoubt": True, "stripeWindowTotal": None if total is None else str(total)}
            seen = "could not be read" if total is None else f"hold {total}"
            error = (
                f"{why}, and Stripe's event summaries for the window {seen} (the ledger: {held} without it, "
                f"{with_row} with it); the window's next correction starts from Stripe's figure. "
                "Compare with `tallybook stripe reconcile`"
            )
            summary.rejected += 1
        with self.db.writing() as tx:
            tx.record_outcome(
                row.id,
                {
                    "status": REJECTED,
                    "next_attempt_us": None,
                    "response": response,
                    "error": error,
                    "updated_us": now_us,
                },
            )
            tx.insert_attempts(
                [{"report_id": row.id, "attempted_us": now_us, "outcome": REJECTED, "http_status": None,
                  "response": response, "error": error}],
            )  # fmt: skip

    def _window_totals(self, target: Target, row: ReportRow) -> tuple[Decimal, Decimal | None]:
        """What the ledger says Stripe holds for the row's window without the row, and what Stripe's
        event summaries say it holds (None: no Stripe meter has the mapping's event name)."""
        history = self.db.latest_per_window(
            row.meter, row.window_start_us, row.window_start_us + 1, [row.customer_id]
        ).get((row.customer_id, row.window_start_us), [])
        live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id != row.id]
        if target.formula == "last":
            held = live[-1].value if live else Decimal(0)
        else:
            held = held_in_window([r for r in history if r.id != row.id])
        total = self.stripe_window_total(target, row.stripe_customer_id, row.window_start_us, row.window_end_us)
        return held, total

    def stripe_window_total(self, target: Target, stripe_customer: str, start_us: int, end_us: int) -> Decimal | None:
        """Stripe's own figure for [start, end): the sum (or, for `last` meters, the last value) of its
        event summaries; None when the Stripe meter for the event name is not found."""
        meter_id = self.stripe_meter_id(target.mapping.event_name)
        if meter_id is None:
            return None
        summaries = self._call(
            lambda: self.client.v1.billing.meters.event_summaries.list(
                meter_id,
                {"customer": stripe_customer, "start_time": start_us // 1_000_000, "end_time": end_us // 1_000_000,
                 "limit": 100},
            )
        )  # fmt: skip
        values = [Decimal(str(s.aggregated_value)) for s in summaries.auto_paging_iter()]
        if target.formula == "last":
            return values[-1] if values else Decimal(0)
        return sum(values, Decimal(0))

    def forget_meter_ids(self) -> None:
        """Look Stripe meters up afresh (each run and each reconcile: a meter may have been replaced)."""
        self._meter_ids.clear()

    def stripe_meter_id(self, event_name: str | None) -> str | None:
        """The Stripe meter of an event name: linked by `tallybook stripe setup`, else looked up once."""
        if event_name is None:
            return None
        if event_name not in self._meter_ids:
            linked = {m.event_name: m.stripe_meter_id for m in self.db.meter_links() if m.stripe_meter_id}
            found = linked.get(event_name)
            if found is None:
                listed = self._call(lambda: self.client.v1.billing.meters.list({"limit": 100})).auto_paging_iter()
                named = [m for m in listed if m.event_name == event_name]
                active = [m for m in named if m.status == "active"]
                found = str((active or named)[0].id) if named else None
            if found is None:
                return None
            self._meter_ids[event_name] = found
        return self._meter_ids[event_name]

    def _send(self, target: Target, rows: list[ReportRow], now: datetime, summary: RunSummary) -> None:
        stream: list[ReportRow] = []
        single: list[ReportRow] = []
        for row in rows:
            is_stream = row.kind == EVENT and row.request.get("transport") == "v2_stream"
            (stream if is_stream else single).append(row)
        done: list[tuple[ReportRow, dict[str, Any]]] = []
        try:
            for row in single:
                response = self._send_one(row, now, summary)
                if response is not None and "keyTaken" in response:
                    self._settle_by_summaries(target, row, now, summary, KEY_TAKEN)
                elif response is not None:
                    done.append((row, response))
                if len(done) >= OUTCOME_BATCH:
                    self._succeeded(done, now, summary)
                    done = []
        finally:
            # Outcomes are recorded in batches; a crash before that only means a harmless resend.
            if done:
                self._succeeded(done, now, summary)
        for start in range(0, len(stream), STREAM_BATCH):
            self._send_stream(stream[start : start + STREAM_BATCH], now, summary)

    def _send_one(self, row: ReportRow, now: datetime, summary: RunSummary) -> dict[str, Any] | None:
        """Send one row; returns Stripe's answer, or None when the failure was recorded."""
        body = dict(row.request)
        options: dict[str, Any] = {"idempotency_key": idempotency_key(row)}
        try:
            if row.kind == USAGE_RECORD:
                path = body.pop("path")
                key = body.pop("idempotency_key")
                version = body.pop("stripe_version")
                raw = self._request(
                    lambda: self.client.raw_request("post", path, stripe_version=version, idempotency_key=key, **body),
                    summary,
                )
                response = self.client.deserialize(raw, api_mode="V1").to_dict()
            elif row.kind == CANCEL:
                response = self._request(
                    lambda: self.client.v1.billing.meter_event_adjustments.create(body, options),  # type: ignore[arg-type]
                    summary,
                ).to_dict()
            else:
                body.pop("transport", None)
                response = self._request(
                    lambda: self.client.v1.billing.meter_events.create(body, options),  # type: ignore[arg-type]
                    summary,
                ).to_dict()
        except stripe.StripeError as exc:
            info = error_info(exc)
            if row.kind != USAGE_RECORD and already_done(info):
                return {"alreadyReceived": info}  # the first send arrived
            if row.kind != USAGE_RECORD and isinstance(exc, stripe.IdempotencyError) and exc.http_status == 400:
                return {"keyTaken": info}  # the identifier was sent before with other parameters
            self._failed([row], exc, now, summary)
            return None
        return dict(response)

    def _send_stream(self, rows: list[ReportRow], now: datetime, summary: RunSummary) -> None:
        events = []
        for row in rows:
            body = row.request
            events.append(
                {
                    "event_name": body["event_name"],
                    "identifier": body["identifier"],
                    "timestamp": format_rfc3339(datetime.fromtimestamp(body["timestamp"], UTC)),
                    "payload": body["payload"],
                }
            )
        params: Any = {"events": events}
        for attempt in range(2):
            client = self._stream(now)
            try:
                self._request(partial(client.v2.billing.meter_event_stream.create, params), summary)
            except stripe.TemporarySessionExpiredError:
                self._session_token = None  # expired early (clock skew): renew once and resend
                if attempt == 0:
                    continue
                raise
            except stripe.StripeError as exc:
                self._failed(rows, exc, now, summary)
                return
            break
        answer = {"stream": "accepted", "events": len(events)}
        self._succeeded([(row, answer) for row in rows], now, summary)

    def _stream(self, now: datetime) -> stripe.StripeClient:
        """A client carrying a v2 meter event session token, renewed before its 15 minutes run out."""
        if (
            self._session_token is None
            or self._session_expires is None
            or now >= self._session_expires - SESSION_REFRESH
            or self._stream_client is None
        ):
            session = self._request(lambda: self.client.v2.billing.meter_event_session.create(), None)
            self._session_token = session.authentication_token
            expires = session.expires_at
            self._session_expires = (
                datetime.fromisoformat(expires.replace("Z", "+00:00"))
                if isinstance(expires, str)
                else now + timedelta(minutes=15)
            )
            self._stream_client = self.session_client(self._session_token)
        return self._stream_client

    def _request(self, call: Any, summary: RunSummary | None) -> Any:
        if summary is not None:
            summary.requests += 1
        return call()

    def _call(self, call: Any) -> Any:
        try:
            return call()
        except stripe.RateLimitError as exc:
            self._pause()
            raise Halt(f"Stripe rate limit (429): {exc.user_message or exc}") from None

    def _pause(self) -> None:
        if self.budget is not None:
            self.budget.pause(1.0)

    def _succeeded(self, done: list[tuple[ReportRow, dict[str, Any]]], now: datetime, summary: RunSummary) -> None:
        now_us = to_micros(now)
        with self.db.writing() as tx:
            for row, response in done:
                earlier = "alreadyReceived" in response or "confirmed" in response
                tx.record_outcome(
                    row.id,
                    {
                        "status": SENT,
                        "attempts": row.attempts + (0 if "confirmed" in response else 1),
                        "next_attempt_us": None,
                        "response": jsonable(response),
                        "error": None,
                        "updated_us": now_us,
                        "sent_us": received_us(row, response, earlier, now_us),
                    },
                )
                if row.kind == CANCEL and row.cancels:
                    tx.mark_cancelled(row.cancels, now_us)
            tx.insert_attempts(
                [
                    {
                        "report_id": row.id,
                        "attempted_us": now_us,
                        "outcome": outcome_name(response),
                        "http_status": http_status_of(response),
                        "response": jsonable(response),
                        "error": None,
                    }
                    for row, response in done
                ],
            )
        summary.sent += len(done)
        summary.corrections += sum(1 for r, _ in done if r.kind == CANCEL or r.version > 1)

    def _failed(self, rows: list[ReportRow], exc: stripe.StripeError, now: datetime, summary: RunSummary) -> None:
        info = error_info(exc)
        if len(rows) == 1 and rows[0].kind != USAGE_RECORD and already_done(info):
            # The first send arrived (we crashed or timed out before recording it).
            self._succeeded([(row, {"alreadyReceived": info}) for row in rows], now, summary)
            return
        status_code = exc.http_status or 0
        retry = isinstance(exc, stripe.RateLimitError | stripe.APIConnectionError) or status_code >= 500
        retry = retry or status_code in (401, 403, 409) or isinstance(exc, stripe.AuthenticationError)
        now_us = to_micros(now)
        attempts = rows[0].attempts + 1
        delay = min(self.settings.retry_base * (2 ** (attempts - 1)), self.settings.retry_max)
        with self.db.writing() as tx:
            for row in rows:
                tx.record_outcome(
                    row.id,
                    {
                        "status": PENDING if retry else REJECTED,
                        "attempts": row.attempts + 1,
                        "next_attempt_us": to_micros(now + delay) if retry else None,
                        "response": info,
                        "error": info["message"],
                        "updated_us": now_us,
                    },
                )
            tx.insert_attempts(
                [
                    {
                        "report_id": row.id,
                        "attempted_us": now_us,
                        "outcome": "RETRY" if retry else REJECTED,
                        "http_status": exc.http_status,
                        "response": info,
                        "error": info["message"],
                    }
                    for row in rows
                ],
            )
        if retry:
            summary.pending += len(rows)
        else:
            summary.rejected += len(rows)
        if isinstance(exc, stripe.RateLimitError):
            self._pause()
            raise Halt(f"Stripe rate limit (429); resuming at the next run: {info['message']}")
        if isinstance(exc, stripe.AuthenticationError | stripe.PermissionError):
            raise Halt(f"Stripe refused the credentials: {info['message']}")
