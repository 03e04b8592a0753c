"""The report ledger's vocabulary: what a row, a run and a target are, and the pure rules about rows.

No I/O: what Stripe holds for a window by its rows (`held_in_window`, with the doubt rules),
which identifiers and idempotency keys a row gets, which answers mean "already received", and the
job cursors' names. The reporter (`reporter.py`, `usage_records.py`, `sender.py`) and the
explainer (`explain.py`) build on it.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import stripe

from tallybook.clock import format_rfc3339, from_micros
from tallybook.meters.models import Aggregation
from tallybook.meters.windows import WindowSize, zone
from tallybook.stripe.client import error_json
from tallybook.stripe.model import EVENT, OUT_OF_RANGE, REJECTED, SENT, ReportRow
from tallybook.stripe.settings import StripeMeterMapping

REPORT_JOB = "stripe.report"
UTC_ZONE = zone("UTC")
MAX_PAST = timedelta(days=35)  # Stripe refuses meter events older than this
MAX_FUTURE = timedelta(minutes=5)  # ... or further ahead than this
PAST_MARGIN = timedelta(minutes=10)  # keep clear of the edge: the request takes time to arrive
CANCEL_WINDOW = timedelta(hours=24)  # adjustments only for events received in the last 24 h
CANCEL_MARGIN = timedelta(minutes=30)
STALE_AFTER = timedelta(hours=23)  # PENDING intents older than this are not resent blindly
SESSION_REFRESH = timedelta(minutes=1)  # renew the v2 session token this long before it expires
STREAM_BATCH = 100  # events per v2 stream request
OUTCOME_BATCH = 200  # answers recorded per transaction
IDENTIFIER_MAX = 100
# Stripe answers these for a resent row whose first send did arrive: the row is done. Its v1 meter
# event endpoint names a duplicate identifier only in the message ("An event already exists with
# identifier …", no code), so any "already …" answer counts.
ALREADY_DONE_CODES = frozenset({"duplicate_meter_event", "meter_event_already_cancelled"})
UNCONFIRMED = "not confirmed within Stripe's 24 h identifier window"
KEY_TAKEN = "Stripe refused its idempotency key as used before with other parameters (a restored database?)"
ALREADY_DONE_MESSAGE = re.compile(r"\balready (exists|been|received|cancell?ed|canceled)\b", re.IGNORECASE)
LAST_AGGREGATIONS = frozenset(
    {
        Aggregation.MAX,
        Aggregation.MIN,
        Aggregation.AVG,
        Aggregation.UNIQUE_COUNT,
        Aggregation.LATEST,
        Aggregation.FIRST,
    }
)


def stripe_formula(aggregation: Aggregation) -> str:
    """The Stripe meter formula a Tallybook aggregation reports to: `sum` or `last`."""
    return "last" if aggregation in LAST_AGGREGATIONS else "sum"


def already_done(info: dict[str, Any]) -> bool:
    """Whether Stripe's refusal says it holds this event (or cancel) already: the first send arrived."""
    if info.get("code") in ALREADY_DONE_CODES:
        return True
    return info.get("http_status") == 400 and bool(ALREADY_DONE_MESSAGE.search(str(info.get("message") or "")))


def idempotency_key(row: ReportRow) -> str:
    """The row's identifier: every attempt for a window and version carries the same key, so a resend
    after a lost answer gets Stripe's saved answer (or waits while the first request still runs).
    Only after Stripe replayed a saved 5xx under it (the key is spent) do attempts get their own key."""
    last = row.response if isinstance(row.response, dict) else {}
    if last.get("replayed") and int(last.get("http_status") or 0) >= 500:
        return f"{row.identifier}-a{row.attempts + 1}"
    return row.identifier


def make_identifier(prefix: str, meter: str, customer_id: str, start_us: int, version: int) -> str:
    """Deterministic: the same window and version always give the same identifier."""
    readable = f"tb-{prefix}-{meter}-{customer_id}-{start_us // 1_000_000}-v{version}"
    if len(readable) <= IDENTIFIER_MAX:
        return readable
    digest = hashlib.sha256(f"{meter}|{customer_id}|{start_us}".encode()).hexdigest()[:32]
    return f"tb-{prefix}-{digest}-{start_us // 1_000_000}-v{version}"


@dataclass(frozen=True, slots=True)
class ReportedRange:
    """What one run reported of one mapped meter, rounded to its windows, and why those bounds."""

    meter: str
    mode: str  # billing_meter | usage_record
    formula: str  # sum | last
    window: WindowSize
    start: datetime | None  # first window (None for usage records: each item's billing period)
    end: datetime  # end of the last whole window that ended `settle_delay` ago (or at --to)
    start_reason: str  # "from": --from rounded down; "first": no run before, end - backfill; "lookback"
    end_reason: str  # "settle": now - settle_delay rounded down; "to": --to rounded down


@dataclass
class RunSummary:
    sent: int = 0
    corrections: int = 0
    pending: int = 0
    rejected: int = 0
    out_of_range: int = 0
    requests: int = 0
    halted: str | None = None
    items: list[dict[str, Any]] = field(default_factory=list)
    failed_items: int = 0  # meters or subscription items skipped because they failed
    ranges: list[ReportedRange] = field(default_factory=list)  # per mapped meter reported

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "sent": self.sent,
            "corrections": self.corrections,
            "pending": self.pending,
            "rejected": self.rejected,
            "outOfRange": self.out_of_range,
            "requests": self.requests,
        }
        if self.halted:
            body["halted"] = self.halted
        if self.failed_items:
            body["failedItems"] = self.failed_items
        return body


class Halt(Exception):
    """Stop sending for this run (rate limited or credentials refused); retried later."""


@dataclass(frozen=True, slots=True)
class Target:
    """A mapping resolved against the live meter."""

    mapping: StripeMeterMapping
    formula: str

    @property
    def meter(self) -> str:
        return self.mapping.meter

    @property
    def size(self) -> WindowSize:
        return WindowSize(self.mapping.window)


def range_problem(timestamp_us: int, now: datetime) -> str | None:
    """Why Stripe would refuse a meter event with this timestamp now (None: it accepts it)."""
    ts = from_micros(timestamp_us)
    if ts < now - MAX_PAST + PAST_MARGIN:
        return (
            f"timestamp {format_rfc3339(ts)} is more than 35 days before now; Stripe refuses it. "
            "Bill this usage by hand (e.g. an invoice item)"
        )
    if ts > now + MAX_FUTURE:
        return f"timestamp {format_rfc3339(ts)} is more than 5 minutes ahead; Stripe refuses it"
    return None


def held_in_window(history: list[ReportRow]) -> Decimal:
    """What Stripe holds for a sum meter's window, by its ledger rows: the live (sent, not cancelled)
    events; after Stripe's own figure when a row of the window was settled in doubt."""
    doubt = doubt_id(history)
    live = [r for r in history if r.kind == EVENT and r.status == SENT and not r.cancelled and r.id > doubt]
    return doubt_base(history) + sum((r.value for r in live), Decimal(0))


def refused(row: ReportRow) -> bool:
    """Stripe refused the row, or it was out of range (not: settled by event summaries, see _settle_stale)."""
    if row.status == OUT_OF_RANGE:
        return True
    settled = isinstance(row.response, dict) and (row.response.get("verifiedAbsent") or row.response.get("inDoubt"))
    return row.status == REJECTED and not settled


def doubt_id(history: list[ReportRow]) -> int:
    """The id of the window's latest row held in doubt (0: none): rows up to it are replaced by
    Stripe's own figure for the window, stored on it."""
    doubtful = [
        r.id for r in history if r.status == REJECTED and isinstance(r.response, dict) and r.response.get("inDoubt")
    ]
    return max(doubtful, default=0)


def doubt_base(history: list[ReportRow]) -> Decimal:
    """Stripe's figure for the window as read when its latest doubtful row was settled (0: none)."""
    base = Decimal(0)
    for r in history:
        if r.status == REJECTED and isinstance(r.response, dict) and r.response.get("inDoubt"):
            total = r.response.get("stripeWindowTotal")
            base = Decimal(str(total)) if total is not None else base
    return base


def received_us(row: ReportRow, response: dict[str, Any], earlier: bool, now_us: int) -> int:
    """When Stripe received what `row` sent, never later than it did: the start of its 24 h cancel
    window must not be overestimated, or a correction plans a cancel Stripe refuses. Stripe's own
    `created` on the meter event says it, also when the answer is a replay of an attempt whose
    outcome was lost (a crash after the send: the resend with the same idempotency key gets the
    first answer back). Without it: an earlier attempt's receipt is no earlier than the intent was
    written; otherwise now."""
    received = row.created_us if earlier else now_us
    created = response.get("created")
    if isinstance(created, int) and not isinstance(created, bool) and created > 0:
        received = min(received, created * 1_000_000)
    return received


def error_info(exc: stripe.StripeError) -> dict[str, Any]:
    """Stripe's error as stored on the ledger; `replayed` when Stripe replayed a saved answer for
    the idempotency key (a saved 5xx means the key is spent)."""
    info = error_json(exc)
    headers = exc.headers or {}
    if str(headers.get("Idempotent-Replayed") or headers.get("idempotent-replayed") or "").lower() == "true":
        info["replayed"] = True
    return info


def outcome_name(response: dict[str, Any]) -> str:
    if "alreadyReceived" in response:
        return "ALREADY_RECEIVED"
    if "confirmed" in response:
        return "CONFIRMED"
    return SENT


def http_status_of(response: dict[str, Any]) -> int | None:
    if "alreadyReceived" in response:
        status = response["alreadyReceived"].get("http_status")
        return int(status) if status is not None else None
    return None if "confirmed" in response else 200


def reported_cursor(meter: str) -> str:
    """The job cursor holding the end of what was reported of `meter` (the last run's end)."""
    return f"stripe.reported:{meter}"


def reported_from_cursor(meter: str) -> str:
    """The job cursor holding where reporting of `meter` started (the first run's first window)."""
    return f"stripe.reported_from:{meter}"


def jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, float):
        return str(Decimal(repr(value)))
    return value
