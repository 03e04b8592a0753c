"""Invoices: lines from rate cards and usage, commitments, rounding, totals and the lifecycle.

An invoice belongs to one customer and one currency and has a kind (see `InvoiceKey`): a `period`
invoice is drafted when a billing period of the customer's subscriptions ends (their cadence and
anchor, in the customer's time zone) and holds that period's usage and in-arrears fees plus the
next period's in-advance fees; an `opening` invoice is drafted when a subscription starts and holds
its first period's in-advance fees; a `correction` invoice bills late usage of a customer whose
subscriptions have ended (tallybook/billing/final_corrections.py). Every line keeps its own service
period. Its lines, per subscription (a plan change gives two, each prorated):

- `flat_fee`: the rate card's amount * covered seconds / period seconds, in whole seconds (each
  instant truncated to its second, tallybook/exact.py; exact, then rounded), in advance (at the
  start of the period it covers) or in arrears (at its end);
- `credit`: in-advance time paid for but not used after a cancel or plan change (negative): on the
  draft holding the fee, added when the end is set (an issued invoice gets a credit note instead,
  tallybook/billing/cancel_credits.py); on the invoice of the period the subscription ended in only
  for what nothing gave back yet;
- `usage`: the meter's value over the part of the period the subscription covered, for every
  subject of the customer, rated by the rate card's price (unit, package or tiers);
- `commitment`: what a rate card's or the plan's minimum/maximum spend adds or takes off;
- `correction`: usage that arrived after an earlier invoice was issued (see below).

Every line is rounded once to the currency's minor unit; totals add rounded lines. Sums of quantities
and amounts are exact whatever their number of digits (tallybook/exact.py). Issued credit notes
(tallybook/creditnotes) count as billed: what they gave back of an in-advance fee, and the units
they took off a usage line.

Lifecycle: `draft` → `issued` → `paid` | `uncollectible` | `void` (a draft can be voided too).
The `billing.invoice` job drafts the opening invoice of each subscription that started, an
invoice for each period that ended more than its customer's grace ago, refreshes period drafts on
each run (late events change drafts; in-advance lines stay as drafted) and issues drafts older than
the draft period when the customer's billing profile auto-advances (tallybook/billing/profiles.py;
the default profile takes `invoice_grace`, `auto_issue` and `auto_issue_after` from the settings).
Issuing counts usage *as of* an ingest cutoff (tallybook/billing/cutoff.py: the commit watermark
`asOfSeq` and the instant `asOf`) and stores the quantities and the cutoff, so recomputing an
issued invoice at its cutoff gives the same lines to the cent, whatever arrives or is voided later
(`verify`, tallybook/billing/verification.py). Issuing also gives the invoice its number and seller
snapshot (tallybook/billing/documents.py), in the same transaction.

Late events for an issued period are billed on the customer's latest draft as `correction` lines:
the quantity now minus the quantity billed so far (the issued line plus issued corrections),
priced as rate(new total) - rate(billed total), so tiers stay right.

Negative usage: a meter's total for a usage-priced line can be below zero (a SUM of events with
negative values). Rating refuses negative quantities, so the line bills 0 units (no charge, no
tier reached) and says so: `usageTotal` keeps the measured figure and `warnings` holds
"usage total was -5; billed as 0", in the JSON, the HTML page and previews alike. Corrections
compare billed quantities, so a total that stays negative corrects nothing.

Usage is read with grouped queries: one query per meter and distinct period (grouped by customer),
never one per customer.

Fault isolation: one customer's invoice that cannot be computed or written (a usage query that
fails for it, a price that cannot rate its quantity, a failed write) is recorded as a failed
`invoice` item of the `billing.invoice` job (GET /api/v1/jobs/failures) and skipped; every other
invoice of the run is drafted, refreshed or issued. Its subscriptions' `billed_through` does not
move, so every later run tries it again until it succeeds. The writes share one transaction with a
savepoint per invoice, so a failed statement (on PostgreSQL it aborts the transaction) is rolled
back to before that invoice only.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Connection

from tallybook.billing import final_corrections
from tallybook.billing.currency import round_money
from tallybook.billing.cutoff import IngestCutoff, take_cutoff
from tallybook.billing.documents import issue_document, store_document
from tallybook.billing.models import FlatPrice, PaymentTerm, PlanVersion, RateCard
from tallybook.billing.periods import Period
from tallybook.billing.profiles import BillingProfile, ProfileService, config_profile
from tallybook.billing.rating import apply_commitments, prorate, rate_usage
from tallybook.billing.settings import BillingSettings
from tallybook.billing.subscriptions import Subscription, SubscriptionService, subscription_from_row
from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.creditnotes.service import CreditNoteService
from tallybook.errors import DomainError
from tallybook.exact import exact, whole_seconds
from tallybook.ids import new_ulid
from tallybook.jobs.failures import FailureLog, JobRun
from tallybook.meters.models import MeterError, UsageQuery
from tallybook.meters.service import MeterService
from tallybook.store import billing as billing_store
from tallybook.store.base import SqlStore
from tallybook.store.billing import InvoiceRecord, InvoiceSearch
from tallybook.webhooks.service import OutboxMessage, WebhookService
from tallybook.webhooks.settings import INVOICE_CREATED, INVOICE_ISSUED, INVOICE_UPDATED, INVOICE_VOIDED

log = logging.getLogger(__name__)

DRAFT, ISSUED, PAID, VOID, UNCOLLECTIBLE = "draft", "issued", "paid", "void", "uncollectible"
STATUSES = (DRAFT, ISSUED, PAID, VOID, UNCOLLECTIBLE)
BILLED = (ISSUED, PAID, UNCOLLECTIBLE)  # statuses whose lines count as billed
INVOICE_EVENT_TYPES = (INVOICE_CREATED, INVOICE_ISSUED, INVOICE_UPDATED, INVOICE_VOIDED)
# Which transitions are allowed: target status -> statuses it may come from.
_TRANSITIONS = {
    ISSUED: (DRAFT,),
    PAID: (ISSUED, UNCOLLECTIBLE),
    UNCOLLECTIBLE: (ISSUED,),
    VOID: (DRAFT, ISSUED, UNCOLLECTIBLE),
}
# Customers per usage query before the query stops filtering by customer and reads them all.
_FILTER_LIMIT = 200
ZERO = Decimal(0)
INVOICE_JOB = "billing.invoice"
INVOICE_ITEM = "invoice"  # the item kind of a failed invoice (one customer, currency, period, kind)


def billable_quantity(measured: Decimal) -> tuple[Decimal, str | None]:
    """The quantity a usage line rates, and a warning when it is not the measured total.

    A negative total (a SUM of negative events) bills as 0: rating refuses negative quantities and
    a credit is not a price. Never silent: the warning goes on the line.
    """
    if measured < 0:
        return ZERO, f"usage total was {measured}; billed as 0"
    return measured, None


class InvoiceError(DomainError):
    status = 400
    code = "invalid-invoice"


class InvoiceNotFound(InvoiceError):
    status = 404
    code = "invoice-not-found"


class InvoiceConflict(InvoiceError):
    status = 409
    code = "invoice-conflict"


@dataclass(frozen=True, slots=True)
class Line:
    kind: str  # flat_fee | usage | commitment | correction
    name: str
    period: Period
    amount: Decimal  # rounded to the currency's minor unit
    subscription_id: str | None = None
    rate_card_key: str | None = None
    meter: str | None = None
    quantity: Decimal | None = None
    unit_price: Decimal | None = None
    tax_code: str | None = None
    description: str | None = None
    corrects_invoice_id: str | None = None
    detail: dict[str, Any] | None = None

    def row(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "name": self.name,
            "subscription_id": self.subscription_id,
            "rate_card_key": self.rate_card_key,
            "meter": self.meter,
            "period_start_us": to_micros(self.period.start),
            "period_end_us": to_micros(self.period.end),
            "quantity": None if self.quantity is None else str(self.quantity),
            "unit_price": None if self.unit_price is None else str(self.unit_price),
            "amount": str(self.amount),
            "tax_code": self.tax_code,
            "description": self.description,
            "corrects_invoice_id": self.corrects_invoice_id,
            "detail": self.detail,
        }


def line_from_row(row: dict[str, Any]) -> Line:
    return Line(
        kind=row["kind"],
        name=row["name"],
        period=Period(from_micros(row["period_start_us"]), from_micros(row["period_end_us"])),
        amount=Decimal(row["amount"]),
        subscription_id=row["subscription_id"],
        rate_card_key=row["rate_card_key"],
        meter=row["meter"],
        quantity=None if row["quantity"] is None else Decimal(row["quantity"]),
        unit_price=None if row["unit_price"] is None else Decimal(row["unit_price"]),
        tax_code=row["tax_code"],
        description=row["description"],
        corrects_invoice_id=row["corrects_invoice_id"],
        detail=row["detail"],
    )


@dataclass(frozen=True, slots=True)
class Totals:
    subtotal: Decimal
    commitments: Decimal
    total: Decimal


def totals_of(lines: Iterable[Line], currency: str, settings: BillingSettings) -> Totals:
    """Sums of the rounded lines, exact (however many digits), written with the currency's decimals."""
    zero = round_money(ZERO, currency, settings.rounding)
    lines = list(lines)
    with exact():
        subtotal = sum((ln.amount for ln in lines if ln.kind != "commitment"), zero)
        commitments = sum((ln.amount for ln in lines if ln.kind == "commitment"), zero)
        return Totals(subtotal, commitments, subtotal + commitments)


@dataclass(frozen=True, slots=True)
class Invoice:
    id: str
    customer_id: str
    customer: dict[str, Any]
    currency: str
    status: str
    period: Period
    lines: list[Line]
    totals: Totals
    as_of: datetime | None  # None: a preview counting everything ingested so far
    revision: int
    created_at: datetime
    updated_at: datetime
    issued_at: datetime | None = None
    paid_at: datetime | None = None
    voided_at: datetime | None = None
    uncollectible_at: datetime | None = None
    kind: str = "period"  # period | opening (see InvoiceKey)
    number: str | None = None  # given when issued (tallybook/billing/documents.py)
    seller: dict[str, Any] | None = None  # the profile's supplier, zone, locale and due date when issued
    as_of_seq: int | None = None  # with as_of, the ingest cutoff (tallybook/billing/cutoff.py)


def _opt(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


def invoice_from_record(record: InvoiceRecord) -> Invoice:
    r = record.row
    return Invoice(
        id=r["id"],
        customer_id=r["customer_id"],
        customer=dict(r["customer"]),
        currency=r["currency"],
        status=r["status"],
        period=Period(from_micros(r["period_start_us"]), from_micros(r["period_end_us"])),
        lines=[line_from_row(line) for line in record.lines],
        totals=Totals(Decimal(r["subtotal"]), Decimal(r["commitments"]), Decimal(r["total"])),
        as_of=from_micros(r["as_of_us"]),
        revision=int(r["revision"]),
        created_at=from_micros(r["created_us"]),
        updated_at=from_micros(r["updated_us"]),
        issued_at=_opt(r["issued_us"]),
        paid_at=_opt(r["paid_us"]),
        voided_at=_opt(r["voided_us"]),
        uncollectible_at=_opt(r["uncollectible_us"]),
        kind=r.get("kind") or PERIOD,
        number=r.get("number"),
        seller=r.get("seller"),
        as_of_seq=r.get("as_of_seq"),
    )


PERIOD, OPENING = "period", "opening"
CORRECTION = final_corrections.CORRECTION  # late usage of ended subscriptions (final_corrections.py)
# customer id, currency, period, kind. A `period` invoice is drafted when its billing period ends:
# that period's usage, in-arrears fees and credits, plus the in-advance fees of the next period. An
# `opening` invoice is drafted when a subscription starts: its period runs from the start to the end
# of the first billing period, and it holds that span's in-advance fees.
InvoiceKey = tuple[str, str, Period, str]
UsageKey = tuple[str, datetime, datetime]  # meter slug, from, to


@dataclass(frozen=True, slots=True)
class Segment:
    """One subscription's part of one billing period."""

    subscription: Subscription
    plan: PlanVersion
    period: Period  # the billing period
    covered: Period  # the part of it the subscription was active in
    # True: only the in-advance fees for `covered` (billed at the start of `period`); False: the
    # period's usage, in-arrears fees, credits for unused in-advance time and plan commitments.
    advance: bool = False


FEE, GIVEN_BACK = "fee", "credit"  # _Charge kinds


@dataclass(frozen=True, slots=True)
class _Charge:
    """An in-advance fee already charged (a fee line on an invoice that is not void), or what was
    given back of one (a `credit` line on such an invoice, or an issued credit note's line)."""

    invoice_id: str  # the document holding it: an invoice, or a credit note
    period: Period  # the time the fee pays for (a credit: the time given back)
    amount: Decimal  # a fee > 0, a credit < 0
    kind: str = FEE
    invoice_kind: str = "period"
    invoice_period_end: datetime | None = None
    invoice_status: str = "issued"


Charged = dict[tuple[str, str], list[_Charge]]  # (subscription, rate card) -> its charges and credits


@dataclass
class _Job:
    """One invoice to compute: its key, its segments, and (for drafts) the stored invoice."""

    key: InvoiceKey
    segments: list[Segment]
    existing: Invoice | None = None
    corrections_allowed: bool = True
    previous: list[Invoice] = field(default_factory=list)  # billed invoices to correct


@dataclass
class _Write:
    """One computed invoice to store."""

    key: InvoiceKey
    job: _Job
    lines: list[Line]
    status: str
    failed: bool = False
    profile: BillingProfile | None = None  # numbers and the seller snapshot, if issued
    as_of_seq: int | None = None


def _item_id(key: InvoiceKey) -> str:
    """The failed-item id of an invoice: customer, currency, kind and period start."""
    return f"{key[0]}|{key[1]}|{key[3]}|{format_rfc3339(key[2].start)}"


def _item_context(key: InvoiceKey, job: _Job | None) -> dict[str, Any]:
    context: dict[str, Any] = {
        "customerId": key[0],
        "currency": key[1],
        "kind": key[3],
        "periodStart": format_rfc3339(key[2].start),
        "periodEnd": format_rfc3339(key[2].end),
    }
    if job is None:
        return context
    if job.existing is not None:
        context["invoiceId"] = job.existing.id
    subscriptions = sorted({seg.subscription.id for seg in job.segments})
    if subscriptions:
        context["subscriptionIds"] = ",".join(subscriptions)
    return context


def _segment_usage_keys(segments: Iterable[Segment]) -> Iterable[UsageKey]:
    for seg in segments:
        if seg.advance:
            continue
        for rc in seg.plan.rate_cards:
            if rc.meter is not None and not isinstance(rc.price, FlatPrice):
                yield (rc.meter, seg.covered.start, seg.covered.end)


def _period_label(period: Period, tz_name: str) -> str:
    from tallybook.billing.periods import zone

    tz = zone(tz_name)
    start = period.start.astimezone(tz)
    end = period.end.astimezone(tz)
    return f"{start:%Y-%m-%d %H:%M} to {end:%Y-%m-%d %H:%M} {tz_name}"


class InvoicingService:
    def __init__(
        self,
        store: SqlStore,
        clock: Clock,
        subscriptions: SubscriptionService,
        meters: MeterService,
        webhooks: WebhookService,
        settings: BillingSettings | None = None,
        profiles: ProfileService | None = None,
        failures: FailureLog | None = None,
        credit_notes: CreditNoteService | None = None,
    ) -> None:
        self.store = store
        # Issued credit notes count in what was billed: in-advance fees given back, usage taken off.
        self.credit_notes = credit_notes
        # Called in the transaction that voids an invoice (its credit notes are voided with it).
        self.on_void: list[Callable[[Connection, str, datetime], Any]] = []
        # Where the scheduled run records invoices it skipped (GET /api/v1/jobs/failures).
        self.failures = failures or FailureLog(store, clock)
        self.clock = clock
        self.subscriptions = subscriptions
        self.meters = meters
        self.webhooks = webhooks
        self.settings = settings or BillingSettings()
        # Grace and approval per customer; without a profile service every customer gets the
        # profile the settings describe (invoice_grace, auto_issue, auto_issue_after).
        self.profiles = profiles
        self._plans: dict[tuple[str, int], PlanVersion] = {}

    # -- reading -------------------------------------------------------------------------------------
    def get(self, invoice_id: str) -> Invoice:
        with self.store.read() as conn:
            record = billing_store.get_invoice(conn, invoice_id)
        if record is None:
            raise InvoiceNotFound(f"no invoice has the id {invoice_id!r}")
        return invoice_from_record(record)

    def list_invoices(
        self,
        customer: str | None = None,
        statuses: Sequence[str] | None = None,
        limit: int = 100,
        offset: int = 0,
    ) -> tuple[int, list[Invoice]]:
        customer_ids = None
        if customer is not None:
            customer_ids = (self.subscriptions.customer_id(customer),)
        for status in statuses or ():
            if status not in STATUSES:
                raise InvoiceError(f"status must be one of {', '.join(STATUSES)}, got {status!r}")
        search = InvoiceSearch(
            customer_ids=customer_ids,
            statuses=tuple(statuses) if statuses else None,
            limit=limit,
            offset=offset,
        )
        with self.store.read() as conn:
            total, records = billing_store.search_invoices(conn, search)
        return total, [invoice_from_record(r) for r in records]

    # -- the scheduled run ---------------------------------------------------------------------------
    def run(self, now: datetime | None = None) -> dict[str, Any]:
        """Draft invoices for periods that ended (plus grace), refresh drafts, auto-issue.

        Grace and approval come from each customer's billing profile: a period is due once it ended
        `profile.grace` ago; a draft is issued when `profile.auto_advance` and it is
        `profile.draft_period` old. Profiles are read once for all customers concerned.

        An invoice that fails is recorded and skipped (see the module docs); the result then has
        `failedItems`.
        """
        now = now or self.clock.now()
        with self.failures.run(INVOICE_JOB) as run:
            counts = self._run(now, run)
        return run.outcome(counts)

    def _run(self, now: datetime, run: JobRun) -> dict[str, Any]:
        self._plans.clear()
        fallback = config_profile(self.settings)
        shortest = fallback.grace if self.profiles is None else self.profiles.shortest_grace()
        with self.store.read() as conn:
            # Every subscription that may be due for some profile; each is cut at its own grace below.
            due_rows = billing_store.unbilled_subscriptions(conn, to_micros(now - shortest))
            opening_rows = billing_store.unopened_subscriptions(conn, to_micros(now))
            _, drafts = billing_store.search_invoices(conn, InvoiceSearch(statuses=(DRAFT,), newest_first=False))
            latest_ingest_us = billing_store.latest_ingest_us(conn)
        concerned = [r["customer_id"] for r in due_rows] + [r["customer_id"] for r in opening_rows]
        concerned += [r.row["customer_id"] for r in drafts]
        profile_of: dict[str, BillingProfile] = (
            {cid: fallback for cid in concerned} if self.profiles is None else self.profiles.for_customers(concerned)
        )

        def issue_due(customer_id: str, created_at: datetime) -> bool:
            profile = profile_of.get(customer_id, fallback)
            return profile.auto_advance and created_at + profile.draft_period <= now

        due_keys: dict[InvoiceKey, None] = {}
        marks: list[tuple[str, int]] = []
        keys_of_subscription: dict[str, list[InvoiceKey]] = {}
        for row in due_rows:
            with run.item("subscription", str(row["id"]), customerId=row["customer_id"]):
                sub = subscription_from_row(row)
                cutoff = now - profile_of.get(sub.customer_id, fallback).grace
                begin = max(sub.active_from, sub.billed_through or sub.active_from)
                stop = cutoff if sub.active_to is None else min(cutoff, sub.active_to)
                last_end: datetime | None = None
                sub_keys: list[InvoiceKey] = []
                for period in sub.schedule.periods(begin, stop):
                    if period.end > cutoff:
                        break
                    if sub.covered(period) is not None:
                        sub_keys.append((sub.customer_id, sub.currency, period, PERIOD))
                    last_end = period.end
                due_keys.update(dict.fromkeys(sub_keys))
                keys_of_subscription[sub.id] = sub_keys
                if last_end is not None:
                    marks.append((sub.id, to_micros(last_end)))
        for row in opening_rows:
            with run.item("subscription", str(row["id"]), customerId=row["customer_id"]):
                due_keys[opening_key(subscription_from_row(row))] = None
        failed: dict[InvoiceKey, BaseException] = {}
        due = self._segments_for(list(due_keys), failed)
        with self.store.read() as conn:
            existing = billing_store.existing_invoice_keys(conn, (to_micros(k[2].end) for k in due_keys))
        jobs: dict[InvoiceKey, _Job] = {}
        for key in due_keys:
            segments = due.get(key)
            found = existing.get((key[0], key[1], to_micros(key[2].start), to_micros(key[2].end), key[3]))
            if found is None:
                if segments or key in failed:
                    jobs[key] = _Job(key, segments or [], corrections_allowed=key[3] == PERIOD)
            elif found["status"] != DRAFT and segments:
                log.warning(
                    "billing period already invoiced; segment left out",
                    extra={"invoice_id": found["id"], "customer_id": key[0]},
                )
        # A draft needs recomputing when events arrived since it was computed (late usage can only
        # come from events), when it is due to be issued, or when a new segment joins it.
        all_drafts = [invoice_from_record(record) for record in drafts]
        draft_invoices = []
        for draft in all_drafts:
            if draft.kind == CORRECTION:
                continue  # final corrections are planned below
            key = (draft.customer_id, draft.currency, draft.period, draft.kind)
            assert draft.as_of is not None
            # An opening invoice reads no usage: new events cannot change it.
            stale = draft.kind == PERIOD and latest_ingest_us is not None and latest_ingest_us > to_micros(draft.as_of)
            joined = key in due and draft.kind == PERIOD  # an opening invoice's segment never changes
            if stale or issue_due(draft.customer_id, draft.created_at) or joined:
                draft_invoices.append(draft)
        if draft_invoices:
            segments_by_key = self._segments_for([_key_of(d) for d in draft_invoices], failed)
            for draft in draft_invoices:
                key = _key_of(draft)
                jobs[key] = _Job(
                    key, segments_by_key.get(key, []), existing=draft, corrections_allowed=draft.kind == PERIOD
                )
        self._attach_previous(list(jobs.values()), now)

        def graces(customer_ids: Sequence[str]) -> dict[str, timedelta]:
            missing = [cid for cid in customer_ids if cid not in profile_of]
            if missing and self.profiles is not None:
                profile_of.update(self.profiles.for_customers(missing))
            return {cid: profile_of.get(cid, fallback).grace for cid in customer_ids}

        finals = {job.key: job for job in final_corrections.correction_jobs(self, now, all_drafts, graces)}
        jobs.update(finals)
        # Usage is counted at a commit watermark too, so issued invoices reproduce exactly.
        ingest_seq = take_cutoff(self.store, self.clock).seq if jobs else None
        computed = self._compute(
            [j for k, j in jobs.items() if k not in failed], as_of=now, failed=failed, through_seq=ingest_seq
        )
        for key, exc in failed.items():
            run.fail(INVOICE_ITEM, _item_id(key), exc, **_item_context(key, jobs.get(key)))
        for key in computed:
            run.ok(INVOICE_ITEM, _item_id(key))
        # Late usage of ended subscriptions: what went up stays on the correction invoice, what went
        # down becomes credit notes; a correction draft left with nothing to bill is voided.
        credit_requests, emptied = final_corrections.settle(self, computed, finals, run)
        to_issue = [
            key
            for key, job in jobs.items()
            if key in computed and issue_due(key[0], job.existing.created_at if job.existing else now)
        ]
        self._lock_meters(computed[k] for k in to_issue)
        issuing = set(to_issue)
        writes = [
            _Write(
                key,
                jobs[key],
                computed[key],
                ISSUED if key in issuing else DRAFT,
                profile=profile_of.get(key[0], fallback),
                as_of_seq=ingest_seq,
            )
            for key in computed
        ]

        def billed_through(written_failed: set[InvoiceKey]) -> list[tuple[str, int]]:
            # A subscription whose invoice failed keeps its billed_through: the next run tries again.
            return [
                (sid, end)
                for sid, end in marks
                if not any(k in failed or k in written_failed for k in keys_of_subscription.get(sid, ()))
            ]

        counts = self._write(writes, now, run, billed_through)
        issued_notes = final_corrections.issue_credit_notes(self, credit_requests, run)
        if issued_notes:
            counts["creditNotes"] = issued_notes
        for draft in emptied:
            with run.item(INVOICE_ITEM, _item_id(_key_of(draft)), invoiceId=draft.id):
                self.void(draft.id)
        return {**counts, "computed": len(jobs), "drafts": len(drafts)}

    def _write(
        self,
        writes: list[_Write],
        now: datetime,
        run: JobRun,
        billed_through: Callable[[set[InvoiceKey]], list[tuple[str, int]]],
    ) -> dict[str, int]:
        """Store the run's invoices (and move the subscriptions' billed_through) in one transaction.
        If a write fails, the invoices are stored again with a savepoint each, so only the invoices
        whose writes fail are left out (and recorded)."""
        with self.store.write() as conn:
            destinations = {t: self.webhooks.destinations(conn, t) for t in INVOICE_EVENT_TYPES}
            customers = billing_store.customer_rows(conn, [w.key[0] for w in writes])
            try:
                with conn.begin_nested():
                    counts = {"created": 0, "updated": 0, "issued": 0}
                    records = [self._write_one(conn, w, customers, destinations, now, counts) for w in writes]
                    billing_store.insert_invoices(conn, [r for r in records if r is not None])
                billing_store.set_billed_through(conn, billed_through(set()))
                return counts
            except Exception:
                log.warning("storing the invoices in one batch failed; storing them one by one", exc_info=True)
            counts = {"created": 0, "updated": 0, "issued": 0}
            for w in writes:
                with run.item(INVOICE_ITEM, _item_id(w.key), **_item_context(w.key, w.job)) as outcome:
                    partial = {"created": 0, "updated": 0, "issued": 0}
                    with conn.begin_nested():
                        record = self._write_one(conn, w, customers, destinations, now, partial)
                        if record is not None:
                            billing_store.insert_invoices(conn, [record])
                    for name, value in partial.items():
                        counts[name] += value
                w.failed = outcome.failed
            billing_store.set_billed_through(conn, billed_through({w.key for w in writes if w.failed}))
            return counts

    def _write_one(
        self,
        conn: Connection,
        w: _Write,
        customers: dict[str, dict[str, Any]],
        destinations: dict[str, Any],
        now: datetime,
        counts: dict[str, int],
    ) -> InvoiceRecord | None:
        """Emit one invoice's events and update its draft; a new invoice's record is returned for
        the caller to insert (in a batch)."""
        key, job, lines, status = w.key, w.job, w.lines, w.status
        snapshot = _customer_snapshot(customers.get(key[0]), key[0])
        if job.existing is None:
            invoice = replace(self._new_invoice(key, lines, snapshot, now, status), as_of_seq=w.as_of_seq)
            counts["created"] += 1
            self._emit(conn, destinations, INVOICE_CREATED, replace(invoice, status=DRAFT, issued_at=None), now)
            if status == ISSUED:
                invoice = self._issue_document(conn, invoice, w.profile, now)
                counts["issued"] += 1
                self._emit(conn, destinations, INVOICE_ISSUED, invoice, now)
            return _record(invoice)
        draft = job.existing
        if status == DRAFT and _same_lines(draft.lines, lines):
            return None
        changed = replace(self._updated(draft, lines, snapshot, now, status), as_of_seq=w.as_of_seq)
        if not billing_store.update_invoice(
            conn, draft.id, draft.revision, _values(changed), [ln.row() for ln in lines]
        ):
            return None  # changed meanwhile (approved or voided): next run sees it
        if status == ISSUED:
            # Numbered only once the update took: a draft changed meanwhile takes no number.
            changed = self._issue_document(conn, changed, w.profile, now)
            store_document(conn, changed.id, changed.number, changed.seller)
            counts["issued"] += 1
            self._emit(conn, destinations, INVOICE_ISSUED, changed, now)
        else:
            counts["updated"] += 1
            self._emit(conn, destinations, INVOICE_UPDATED, changed, now)
        return None

    # -- transitions -----------------------------------------------------------------------------------
    def _profile_of(self, customer_id: str) -> BillingProfile:
        if self.profiles is None:
            return config_profile(self.settings)
        return self.profiles.for_customers([customer_id])[customer_id]

    def _issue_document(
        self, conn: Connection, invoice: Invoice, profile: BillingProfile | None, now: datetime
    ) -> Invoice:
        """The invoice with its number and seller snapshot, taken in the issuing transaction."""
        number, seller = issue_document(conn, profile or config_profile(self.settings), now)
        return replace(invoice, number=number, seller=seller)

    def issue(self, invoice_id: str) -> Invoice:
        """Freeze a draft: count usage at an ingest cutoff taken now, store the quantities and the
        cutoff, give it its number, lock the meters, notify."""
        draft = self.get(invoice_id)
        self._check_transition(draft, ISSUED)
        return self._recount(draft, ISSUED)

    def snapshot_quantities(self, invoice_id: str) -> Invoice:
        """OpenMeter's snapshot-quantities: count a draft's usage now, at a fresh ingest cutoff, and
        store it (the job would on its next run once events arrived). It stays a draft; issuing
        counts again, at the issue's own cutoff."""
        draft = self.get(invoice_id)
        if draft.status != DRAFT:
            raise InvoiceConflict(
                f"invoice {draft.id} is {draft.status}; only draft invoices can snapshot quantities (an issued "
                "invoice keeps the quantities it was issued with: see its verify action)",
                invoiceStatus=draft.status,
            )
        return self._recount(draft, DRAFT)

    def _recount(self, draft: Invoice, status: str) -> Invoice:
        profile = self._profile_of(draft.customer_id) if status == ISSUED else None
        cutoff = take_cutoff(self.store, self.clock)
        now = cutoff.at
        self._plans.clear()
        job = self._draft_job(draft, now)
        lines = self._compute([job], as_of=now, through_seq=cutoff.seq)[job.key]
        if draft.kind == CORRECTION:
            # What went down since the last refresh is for credit notes (the next run issues them).
            lines, _ = final_corrections.split(lines, *final_corrections.credit_targets(self, job.previous))
            if not lines:
                raise InvoiceConflict(
                    f"correction invoice {draft.id} has nothing left to bill: usage went down since it was drafted, "
                    "so the next billing run credits it with credit notes and voids this draft"
                )
        if status == ISSUED:
            self._lock_meters([lines])
        event_type = INVOICE_ISSUED if status == ISSUED else INVOICE_UPDATED
        with self.store.write() as conn:
            customers = billing_store.customer_rows(conn, [draft.customer_id])
            snapshot = _customer_snapshot(customers.get(draft.customer_id), draft.customer_id)
            changed = replace(self._updated(draft, lines, snapshot, now, status), as_of_seq=cutoff.seq)
            if status == ISSUED:
                changed = self._issue_document(conn, changed, profile, now)
            if not billing_store.update_invoice(
                conn, draft.id, draft.revision, _values(changed), [ln.row() for ln in lines]
            ):
                raise InvoiceConflict(f"invoice {draft.id} changed while its usage was being counted; retry")
            self._emit(conn, {event_type: self.webhooks.destinations(conn, event_type)}, event_type, changed, now)
        return changed

    def refresh(self, invoice_id: str) -> Invoice:
        """Recompute a period or opening draft now and store it if a line changed (`invoice.updated`);
        e.g. right after a cancel, so the credit for its unused in-advance time shows at once."""
        now = self.clock.now()
        draft = self.get(invoice_id)
        if draft.status != DRAFT or draft.kind == CORRECTION:
            return draft
        self._plans.clear()
        job = self._draft_job(draft, now)
        lines = self._compute([job], as_of=now)[job.key]
        if _same_lines(draft.lines, lines):
            return draft
        with self.store.write() as conn:
            customers = billing_store.customer_rows(conn, [draft.customer_id])
            snapshot = _customer_snapshot(customers.get(draft.customer_id), draft.customer_id)
            changed = self._updated(draft, lines, snapshot, now, DRAFT)
            if not billing_store.update_invoice(
                conn, draft.id, draft.revision, _values(changed), [ln.row() for ln in lines]
            ):
                return self.get(invoice_id)  # changed meanwhile (issued, voided, refreshed): that stands
            destinations = {INVOICE_UPDATED: self.webhooks.destinations(conn, INVOICE_UPDATED)}
            self._emit(conn, destinations, INVOICE_UPDATED, changed, now)
        return changed

    def _draft_job(self, draft: Invoice, now: datetime) -> _Job:
        """The job that recomputes a draft now: its segments and the invoices it corrects."""
        key = _key_of(draft)
        if draft.kind == CORRECTION:
            found = final_corrections.correction_jobs(self, now, [draft], None, [draft.customer_id])
            return next((j for j in found if j.key == key), _Job(key, [], existing=draft, corrections_allowed=False))
        segments = self._segments_for([key]).get(key, [])
        job = _Job(key, segments, existing=draft, corrections_allowed=draft.kind == PERIOD)
        self._attach_previous([job], now)
        return job

    def void(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, VOID, INVOICE_VOIDED)

    def mark_paid(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, PAID, INVOICE_UPDATED)

    def mark_uncollectible(self, invoice_id: str) -> Invoice:
        return self._set_status(invoice_id, UNCOLLECTIBLE, INVOICE_UPDATED)

    def _check_transition(self, invoice: Invoice, target: str) -> None:
        if invoice.status not in _TRANSITIONS[target]:
            allowed = " or ".join(_TRANSITIONS[target])
            raise InvoiceConflict(
                f"invoice {invoice.id} is {invoice.status}; only {allowed} invoices can become {target}",
                invoiceStatus=invoice.status,
            )

    def _set_status(self, invoice_id: str, target: str, event_type: str) -> Invoice:
        now = self.clock.now()
        with self.store.write() as conn:
            record = billing_store.get_invoice(conn, invoice_id, for_update=True)
            if record is None:
                raise InvoiceNotFound(f"no invoice has the id {invoice_id!r}")
            invoice = invoice_from_record(record)
            self._check_transition(invoice, target)
            changed = replace(invoice, status=target, updated_at=now, revision=invoice.revision + 1)
            if target == PAID:
                changed = replace(changed, paid_at=now)
            elif target == VOID:
                changed = replace(changed, voided_at=now)
            else:
                changed = replace(changed, uncollectible_at=now)
            if not billing_store.update_invoice(conn, invoice.id, invoice.revision, _values(changed)):
                raise InvoiceConflict(f"invoice {invoice.id} changed meanwhile; retry")
            if target == VOID:
                for hook in self.on_void:
                    hook(conn, invoice.id, now)
            self._emit(conn, {event_type: self.webhooks.destinations(conn, event_type)}, event_type, changed, now)
        return changed

    # -- previews and reproducibility ----------------------------------------------------------------------
    def preview(self, customer: str, at: datetime | None = None) -> list[Invoice]:
        """What the customer's invoices for the period holding `at` (default now) would say now."""
        at = at or self.clock.now()
        cust = self.subscriptions.customer(customer)
        self._plans.clear()
        subs = self.subscriptions.of_customers([cust.id], at, at + timedelta(microseconds=1))
        keys: list[InvoiceKey] = []
        for sub in subs:
            period = sub.schedule.period_containing(at)
            if sub.covered(period) is not None and (cust.id, sub.currency, period, PERIOD) not in keys:
                keys.append((cust.id, sub.currency, period, PERIOD))
        segments = self._segments_for(keys)
        jobs = [_Job(key, segments.get(key, [])) for key in keys]
        self._attach_previous(jobs, at)
        now = self.clock.now()
        # Late usage of ended subscriptions: the final correction invoice as it would be now.
        with self.store.read() as conn:
            _, records = billing_store.search_invoices(
                conn, InvoiceSearch(customer_ids=(cust.id,), statuses=(DRAFT,), newest_first=False)
            )
        finals = final_corrections.correction_jobs(
            self, now, [invoice_from_record(r) for r in records], None, [cust.id]
        )
        jobs += finals
        keys += [job.key for job in finals]
        computed = self._compute(jobs, as_of=None)
        snapshot = _customer_snapshot(None, cust.id, cust)
        out = []
        for key in keys:
            lines = computed[key]
            if key[3] == CORRECTION and not lines:
                continue  # no late usage pending
            out.append(
                Invoice(
                    id="",
                    customer_id=cust.id,
                    customer=snapshot,
                    currency=key[1],
                    status="preview",
                    period=key[2],
                    lines=lines,
                    totals=totals_of(lines, key[1], self.settings),
                    as_of=None,
                    revision=0,
                    created_at=now,
                    updated_at=now,
                    kind=key[3],
                )
            )
        return out

    def recompute(self, invoice_id: str, at: IngestCutoff | None = None) -> list[Line]:
        """The invoice's lines computed again from the events, counting usage at its ingest cutoff
        (`asOf` and `asOfSeq`), or at `at` (e.g. a cutoff taken now, to see what changed since).

        For an issued invoice and its own cutoff this equals its stored lines, to the cent,
        whatever arrived or was voided since. Correction lines are recomputed from the quantity
        they say was billed before.
        """
        invoice = self.get(invoice_id)
        as_of, through_seq = (invoice.as_of, invoice.as_of_seq) if at is None else (at.at, at.seq)
        self._plans.clear()
        key = _key_of(invoice)
        segments = self._segments_for([key]).get(key, [])
        job = _Job(key, segments, existing=invoice, corrections_allowed=False)
        fixed = [ln for ln in invoice.lines if ln.kind == "correction"]
        lines = self._compute([job], as_of=as_of, through_seq=through_seq)[key]
        if not fixed:
            return lines
        corrections = self._recompute_corrections(invoice, fixed, as_of, through_seq)
        return lines + corrections

    # -- computing ---------------------------------------------------------------------------------------
    def _plan(self, sub: Subscription) -> PlanVersion:
        key = (sub.plan_key, sub.plan_version)
        plan = self._plans.get(key)
        if plan is None:
            plan = self.subscriptions.plan_of(sub)
            self._plans[key] = plan
        return plan

    def _segments_for(
        self, keys: Sequence[InvoiceKey], failed: dict[InvoiceKey, BaseException] | None = None
    ) -> dict[InvoiceKey, list[Segment]]:
        """Each key's subscription segments, from one read of the subscriptions involved.

        With `failed`, a subscription that cannot be read (its plan is gone, its row is broken)
        fails the keys of its customer and currency there instead of raising: an invoice missing
        one subscription's lines would be wrong, so it is not drafted at all.
        """
        if not keys:
            return {}
        by_customer: dict[tuple[str, str], list[InvoiceKey]] = defaultdict(list)
        for k in dict.fromkeys(keys):
            by_customer[(k[0], k[1])].append(k)
        start = min(k[2].start for k in keys)
        # A period invoice also carries the next period's in-advance fees, and a plan change that
        # takes effect exactly at a period end puts the new plan's first fee on it.
        end = max(k[2].end for k in keys) + timedelta(microseconds=1)
        customer_ids = sorted({k[0] for k in keys})
        with self.store.read() as conn:
            if len(customer_ids) <= _FILTER_LIMIT:
                rows = billing_store.list_subscriptions(
                    conn, customer_ids, overlapping=(to_micros(start), to_micros(end))
                )
            else:
                rows = billing_store.list_subscriptions(conn, None, overlapping=(to_micros(start), to_micros(end)))
        customers = set(customer_ids)
        out: dict[InvoiceKey, list[Segment]] = defaultdict(list)
        for row in rows:
            if row["customer_id"] not in customers:
                continue
            try:
                sub = subscription_from_row(row)
                for key in by_customer.get((sub.customer_id, sub.currency), ()):
                    segments = self._key_segments(sub, key)
                    if segments:
                        out[key].extend(segments)
            except Exception as exc:
                if failed is None:
                    raise
                for key in by_customer.get((row["customer_id"], row["currency"]), ()):
                    failed.setdefault(key, exc)
        return out

    def _key_segments(self, sub: Subscription, key: InvoiceKey) -> list[Segment]:
        """What one subscription puts on the invoice with this key.

        In-advance fees for a billing period are billed at its start: on the subscription's opening
        invoice for its first period, on the invoice of the period that just ended for the later
        ones. A plan change's new subscription has no opening invoice: its first fee goes on the
        invoice of the period ending at the change (a change at a period boundary) or, for a
        change inside a period, on that period's invoice next to the old plan's credit.
        """
        _, _, period, kind = key
        if kind == CORRECTION:
            return []  # a final correction bills late usage only (final_corrections.py)
        schedule = sub.schedule
        out: list[Segment] = []
        if kind == OPENING:
            first = schedule.period_containing(sub.active_from)
            covered = sub.covered(first)
            if sub.previous_id is None and sub.active_from == period.start and first.end == period.end and covered:
                plan = self._plan(sub)
                if any(_billed_in_advance(rc) for rc in plan.rate_cards):  # else nothing to open with
                    out.append(Segment(sub, plan, first, covered, advance=True))
            return out
        covered = sub.covered(period)
        if covered is not None and schedule.period_containing(period.start) == period:
            plan = self._plan(sub)
            out.append(Segment(sub, plan, period, covered))
            if sub.previous_id is not None and period.start < sub.active_from:
                out.append(Segment(sub, plan, period, covered, advance=True))
        following = schedule.period_containing(period.end)
        next_covered = sub.covered(following)
        if following.start == period.end and next_covered is not None:
            started_before = sub.active_from < following.start
            changed_at_boundary = sub.active_from == following.start and sub.previous_id is not None
            if started_before or changed_at_boundary:
                out.append(Segment(sub, self._plan(sub), following, next_covered, advance=True))
        return out

    def _attach_previous(self, jobs: list[_Job], now: datetime) -> None:
        """Give each customer's latest draft the billed invoices whose late usage it must carry."""
        candidates = [j for j in jobs if j.corrections_allowed and j.key[3] == PERIOD]
        if not candidates:
            return
        earliest = min(j.key[2].start for j in candidates) - self.settings.correction_lookback
        with self.store.read() as conn:
            _, billed = billing_store.search_invoices(
                conn, InvoiceSearch(statuses=BILLED, period_end_from_us=to_micros(earliest), newest_first=False)
            )
            _, other_drafts = billing_store.search_invoices(
                conn, InvoiceSearch(statuses=(DRAFT,), period_end_from_us=to_micros(earliest)), with_lines=False
            )
        latest: dict[tuple[str, str], datetime] = {}
        # A customer's open final correction invoice carries its late usage until it is issued.
        with_correction = {
            (r.row["customer_id"], r.row["currency"]) for r in other_drafts if r.row.get("kind") == CORRECTION
        }
        for record in other_drafts:
            r = record.row
            if (r.get("kind") or PERIOD) != PERIOD:
                continue
            ckey = (r["customer_id"], r["currency"])
            latest[ckey] = max(latest.get(ckey, from_micros(r["period_end_us"])), from_micros(r["period_end_us"]))
        for job in candidates:
            ckey = (job.key[0], job.key[1])
            latest[ckey] = max(latest.get(ckey, job.key[2].end), job.key[2].end)
        by_customer: dict[tuple[str, str], list[Invoice]] = defaultdict(list)
        for record in billed:
            inv = invoice_from_record(record)
            by_customer[(inv.customer_id, inv.currency)].append(inv)
        for job in candidates:
            ckey = (job.key[0], job.key[1])
            if latest[ckey] != job.key[2].end or ckey in with_correction:
                continue  # a later draft of this customer (or its correction invoice) carries them
            job.previous = [inv for inv in by_customer.get(ckey, []) if inv.period.end <= job.key[2].start]

    def _usage(
        self,
        wanted: dict[UsageKey, set[str]],
        as_of: datetime | None,
        failed: dict[tuple[UsageKey, str], BaseException] | None = None,
        through_seq: int | None = None,
    ) -> dict[UsageKey, dict[str, Decimal]]:
        """One grouped query per (meter, from, to): {key: {customer id: quantity}}.

        With `failed`, a grouped query that fails is asked again customer by customer, so only the
        customers whose usage cannot be read fail (into `failed`, by usage key and customer id);
        the others are billed. Without it the error is raised.
        """
        out: dict[UsageKey, dict[str, Decimal]] = {}
        for (meter, start, end), customer_ids in wanted.items():
            ids: tuple[str, ...] = ()
            if len(customer_ids) <= _FILTER_LIMIT:
                # A deleted customer's subjects are freed: it has no usage to read (and the meter
                # query refuses unknown customers), so only live ones are named.
                with self.store.read() as conn:
                    ids = tuple(sorted(billing_store.live_customer_ids(conn, list(customer_ids))))
                if not ids:
                    out[(meter, start, end)] = {}
                    continue
            query = UsageQuery(
                meter=meter,
                from_=start,
                to=end,
                customer_ids=ids,
                group_by=("customer_id",),
                as_of=as_of,
                through_seq=through_seq,
            )
            try:
                rows = self._query(query)
            except Exception as exc:
                if failed is None:
                    raise
                log.warning(
                    "grouped usage query failed; reading its customers one by one",
                    extra={"meter": meter, "error": f"{type(exc).__name__}: {exc}"},
                )
                out[(meter, start, end)] = self._usage_one_by_one(
                    (meter, start, end), query, sorted(customer_ids), failed
                )
                continue
            out[(meter, start, end)] = {r.customer_id: r.value for r in rows if r.customer_id is not None}
        return out

    def _query(self, query: UsageQuery) -> Any:
        try:
            return self.meters.query(query)
        except MeterError as exc:
            raise InvoiceError(f"rate card meter {query.meter!r}: {exc.detail}") from None

    def _usage_one_by_one(
        self,
        ukey: UsageKey,
        grouped: UsageQuery,
        customer_ids: list[str],
        failed: dict[tuple[UsageKey, str], BaseException],
    ) -> dict[str, Decimal]:
        with self.store.read() as conn:
            live = billing_store.live_customer_ids(conn, customer_ids)
        found: dict[str, Decimal] = {}
        for customer_id in customer_ids:
            if customer_id not in live:
                continue
            try:
                rows = self._query(replace(grouped, customer_ids=(customer_id,)))
            except Exception as exc:
                failed[(ukey, customer_id)] = exc
                continue
            found.update({r.customer_id: r.value for r in rows if r.customer_id == customer_id})
        return found

    def _compute(
        self,
        jobs: list[_Job],
        as_of: datetime | None,
        failed: dict[InvoiceKey, BaseException] | None = None,
        through_seq: int | None = None,
    ) -> dict[InvoiceKey, list[Line]]:
        """Each job's lines. With `failed`, a job that cannot be computed goes there (by key) and is
        left out of the answer instead of raising; the other jobs are computed."""
        with exact():  # quantities and amounts of any size add up without being cut
            return self._compute_exactly(jobs, as_of, failed, through_seq)

    def _compute_exactly(
        self,
        jobs: list[_Job],
        as_of: datetime | None,
        failed: dict[InvoiceKey, BaseException] | None,
        through_seq: int | None,
    ) -> dict[InvoiceKey, list[Line]]:
        wanted: dict[UsageKey, set[str]] = defaultdict(set)
        needs: dict[InvoiceKey, set[UsageKey]] = defaultdict(set)
        for job in jobs:
            needs[job.key].update(_segment_usage_keys(job.segments))
            for inv in job.previous:
                for ln in inv.lines:
                    if ln.kind == "usage" and ln.meter is not None:
                        needs[job.key].add((ln.meter, ln.period.start, ln.period.end))
            for ukey in needs[job.key]:
                wanted[ukey].add(job.key[0])
        unread: dict[tuple[UsageKey, str], BaseException] | None = None if failed is None else {}
        usage = self._usage(wanted, as_of, unread, through_seq=through_seq)
        billed_so_far = self._billed_quantities([inv for job in jobs for inv in job.previous])
        charged = self._charged_in_advance(jobs)
        out: dict[InvoiceKey, list[Line]] = {}
        for job in jobs:
            if failed is None:
                out[job.key] = self._job_lines(job, usage, billed_so_far, charged, as_of)
                continue
            missing = [unread[(u, job.key[0])] for u in needs[job.key] if unread and (u, job.key[0]) in unread]
            if missing:
                failed[job.key] = missing[0]  # billing it without that usage would be wrong
                continue
            try:
                out[job.key] = self._job_lines(job, usage, billed_so_far, charged, as_of)
            except Exception as exc:
                failed[job.key] = exc
        return out

    def _job_lines(
        self,
        job: _Job,
        usage: dict[UsageKey, dict[str, Decimal]],
        billed_so_far: dict[tuple[str, str | None, str | None], Decimal],
        charged: Charged,
        as_of: datetime | None,
    ) -> list[Line]:
        invoice_id = job.existing.id if job.existing is not None else None
        # In-advance lines are fixed once drafted: a later cancel is a credit (on this draft, or
        # a credit note once it is issued), never a change to the charge (which may have been sent).
        frozen = [ln for ln in job.existing.lines if _in_advance(ln)] if job.existing is not None else []
        # Recomputing an issued invoice: its credits stay as issued (later ones are credit notes).
        kept_credits = None
        if job.existing is not None and job.existing.status != DRAFT:
            kept_credits = [ln for ln in job.existing.lines if ln.kind == "credit"]
        lines: list[Line] = []
        late: list[Line] = []
        for seg in sorted(job.segments, key=lambda s: (s.advance, s.covered.start, s.subscription.id)):
            kept = [ln for ln in frozen if seg.advance and _pays_for(ln, seg)]
            if kept:
                lines.extend(kept)
                frozen = [ln for ln in frozen if ln not in kept]
                lines.extend(self._unused_here(seg, kept, charged, invoice_id, kept_credits))
                continue
            lines.extend(self._segment_lines(job.key[0], seg, usage, charged, invoice_id, late, kept_credits))
        lines.extend(frozen)
        if job.existing is None:
            lines.extend(late)  # a draft keeps them among its frozen in-advance lines
        lines.extend(self._corrections(job, usage, billed_so_far, as_of))
        return lines

    def _charged_in_advance(self, jobs: Sequence[_Job]) -> Charged:
        """The in-advance charges and credits of the subscriptions these jobs bill (see charges_of)."""
        return self.charges_of(sorted({seg.subscription.id for job in jobs for seg in job.segments}))

    def charges_of(self, subscription_ids: Sequence[str]) -> Charged:
        """(subscription, rate card) -> its in-advance fees charged so far (fee lines on invoices that
        are not void) and what was given back of them (negative: `credit` lines on such invoices and
        issued credit notes), each with the document holding it and the time it covers."""
        out: Charged = defaultdict(list)
        if not subscription_ids:
            return out
        with self.store.read() as conn:
            rows = billing_store.in_advance_fee_lines(conn, subscription_ids, kinds=("flat_fee", "credit"))
        for row in rows:
            if (row["detail"] or {}).get("paymentTerm") != "in_advance" or row["rate_card_key"] is None:
                continue
            charge = _Charge(
                invoice_id=row["invoice_id"],
                period=Period(from_micros(row["period_start_us"]), from_micros(row["period_end_us"])),
                amount=Decimal(row["amount"]),
                kind=FEE if row["kind"] == "flat_fee" else GIVEN_BACK,
                invoice_kind=row["invoice_kind"] or PERIOD,
                invoice_period_end=from_micros(row["invoice_period_end_us"]),
                invoice_status=row["invoice_status"],
            )
            out[(row["subscription_id"], row["rate_card_key"])].append(charge)
        if self.credit_notes is not None:
            for credit in self.credit_notes.fee_credits(subscription_ids):
                key = (credit.subscription_id, credit.rate_card_key)
                out[key].append(_Charge(credit.invoice_id, credit.period, -credit.amount, kind=GIVEN_BACK))
        return out

    def _round(self, amount: Decimal, currency: str) -> Decimal:
        return round_money(amount, currency, self.settings.rounding)

    def _segment_lines(
        self,
        customer_id: str,
        seg: Segment,
        usage: dict[UsageKey, dict[str, Decimal]],
        charged: Charged,
        invoice_id: str | None,
        late: list[Line],
        kept_credits: list[Line] | None = None,
    ) -> list[Line]:
        """An advance segment gives its in-advance fees; any other its usage, in-arrears fees, credits
        for in-advance time not used and the plan commitment. An in-advance fee that the previous
        period's invoice, drafted before in-advance timing, did not bill goes to `late` (the caller
        puts those lines last, where a refreshed draft keeps its in-advance lines)."""
        plan, sub, cur = seg.plan, seg.subscription, seg.subscription.currency
        lines: list[Line] = []
        advance_used = ZERO  # in-advance fees for this part of the period, for the time used
        for rc in plan.rate_cards:
            tax = rc.tax_code or self.settings.default_tax_code
            base = {
                "name": rc.name,
                "period": seg.covered,
                "subscription_id": sub.id,
                "rate_card_key": rc.key,
                "tax_code": tax,
            }
            if isinstance(rc.price, FlatPrice):
                raw, detail = flat_share(rc.price, seg.covered, seg.period)
                in_advance = rc.price.payment_term is PaymentTerm.IN_ADVANCE
                if in_advance and not seg.advance:
                    used = self._round(apply_commitments(raw, rc.commitments).amount, cur)
                    advance_used += used
                    if _missed_at_upgrade(rc, seg, charged, invoice_id):
                        late.append(
                            Line(
                                kind="flat_fee",
                                amount=self._round(raw, cur),
                                quantity=Decimal(1),
                                unit_price=rc.price.amount,
                                detail=detail,
                                description="billed late: the previous invoice billed this fee in arrears",
                                **base,  # type: ignore[arg-type]
                            )
                        )
                    else:
                        lines.extend(
                            self._credit(rc, seg, self._round(raw, cur), charged, invoice_id, base, kept_credits)
                        )
                    continue
                if in_advance != seg.advance:
                    continue  # an in-arrears fee is billed with the period's usage, not in advance
                lines.append(
                    Line(
                        kind="flat_fee",
                        amount=self._round(raw, cur),
                        quantity=Decimal(1),
                        unit_price=rc.price.amount,
                        detail=detail,
                        **base,  # type: ignore[arg-type]
                    )
                )
                lines.extend(self._commitment(rc, raw, cur, base, rc.price.payment_term.value if in_advance else None))
                continue
            if seg.advance:
                continue
            assert rc.meter is not None, f"usage rate card {rc.key} has no meter"
            measured = usage.get((rc.meter, seg.covered.start, seg.covered.end), {}).get(customer_id, ZERO)
            quantity, warning = billable_quantity(measured)
            rated = rate_usage(rc.price, quantity)
            detail = {}
            if warning is not None:
                detail["usageTotal"] = str(measured)
                detail["warnings"] = [warning]
            if rated.tiers:
                detail["tiers"] = [
                    {
                        "tier": t.tier_index + 1,
                        "quantity": str(t.quantity),
                        "unitPrice": str(t.unit_amount),
                        "flatPrice": str(t.flat_amount),
                        "amount": str(t.amount),
                    }
                    for t in rated.tiers
                ]
            if rated.packages is not None:
                detail["packages"] = str(rated.packages)
            lines.append(
                Line(
                    kind="usage",
                    amount=self._round(rated.amount, cur),
                    meter=rc.meter,
                    quantity=quantity,
                    unit_price=rated.unit_price,
                    detail=detail or None,
                    **base,  # type: ignore[arg-type]
                )
            )
            lines.extend(self._commitment(rc, rated.amount, cur, base))
        if not seg.advance and (plan.commitments.minimum is not None or plan.commitments.maximum is not None):
            # In-advance fees count toward the commitment of the period they cover, at the amount
            # for the time used (charged minus credit), although they were invoiced at its start.
            spent = sum((ln.amount for ln in lines if ln.kind != "credit"), advance_used)
            committed = apply_commitments(spent, plan.commitments)
            if committed.adjustment != 0 and committed.reason is not None:
                lines.append(
                    Line(
                        kind="commitment",
                        name=f"{plan.name}: {committed.reason.value.replace('_', ' ')}",
                        period=seg.covered,
                        amount=self._round(committed.amount, cur) - spent,
                        subscription_id=sub.id,
                        description=f"plan {plan.plan_key} v{plan.version} spend commitment",
                        detail={"reason": committed.reason.value, "spent": str(spent)},
                    )
                )
        return lines

    def _credit(
        self,
        rc: RateCard,
        seg: Segment,
        used: Decimal,
        charged: Charged,
        invoice_id: str | None,
        base: dict[str, Any],
        kept_credits: list[Line] | None = None,
    ) -> list[Line]:
        """A negative line for in-advance time paid for but not used (a cancel or plan change) that
        nothing gave back yet: the fees charged on other invoices for this period, minus what was
        credited since (credit lines, credit notes: normally all of it, at the cancel), minus the fee
        for the time used."""
        if kept_credits is not None:  # an issued invoice recomputed: its credits stay as issued
            return [ln for ln in kept_credits if _credits_for(ln, seg, rc.key) and not _in_advance_credit_here(ln)]
        within = [
            c
            for c in charged.get((seg.subscription.id, rc.key), [])
            if c.invoice_id != invoice_id and seg.period.start <= c.period.start and c.period.end <= seg.period.end
        ]
        billed = [c for c in within if c.kind == FEE]
        if not billed:
            return []
        paid = sum((c.amount for c in within), ZERO)  # charged minus given back already
        if paid <= used:
            return []
        paid_to = max(c.period.end for c in billed)
        unused = Period(seg.covered.end, paid_to) if paid_to > seg.covered.end else seg.covered
        first_invoice = min(billed, key=lambda c: c.period.start).invoice_id
        charged_total = sum((c.amount for c in billed), ZERO)
        tz = seg.subscription.timezone
        return [
            Line(
                kind="credit",
                name=f"Credit: {rc.name} (unused time)",
                period=unused,
                amount=used - paid,
                subscription_id=base["subscription_id"],
                rate_card_key=rc.key,
                tax_code=base["tax_code"],
                description=(
                    f"{rc.name} paid in advance on invoice {first_invoice}, not used: {_period_label(unused, tz)}"
                ),
                corrects_invoice_id=first_invoice,
                detail={
                    "paymentTerm": "in_advance",
                    "charged": str(charged_total),
                    "used": str(used),
                    **({"creditedBefore": str(charged_total - paid)} if paid != charged_total else {}),
                },
            )
        ]

    def _unused_here(
        self,
        seg: Segment,
        kept: list[Line],
        charged: Charged,
        invoice_id: str | None,
        kept_credits: list[Line] | None,
    ) -> list[Line]:
        """Credits for in-advance fees on this (draft) invoice that the subscription will not use:
        it was canceled or changed plan after the fee was drafted. Charged - credit is the fee for
        the time used, as for a credit on a later invoice; what other documents gave back already
        for the period counts."""
        if kept_credits is not None:
            return [ln for ln in kept_credits if _credits_for(ln, seg, None) and _in_advance_credit_here(ln)]
        sub, out = seg.subscription, []
        for rc in seg.plan.rate_cards:
            fees = [ln for ln in kept if ln.kind == "flat_fee" and ln.rate_card_key == rc.key]
            if not fees or not isinstance(rc.price, FlatPrice):
                continue
            raw, _ = flat_share(rc.price, seg.covered, seg.period)
            used = self._round(raw, sub.currency)
            elsewhere = [
                c
                for c in charged.get((sub.id, rc.key), [])
                if c.invoice_id != invoice_id and seg.period.start <= c.period.start and c.period.end <= seg.period.end
            ]
            here = sum((ln.amount for ln in fees), ZERO)
            paid = here + sum((c.amount for c in elsewhere), ZERO)
            if paid <= used:
                continue
            unused = Period(seg.covered.end, max(ln.period.end for ln in fees))
            out.append(
                Line(
                    kind="credit",
                    name=f"Credit: {rc.name} (unused time)",
                    period=unused,
                    amount=used - paid,
                    subscription_id=sub.id,
                    rate_card_key=rc.key,
                    tax_code=fees[0].tax_code,
                    description=(f"{rc.name} billed above in advance, not used: {_period_label(unused, sub.timezone)}"),
                    detail={"paymentTerm": "in_advance", "charged": str(here), "used": str(used), "sameInvoice": True},
                )
            )
        return out

    def _commitment(
        self, rc: RateCard, raw: Decimal, currency: str, base: dict[str, Any], payment_term: str | None = None
    ) -> list[Line]:
        if rc.commitments.minimum is None and rc.commitments.maximum is None:
            return []
        committed = apply_commitments(raw, rc.commitments)
        if committed.adjustment == 0 or committed.reason is None:
            return []
        reason = committed.reason.value.replace("_", " ")
        return [
            Line(
                kind="commitment",
                name=f"{rc.name} ({reason})",
                period=base["period"],
                amount=self._round(committed.amount, currency) - self._round(raw, currency),
                subscription_id=base["subscription_id"],
                rate_card_key=rc.key,
                tax_code=base["tax_code"],
                description=f"{rc.name}: {reason} commitment",
                detail={"reason": committed.reason.value, **({"paymentTerm": payment_term} if payment_term else {})},
            )
        ]

    def _rated_total(self, rc: RateCard, quantity: Decimal, currency: str) -> Decimal:
        assert not isinstance(rc.price, FlatPrice)
        raw = rate_usage(rc.price, quantity).amount
        return self._round(apply_commitments(raw, rc.commitments).amount, currency)

    def _billed_quantities(self, invoices: Sequence[Invoice]) -> dict[tuple[str, str | None, str | None], Decimal]:
        """(invoice id, subscription, rate card) -> quantity billed so far (issued line + billed corrections)."""
        billed: dict[tuple[str, str | None, str | None], Decimal] = {}
        for inv in invoices:
            for ln in inv.lines:
                if ln.kind == "usage" and ln.quantity is not None:
                    billed[(inv.id, ln.subscription_id, ln.rate_card_key)] = ln.quantity
        if not billed:
            return billed
        with self.store.read() as conn:
            rows = billing_store.corrections_of(conn, list({inv.id for inv in invoices}))
        for row in rows:
            if row["invoice_status"] not in BILLED or row["quantity"] is None:
                continue
            key = (row["corrects_invoice_id"], row["subscription_id"], row["rate_card_key"])
            if key in billed:
                billed[key] += Decimal(row["quantity"])
        if self.credit_notes is not None:  # units a credit note took off are no longer billed
            for credit in self.credit_notes.usage_credits(list({inv.id for inv in invoices})):
                key = (credit.invoice_id, credit.subscription_id, credit.rate_card_key)
                if key in billed:
                    billed[key] -= credit.quantity
        return billed

    def _corrections(
        self,
        job: _Job,
        usage: dict[UsageKey, dict[str, Decimal]],
        billed: dict[tuple[str, str | None, str | None], Decimal],
        as_of: datetime | None,
    ) -> list[Line]:
        lines: list[Line] = []
        customer_id, currency = job.key[0], job.key[1]
        for inv in sorted(job.previous, key=lambda i: i.period.start):
            for ln in inv.lines:
                if ln.kind != "usage" or ln.meter is None:
                    continue
                before = billed.get((inv.id, ln.subscription_id, ln.rate_card_key))
                if before is None:
                    continue
                measured = usage.get((ln.meter, ln.period.start, ln.period.end), {}).get(customer_id, ZERO)
                now_qty, warning = billable_quantity(measured)
                if now_qty == before:
                    continue
                rc = self._rate_card(ln)
                if rc is None:
                    continue
                amount = self._rated_total(rc, now_qty, currency) - self._rated_total(rc, before, currency)
                tz = inv.customer.get("timezone") or "UTC"
                lines.append(
                    Line(
                        kind="correction",
                        name=f"Correction: {ln.name}",
                        period=ln.period,
                        amount=amount,
                        subscription_id=ln.subscription_id,
                        rate_card_key=ln.rate_card_key,
                        meter=ln.meter,
                        quantity=now_qty - before,
                        unit_price=ln.unit_price,
                        tax_code=ln.tax_code,
                        description=(
                            f"usage that arrived after invoice {inv.id} was issued, for {_period_label(ln.period, tz)}"
                        ),
                        corrects_invoice_id=inv.id,
                        detail={
                            "previousQuantity": str(before),
                            "quantity": str(now_qty),
                            **({"usageTotal": str(measured), "warnings": [warning]} if warning else {}),
                        },
                    )
                )
        return lines

    def _rate_card(self, line: Line) -> RateCard | None:
        if line.subscription_id is None:
            return None
        try:
            sub = self.subscriptions.get(line.subscription_id)
        except Exception:
            return None
        plan = self._plan(sub)
        return next((rc for rc in plan.rate_cards if rc.key == line.rate_card_key), None)

    def _recompute_corrections(
        self, invoice: Invoice, fixed: list[Line], as_of: datetime | None, through_seq: int | None
    ) -> list[Line]:
        with exact():
            return self._recompute_corrections_exactly(invoice, fixed, as_of, through_seq)

    def _recompute_corrections_exactly(
        self, invoice: Invoice, fixed: list[Line], as_of: datetime | None, through_seq: int | None
    ) -> list[Line]:
        wanted: dict[UsageKey, set[str]] = defaultdict(set)
        for ln in fixed:
            if ln.meter is not None:
                wanted[(ln.meter, ln.period.start, ln.period.end)].add(invoice.customer_id)
        usage = self._usage(wanted, as_of, through_seq=through_seq)
        out = []
        for ln in fixed:
            before = Decimal((ln.detail or {}).get("previousQuantity", "0"))
            rc = self._rate_card(ln)
            assert ln.meter is not None and rc is not None
            measured = usage.get((ln.meter, ln.period.start, ln.period.end), {}).get(invoice.customer_id, ZERO)
            now_qty, _ = billable_quantity(measured)
            amount = self._rated_total(rc, now_qty, invoice.currency) - self._rated_total(rc, before, invoice.currency)
            out.append(
                replace(
                    ln, quantity=now_qty - before, amount=amount, detail={**(ln.detail or {}), "quantity": str(now_qty)}
                )
            )
        return out

    def _lock_meters(self, line_sets: Iterable[list[Line]]) -> None:
        slugs = sorted({ln.meter for lines in line_sets for ln in lines if ln.meter is not None})
        for slug in slugs:
            self.meters.lock(slug)

    # -- writing ---------------------------------------------------------------------------------------
    def _new_invoice(
        self, key: InvoiceKey, lines: list[Line], customer: dict[str, Any], now: datetime, status: str
    ) -> Invoice:
        return Invoice(
            id=new_ulid(now),
            customer_id=key[0],
            customer=customer,
            currency=key[1],
            status=status,
            period=key[2],
            kind=key[3],
            lines=lines,
            totals=totals_of(lines, key[1], self.settings),
            as_of=now,
            revision=1,
            created_at=now,
            updated_at=now,
            issued_at=now if status == ISSUED else None,
        )

    def _updated(
        self, draft: Invoice, lines: list[Line], customer: dict[str, Any], now: datetime, status: str
    ) -> Invoice:
        return replace(
            draft,
            lines=lines,
            customer=customer,
            totals=totals_of(lines, draft.currency, self.settings),
            status=status,
            as_of=now,
            revision=draft.revision + 1,
            updated_at=now,
            issued_at=now if status == ISSUED else draft.issued_at,
        )

    def _emit(
        self, conn: Connection, destinations: dict[str, Any], event_type: str, invoice: Invoice, now: datetime
    ) -> None:
        targets = destinations.get(event_type) or []
        if not targets:
            return
        from tallybook.billing.export import invoice_json

        message = OutboxMessage(
            type=event_type,
            dedup_key=f"{event_type}:{invoice.id}:{invoice.revision}",
            payload={"type": event_type, "invoice": invoice_json(invoice), "created": int(now.timestamp())},
            subject=invoice.customer_id,
        )
        self.webhooks.enqueue(conn, message, targets, now)


def flat_share(price: FlatPrice, covered: Period, period: Period) -> tuple[Decimal, dict[str, Any]]:
    """A flat fee's unrounded share for `covered` of `period`, by whole seconds (see
    tallybook/exact.py), and the line's detail (payment term, proration when partial)."""
    covered_s = whole_seconds(covered.start, covered.end)
    period_s = whole_seconds(period.start, period.end)
    raw = prorate(price.amount, Decimal(covered_s), Decimal(period_s))
    detail: dict[str, Any] = {"paymentTerm": price.payment_term.value}
    if covered_s != period_s:
        detail["proration"] = {"coveredSeconds": str(covered_s), "periodSeconds": str(period_s)}
    return raw, detail


def opening_key(sub: Subscription) -> InvoiceKey:
    """The key of a subscription's opening invoice: its start to the end of its first period."""
    first = sub.schedule.period_containing(sub.active_from)
    return (sub.customer_id, sub.currency, Period(sub.active_from, first.end), OPENING)


def _pays_for(line: Line, seg: Segment) -> bool:
    """Whether a line is this subscription's for a time inside the segment's billing period."""
    return (
        line.subscription_id == seg.subscription.id
        and seg.period.start <= line.period.start
        and line.period.end <= seg.period.end
    )


def _missed_at_upgrade(rc: RateCard, seg: Segment, charged: Charged, invoice_id: str | None) -> bool:
    """Whether this period's in-advance fee was never billed because the previous period's invoice
    was drafted under the old timing (it billed that period's own fee at its end, nothing ahead).

    Under in-advance timing the fee for a period is on an earlier invoice (opening, or the previous
    period's) or, for a plan change inside the period, on this one; so a period invoice of the
    previous period holding only a fee for that previous period marks an invoice of the old timing.
    """
    charges = [c for c in charged.get((seg.subscription.id, rc.key), []) if c.kind == FEE]
    period = seg.period
    if any(period.start <= c.period.start and c.period.end <= period.end for c in charges):
        return False
    return any(
        c.invoice_id != invoice_id
        and c.invoice_kind == PERIOD
        and c.invoice_period_end == period.start
        and c.period.end <= period.start
        for c in charges
    )


def _credits_for(line: Line, seg: Segment, rate_card_key: str | None) -> bool:
    """Whether a stored credit line gives back this segment's subscription's fee (of that rate card)."""
    return (
        line.kind == "credit"
        and line.subscription_id == seg.subscription.id
        and (rate_card_key is None or line.rate_card_key == rate_card_key)
        and seg.period.start <= line.period.start
        and line.period.end <= seg.period.end
    )


def _in_advance_credit_here(line: Line) -> bool:
    """A credit for a fee on the same invoice (see InvoicingService._unused_here)."""
    return bool((line.detail or {}).get("sameInvoice"))


def _billed_in_advance(rc: RateCard) -> bool:
    return isinstance(rc.price, FlatPrice) and rc.price.payment_term is PaymentTerm.IN_ADVANCE


def _key_of(invoice: Invoice) -> InvoiceKey:
    return (invoice.customer_id, invoice.currency, invoice.period, invoice.kind)


def _in_advance(line: Line) -> bool:
    """A line billed in advance (an in-advance fee or its rate-card commitment): fixed once drafted."""
    return line.kind in ("flat_fee", "commitment") and (line.detail or {}).get("paymentTerm") == "in_advance"


def _same_lines(a: Sequence[Line], b: Sequence[Line]) -> bool:
    return [ln.row() for ln in a] == [ln.row() for ln in b]


def _record(invoice: Invoice) -> InvoiceRecord:
    row = {"id": invoice.id, **_values(invoice)}
    row.update(
        customer_id=invoice.customer_id,
        currency=invoice.currency,
        kind=invoice.kind,
        period_start_us=to_micros(invoice.period.start),
        period_end_us=to_micros(invoice.period.end),
        revision=invoice.revision,
        created_us=to_micros(invoice.created_at),
    )
    return InvoiceRecord(row, [ln.row() for ln in invoice.lines])


def _values(invoice: Invoice) -> dict[str, Any]:
    """The columns an update writes (revision is bumped by the store)."""
    assert invoice.as_of is not None
    return {
        "status": invoice.status,
        "customer": invoice.customer,
        "subtotal": str(invoice.totals.subtotal),
        "commitments": str(invoice.totals.commitments),
        "total": str(invoice.totals.total),
        "as_of_us": to_micros(invoice.as_of),
        "updated_us": to_micros(invoice.updated_at),
        "issued_us": None if invoice.issued_at is None else to_micros(invoice.issued_at),
        "paid_us": None if invoice.paid_at is None else to_micros(invoice.paid_at),
        "voided_us": None if invoice.voided_at is None else to_micros(invoice.voided_at),
        "uncollectible_us": None if invoice.uncollectible_at is None else to_micros(invoice.uncollectible_at),
        "number": invoice.number,
        "seller": invoice.seller,
        "as_of_seq": invoice.as_of_seq,
    }


def _customer_snapshot(row: dict[str, Any] | None, customer_id: str, customer: Any = None) -> dict[str, Any]:
    if customer is not None:
        address = None
        if customer.billing_address is not None:
            address = {k: v for k, v in vars_of(customer.billing_address).items() if v is not None}
        return {
            "id": customer.id,
            "key": customer.key,
            "name": customer.name,
            "primaryEmail": customer.primary_email,
            "billingAddress": address,
            "timezone": customer.timezone or "UTC",
        }
    if row is None:
        return {"id": customer_id, "name": customer_id, "timezone": "UTC"}
    return {
        "id": row["id"],
        "key": row["key"],
        "name": row["name"],
        "primaryEmail": row["primary_email"],
        "billingAddress": row["billing_address"],
        "timezone": row["timezone"] or "UTC",
    }


def vars_of(value: Any) -> dict[str, Any]:
    from dataclasses import asdict

    wire = {"postal_code": "postalCode", "phone_number": "phoneNumber"}
    return {wire.get(k, k): v for k, v in asdict(value).items()}


__all__ = [
    "INVOICE_EVENT_TYPES",
    "STATUSES",
    "Invoice",
    "InvoiceConflict",
    "InvoiceError",
    "InvoiceNotFound",
    "InvoicingService",
    "Line",
    "Totals",
    "format_rfc3339",
]
