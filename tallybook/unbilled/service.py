"""The unbilled-usage report, and the job that sends it as a `billing.unbilled_usage` webhook.

How a report is made (one grouped meter query per meter and distinct span, never one per
customer):

1. Per meter, one query over [from, to) grouped by subject and customer finds who has usage.
2. Subjects with no customer: their usage per calendar month (UTC), one query per meter and month
   restricted to those subjects: `subject_without_customer`.
3. Customers with usage: their time in [from, to) is cut at their calendar months (in the
   customer's time zone) and at their subscriptions' starts and ends. A piece no subscription
   covers is `no_subscription` for every meter; a piece whose subscriptions' plans have no usage
   price on a meter is `meter_not_priced` for that meter. Consecutive pieces of the same month and
   reason are one span, and each span's quantity is the meter's aggregate over exactly that span
   (so MAX, UNIQUE_COUNT and LATEST stay right: nothing is added up from smaller windows).

Quantities count events as of `asOf` (default now) and skip voided events (voided at or before
`asOf`), as every meter query does. A span whose aggregate is 0 is left out: it bills nothing
either way.
"""

from __future__ import annotations

import hashlib
import itertools
from collections import defaultdict
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol
from zoneinfo import ZoneInfo

from tallybook.clock import Clock, format_rfc3339
from tallybook.unbilled.model import (
    Coverage,
    Reason,
    Span,
    UnbilledQuery,
    UnbilledReport,
    UnbilledRow,
)
from tallybook.unbilled.ports import BillingSource, UsageSource

EVENT_TYPE = "billing.unbilled_usage"
JOB_NAME = "billing.unbilled"
PAGE = 500  # customers per grouped query


def month_spans(start: datetime, end: datetime, tz_name: str) -> list[Span]:
    """[start, end) cut at the starts of calendar months in `tz_name`."""
    tz = ZoneInfo(tz_name)
    local = start.astimezone(tz)
    cursor = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    out: list[Span] = []
    while True:
        following = (cursor.replace(day=28) + timedelta(days=4)).replace(day=1)
        first = max(start, cursor.astimezone(UTC))
        last = min(end, following.astimezone(UTC))
        if first < last:
            out.append(Span(first, last))
        if following.astimezone(UTC) >= end:
            return out
        cursor = following


def _cuts(span: Span, instants: Iterable[datetime | None]) -> list[Span]:
    points = sorted({span.start, span.end, *(t for t in instants if t is not None and span.start < t < span.end)})
    return [Span(a, b) for a, b in itertools.pairwise(points)]


class UnbilledService:
    def __init__(self, usage: UsageSource, billing: BillingSource, clock: Clock) -> None:
        self.usage = usage
        self.billing = billing
        self.clock = clock

    def report(self, query: UnbilledQuery) -> UnbilledReport:
        query.check()
        generated = self.clock.now()
        whole = Span(query.from_, query.to)
        meters = [m for m in self.usage.meters() if not query.meters or m in query.meters]
        orphans: dict[str, set[str]] = defaultdict(set)  # meter -> subjects without a customer
        users: set[str] = set()
        for meter in meters:
            for subject, customer_id, _ in self.usage.by_subject(meter, whole, query.as_of):
                if customer_id is None:
                    orphans[meter].add(subject)
                else:
                    users.add(customer_id)
        rows: list[UnbilledRow] = []
        if query.wants(Reason.SUBJECT_WITHOUT_CUSTOMER):
            rows.extend(self._orphan_rows(orphans, whole, query.as_of))
        if users and (query.wants(Reason.NO_SUBSCRIPTION) or query.wants(Reason.METER_NOT_PRICED)):
            rows.extend(self._customer_rows(sorted(users), meters, whole, query))
        rows.sort(key=_row_order)
        return UnbilledReport(query, generated, rows)

    def _orphan_rows(self, orphans: dict[str, set[str]], whole: Span, as_of: datetime | None) -> list[UnbilledRow]:
        rows = []
        for meter, subjects in sorted(orphans.items()):
            for span in month_spans(whole.start, whole.end, "UTC"):
                for subject, customer_id, quantity in self.usage.by_subject(meter, span, as_of):
                    if customer_id is None and subject in subjects and quantity != 0:
                        rows.append(
                            UnbilledRow(
                                Reason.SUBJECT_WITHOUT_CUSTOMER,
                                meter,
                                span,
                                quantity,
                                subject=subject,
                                detail="the subject is attributed to no customer (customers' usageAttribution)",
                            )
                        )
        return rows

    def _customer_rows(
        self, customer_ids: list[str], meters: list[str], whole: Span, query: UnbilledQuery
    ) -> list[UnbilledRow]:
        customers = self.billing.customers(customer_ids)
        coverage = self.billing.coverage(customer_ids, whole)
        # (meter, span) -> customers to ask, and what a row for each would say.
        wanted: dict[tuple[str, Span], dict[str, tuple[Reason, str]]] = defaultdict(dict)
        for customer_id in customer_ids:
            customer = customers.get(customer_id)
            if customer is None:
                continue
            subs = coverage.get(customer_id, [])
            boundaries = [t for s in subs for t in (s.active_from, s.active_to)]
            for month in month_spans(whole.start, whole.end, customer.timezone):
                for meter in meters:
                    for span, reason, detail in self._runs(month, boundaries, subs, meter):
                        if query.wants(reason):
                            wanted[(meter, span)][customer_id] = (reason, detail)
        rows = []
        for (meter, span), found in wanted.items():
            ids = sorted(found)
            for start in range(0, len(ids), PAGE):
                figures = self.usage.by_customer(meter, span, ids[start : start + PAGE], query.as_of)
                for customer_id, quantity in figures.items():
                    if quantity == 0 or customer_id not in found:
                        continue
                    reason, detail = found[customer_id]
                    rows.append(
                        UnbilledRow(reason, meter, span, quantity, customer=customers[customer_id], detail=detail)
                    )
        return rows

    @staticmethod
    def _runs(
        month: Span, boundaries: Sequence[datetime | None], subs: Sequence[Coverage], meter: str
    ) -> list[tuple[Span, Reason, str]]:
        """The month's maximal runs of time that bill nothing on `meter`, with the reason."""
        runs: list[tuple[Span, Reason, str]] = []
        for piece in _cuts(month, boundaries):
            active = [
                s for s in subs if s.active_from <= piece.start and (s.active_to is None or piece.end <= s.active_to)
            ]
            if not active:
                reason, detail = Reason.NO_SUBSCRIPTION, "no subscription of the customer covers this time"
            elif not any(meter in s.priced_meters for s in active):
                plans = ", ".join(sorted({s.plan for s in active}))
                reason, detail = Reason.METER_NOT_PRICED, f"plan {plans} has no usage price on this meter"
            else:
                continue
            if runs and runs[-1][1] is reason and runs[-1][2] == detail and runs[-1][0].end == piece.start:
                runs[-1] = (Span(runs[-1][0].start, piece.end), reason, detail)
            else:
                runs.append((piece, reason, detail))
        return runs


def _row_order(row: UnbilledRow) -> tuple[Any, ...]:
    who = row.subject if row.customer is None else (row.customer.key or row.customer.id)
    return (row.reason.value, who or "", row.meter, row.period.start)


def row_json(row: UnbilledRow) -> dict[str, Any]:
    body: dict[str, Any] = {"reason": row.reason.value}
    if row.customer is not None:
        body["customer"] = {
            "id": row.customer.id,
            "key": row.customer.key,
            "name": row.customer.name,
            "timezone": row.customer.timezone,
        }
    else:
        body["subject"] = row.subject
    body.update(
        {
            "meter": row.meter,
            "period": {"from": format_rfc3339(row.period.start), "to": format_rfc3339(row.period.end)},
            "quantity": str(row.quantity),
            "detail": row.detail,
        }
    )
    return body


def report_json(report: UnbilledReport) -> dict[str, Any]:
    """The report as the API answers it and the webhook carries it."""
    q = report.query
    return {
        "from": format_rfc3339(q.from_),
        "to": format_rfc3339(q.to),
        "asOf": None if q.as_of is None else format_rfc3339(q.as_of),
        "generatedAt": format_rfc3339(report.generated_at),
        "totalCount": len(report.rows),
        "items": [row_json(r) for r in report.rows],
    }


# -- the notification ---------------------------------------------------------------------------------
class Notifier(Protocol):
    """Where the report goes: the outbox, to the channels a `billing.unbilled_usage` rule names."""

    def listening(self) -> bool: ...

    def send(self, payload: dict[str, Any], dedup_key: str, now: datetime) -> bool:
        """Queue the event; False when one with this dedup key was queued already."""
        ...


def _digest(rows: Sequence[dict[str, Any]]) -> str:
    text = repr(
        [(r["reason"], r.get("subject") or r["customer"]["id"], r["meter"], r["period"], r["quantity"]) for r in rows]
    )
    return hashlib.sha256(text.encode()).hexdigest()[:16]


class UnbilledNotifications:
    """The `billing.unbilled` job: after a calendar month (UTC) has closed (its end plus `grace`,
    the invoice grace, so its invoices are drafted), report its unbilled usage once; report it again
    only if it changes (late events, voids, a customer or plan fixed). The month before is looked
    at too, so a late fix is seen. Nothing is computed while no rule routes the event."""

    def __init__(
        self,
        service: UnbilledService,
        notifier: Notifier,
        grace: timedelta,
        months_back: int = 2,
    ) -> None:
        self.service = service
        self.notifier = notifier
        self.grace = grace
        self.months_back = months_back

    def closed_months(self, now: datetime) -> list[Span]:
        cursor = (now - self.grace).astimezone(UTC).replace(day=1, hour=0, minute=0, second=0, microsecond=0)
        months = []
        for _ in range(self.months_back):
            previous = (cursor - timedelta(days=1)).replace(day=1)
            months.append(Span(previous, cursor))
            cursor = previous
        return list(reversed(months))

    def run(self, now: datetime) -> dict[str, Any]:
        if not self.notifier.listening():
            return {"sent": 0, "reason": f"no notification rule routes {EVENT_TYPE}"}
        sent = 0
        checked = []
        for month in self.closed_months(now):
            report = self.service.report(UnbilledQuery(month.start, month.end))
            body = report_json(report)
            checked.append(f"{month.start:%Y-%m}: {len(report.rows)} row(s)")
            if not report.rows:
                continue
            key = f"{EVENT_TYPE}:{month.start:%Y-%m}:{_digest(body['items'])}"
            payload = {"type": EVENT_TYPE, "month": f"{month.start:%Y-%m}", "report": body}
            if self.notifier.send(payload, key, now):
                sent += 1
        return {"sent": sent, "months": checked}


__all__ = [
    "EVENT_TYPE",
    "JOB_NAME",
    "Notifier",
    "UnbilledNotifications",
    "UnbilledService",
    "month_spans",
    "report_json",
    "row_json",
]
