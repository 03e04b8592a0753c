"""Computing invoices: which subscriptions' segments an invoice holds, the usage they read, what
was billed and charged before, and the lines (tallybook/billing/invoicing_lines.py).

`InvoiceComputation` is the base of the invoicing service (tallybook/billing/invoicing.py): it
reads everything a set of jobs needs in a few grouped reads (one usage query per meter and
distinct period, grouped by customer, never one per customer) and then builds each job's lines.
With `failed`, a job that cannot be computed is set aside (the run records it) instead of raising.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tallybook.billing.invoicing_lines import InvoiceLines
from tallybook.billing.invoicing_model import (
    BILLED,
    CORRECTION,
    DRAFT,
    FEE,
    GIVEN_BACK,
    PERIOD,
    ZERO,
    Charge,
    Charged,
    Invoice,
    InvoiceError,
    InvoiceKey,
    Line,
    UsageKey,
    billable_quantity,
    invoice_from_record,
)
from tallybook.billing.invoicing_ports import InvoiceSearch, InvoiceStorage
from tallybook.billing.invoicing_segments import InvoiceJob, Segment, key_segments, segment_usage_keys
from tallybook.billing.models import PlanVersion, RateCard
from tallybook.billing.periods import Period
from tallybook.billing.profiles import ProfileService
from tallybook.billing.settings import BillingSettings
from tallybook.billing.subscriptions import Subscription, SubscriptionService, subscription_from_row
from tallybook.clock import Clock, from_micros, to_micros
from tallybook.creditnotes.service import CreditNoteService
from tallybook.exact import exact
from tallybook.jobs.runs import ItemFailureLog
from tallybook.meters.models import MeterError, UsageQuery
from tallybook.meters.service import MeterService

log = logging.getLogger(__name__)

# Customers per usage query before the query stops filtering by customer and reads them all.
FILTER_LIMIT = 200


class InvoiceComputation:
    def __init__(
        self,
        storage: InvoiceStorage,
        clock: Clock,
        subscriptions: SubscriptionService,
        meters: MeterService,
        failures: ItemFailureLog,
        settings: BillingSettings | None = None,
        profiles: ProfileService | None = None,
        credit_notes: CreditNoteService | None = None,
    ) -> None:
        self.storage = storage
        # Issued credit notes count in what was billed: in-advance fees given back, usage taken off.
        self.credit_notes = credit_notes
        # Where the scheduled run records invoices it skipped (GET /api/v1/jobs/failures).
        self.failures = failures
        self.clock = clock
        self.subscriptions = subscriptions
        self.meters = meters
        self.settings = settings or BillingSettings()
        # Grace and approval per customer; without a profile service every customer gets the
        # profile the settings describe (invoice_grace, auto_issue, auto_issue_after).
        self.profiles = profiles
        self._plans: dict[tuple[str, int], PlanVersion] = {}
        self.lines = InvoiceLines(self.settings, self._rate_card)

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
        with self.storage.reading() as tx:
            if len(customer_ids) <= FILTER_LIMIT:
                rows = tx.list_subscriptions(customer_ids, overlapping=(to_micros(start), to_micros(end)))
            else:
                rows = tx.list_subscriptions(None, overlapping=(to_micros(start), to_micros(end)))
        customers = set(customer_ids)
        out: dict[InvoiceKey, list[Segment]] = defaultdict(list)
        for row in rows:
            if row["customer_id"] not in customers:
                continue
            try:
                sub = subscription_from_row(row)
                for key in by_customer.get((sub.customer_id, sub.currency), ()):
                    segments = key_segments(sub, key, self._plan)
                    if segments:
                        out[key].extend(segments)
            except Exception as exc:
                if failed is None:
                    raise
                for key in by_customer.get((row["customer_id"], row["currency"]), ()):
                    failed.setdefault(key, exc)
        return out

    def _attach_previous(self, jobs: list[InvoiceJob], now: datetime) -> None:
        """Give each customer's latest draft the billed invoices whose late usage it must carry."""
        candidates = [j for j in jobs if j.corrections_allowed and j.key[3] == PERIOD]
        if not candidates:
            return
        earliest = min(j.key[2].start for j in candidates) - self.settings.correction_lookback
        with self.storage.reading() as tx:
            _, billed = tx.search_invoices(
                InvoiceSearch(statuses=BILLED, period_end_from_us=to_micros(earliest), newest_first=False)
            )
            _, other_drafts = tx.search_invoices(
                InvoiceSearch(statuses=(DRAFT,), period_end_from_us=to_micros(earliest)), with_lines=False
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
            if len(customer_ids) <= FILTER_LIMIT:
                # A deleted customer's subjects are freed: it has no usage to read (and the meter
                # query refuses unknown customers), so only live ones are named.
                with self.storage.reading() as tx:
                    ids = tuple(sorted(tx.live_customer_ids(list(customer_ids))))
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
        with self.storage.reading() as tx:
            live = tx.live_customer_ids(customer_ids)
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
        jobs: list[InvoiceJob],
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
        jobs: list[InvoiceJob],
        as_of: datetime | None,
        failed: dict[InvoiceKey, BaseException] | None,
        through_seq: int | None,
    ) -> dict[InvoiceKey, list[Line]]:
        wanted: dict[UsageKey, set[str]] = defaultdict(set)
        needs: dict[InvoiceKey, set[UsageKey]] = defaultdict(set)
        for job in jobs:
            needs[job.key].update(segment_usage_keys(job.segments))
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
                out[job.key] = self.lines.job_lines(job, usage, billed_so_far, charged, as_of)
                continue
            missing = [unread[(u, job.key[0])] for u in needs[job.key] if unread and (u, job.key[0]) in unread]
            if missing:
                failed[job.key] = missing[0]  # billing it without that usage would be wrong
                continue
            try:
                out[job.key] = self.lines.job_lines(job, usage, billed_so_far, charged, as_of)
            except Exception as exc:
                failed[job.key] = exc
        return out

    def _billed_quantities(self, invoices: Sequence[Invoice]) -> dict[tuple[str, str | None, str | None], Decimal]:
        """(invoice id, subscription, rate card) -> quantity billed so far (issued line + billed corrections)."""
        billed: dict[tuple[str, str | None, str | None], Decimal] = {}
        for inv in invoices:
            for ln in inv.lines:
                if ln.kind == "usage" and ln.quantity is not None:
                    billed[(inv.id, ln.subscription_id, ln.rate_card_key)] = ln.quantity
        if not billed:
            return billed
        with self.storage.reading() as tx:
            rows = tx.corrections_of(list({inv.id for inv in invoices}))
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

    def _charged_in_advance(self, jobs: Sequence[InvoiceJob]) -> Charged:
        """The in-advance charges and credits of the subscriptions these jobs bill (see charges_of)."""
        return self.charges_of(sorted({seg.subscription.id for job in jobs for seg in job.segments}))

    def charges_of(self, subscription_ids: Sequence[str]) -> Charged:
        """(subscription, rate card) -> its in-advance fees charged so far (fee lines on invoices that
        are not void) and what was given back of them (negative: `credit` lines on such invoices and
        issued credit notes), each with the document holding it and the time it covers."""
        out: Charged = defaultdict(list)
        if not subscription_ids:
            return out
        with self.storage.reading() as tx:
            rows = tx.in_advance_fee_lines(subscription_ids, kinds=("flat_fee", "credit"))
        for row in rows:
            if (row["detail"] or {}).get("paymentTerm") != "in_advance" or row["rate_card_key"] is None:
                continue
            charge = Charge(
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
                out[key].append(Charge(credit.invoice_id, credit.period, -credit.amount, kind=GIVEN_BACK))
        return out

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
            amount = self.lines.rated_total(rc, now_qty, invoice.currency) - self.lines.rated_total(
                rc, before, invoice.currency
            )
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


__all__ = ["FILTER_LIMIT", "InvoiceComputation"]
