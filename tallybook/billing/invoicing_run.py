"""The scheduled `billing.invoice` run: draft the invoices that are due, refresh the drafts that
need it, settle final corrections, issue what the billing profiles auto-advance, and store it all.

Fault isolation: one customer's invoice that cannot be computed or written is recorded as a failed
`invoice` item of the job (GET /api/v1/jobs/failures) and skipped; every other invoice of the run
is drafted, refreshed or issued. Its subscriptions' `billed_through` does not move, so every later
run tries it again. The writes share one transaction; if the batch fails, each invoice is written
again inside its own savepoint, so only the invoices whose writes fail are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

from tallybook.billing import final_corrections
from tallybook.billing.cutoff import take_cutoff
from tallybook.billing.invoicing_lifecycle import InvoiceLifecycle
from tallybook.billing.invoicing_model import (
    CORRECTION,
    DRAFT,
    INVOICE_EVENT_TYPES,
    ISSUED,
    PERIOD,
    InvoiceKey,
    Line,
    customer_snapshot,
    invoice_from_record,
    key_of,
    record_of,
    same_lines,
    values_of,
)
from tallybook.billing.invoicing_ports import InvoiceRecord, InvoiceSearch, InvoiceTransaction
from tallybook.billing.invoicing_segments import InvoiceJob, opening_key
from tallybook.billing.profiles import BillingProfile, config_profile
from tallybook.billing.subscriptions import subscription_from_row
from tallybook.clock import format_rfc3339, to_micros
from tallybook.jobs.runs import JobRun
from tallybook.webhooks.settings import INVOICE_CREATED, INVOICE_ISSUED, INVOICE_UPDATED

log = logging.getLogger(__name__)

INVOICE_JOB = "billing.invoice"
INVOICE_ITEM = "invoice"  # the item kind of a failed invoice (one customer, currency, period, kind)


@dataclass
class InvoiceWrite:
    """One computed invoice to store."""

    key: InvoiceKey
    job: InvoiceJob
    lines: list[Line]
    status: str
    failed: bool = False
    profile: BillingProfile | None = None  # numbers and the seller snapshot, if issued
    as_of_seq: int | None = None


def item_id(key: InvoiceKey) -> str:
    """The failed-item id of an invoice: customer, currency, kind and period start."""
    return f"{key[0]}|{key[1]}|{key[3]}|{format_rfc3339(key[2].start)}"


def item_context(key: InvoiceKey, job: InvoiceJob | None) -> dict[str, Any]:
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


class InvoiceDrafting(InvoiceLifecycle):
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
        with self.storage.reading() as tx:
            # Every subscription that may be due for some profile; each is cut at its own grace below.
            due_rows = tx.unbilled_subscriptions(to_micros(now - shortest))
            opening_rows = tx.unopened_subscriptions(to_micros(now))
            _, drafts = tx.search_invoices(InvoiceSearch(statuses=(DRAFT,), newest_first=False))
            latest_ingest_us = tx.latest_ingest_us()
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
        with self.storage.reading() as tx:
            existing = tx.existing_invoice_keys(to_micros(k[2].end) for k in due_keys)
        jobs: dict[InvoiceKey, InvoiceJob] = {}
        for key in due_keys:
            segments = due.get(key)
            found = existing.get((key[0], key[1], to_micros(key[2].start), to_micros(key[2].end), key[3]))
            if found is None:
                if segments or key in failed:
                    jobs[key] = InvoiceJob(key, segments or [], corrections_allowed=key[3] == PERIOD)
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
            segments_by_key = self._segments_for([key_of(d) for d in draft_invoices], failed)
            for draft in draft_invoices:
                key = key_of(draft)
                jobs[key] = InvoiceJob(
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
        ingest_seq = take_cutoff(self.storage, self.clock).seq if jobs else None
        computed = self._compute(
            [j for k, j in jobs.items() if k not in failed], as_of=now, failed=failed, through_seq=ingest_seq
        )
        for key, exc in failed.items():
            run.fail(INVOICE_ITEM, item_id(key), exc, **item_context(key, jobs.get(key)))
        for key in computed:
            run.ok(INVOICE_ITEM, item_id(key))
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
            InvoiceWrite(
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
            with run.item(INVOICE_ITEM, item_id(key_of(draft)), invoiceId=draft.id):
                self.void(draft.id)
        return {**counts, "computed": len(jobs), "drafts": len(drafts)}

    def _write(
        self,
        writes: list[InvoiceWrite],
        now: datetime,
        run: JobRun,
        billed_through: Callable[[set[InvoiceKey]], list[tuple[str, int]]],
    ) -> dict[str, int]:
        """Store the run's invoices (and move the subscriptions' billed_through) in one transaction.
        If a write fails, the invoices are stored again with a savepoint each, so only the invoices
        whose writes fail are left out (and recorded)."""
        with self.storage.writing() as tx:
            destinations = {t: tx.webhook_destinations(t) for t in INVOICE_EVENT_TYPES}
            customers = tx.customer_rows([w.key[0] for w in writes])
            try:
                with tx.savepoint():
                    counts = {"created": 0, "updated": 0, "issued": 0}
                    records = [self._write_one(tx, w, customers, destinations, now, counts) for w in writes]
                    tx.insert_invoices([r for r in records if r is not None])
                tx.set_billed_through(billed_through(set()))
                return counts
            except Exception:
                log.warning("storing the invoices in one batch failed; storing them one by one", exc_info=True)
            counts = {"created": 0, "updated": 0, "issued": 0}
            for w in writes:
                with run.item(INVOICE_ITEM, item_id(w.key), **item_context(w.key, w.job)) as outcome:
                    partial = {"created": 0, "updated": 0, "issued": 0}
                    with tx.savepoint():
                        record = self._write_one(tx, w, customers, destinations, now, partial)
                        if record is not None:
                            tx.insert_invoices([record])
                    for name, value in partial.items():
                        counts[name] += value
                w.failed = outcome.failed
            tx.set_billed_through(billed_through({w.key for w in writes if w.failed}))
            return counts

    def _write_one(
        self,
        tx: InvoiceTransaction,
        w: InvoiceWrite,
        customers: dict[str, dict[str, Any]],
        destinations: dict[str, Any],
        now: datetime,
        counts: dict[str, int],
    ) -> InvoiceRecord | None:
        """Emit one invoice's events and update its draft; a new invoice's record is returned for
        the caller to insert (in a batch)."""
        key, job, lines, status = w.key, w.job, w.lines, w.status
        snapshot = customer_snapshot(customers.get(key[0]), key[0])
        if job.existing is None:
            invoice = replace(self._new_invoice(key, lines, snapshot, now, status), as_of_seq=w.as_of_seq)
            counts["created"] += 1
            self._emit(tx, destinations, INVOICE_CREATED, replace(invoice, status=DRAFT, issued_at=None), now)
            if status == ISSUED:
                invoice = self._issue_document(tx, invoice, w.profile, now)
                counts["issued"] += 1
                self._emit(tx, destinations, INVOICE_ISSUED, invoice, now)
            return record_of(invoice)
        draft = job.existing
        if status == DRAFT and same_lines(draft.lines, lines):
            return None
        changed = replace(self._updated(draft, lines, snapshot, now, status), as_of_seq=w.as_of_seq)
        if not tx.update_invoice(draft.id, draft.revision, values_of(changed), [ln.row() for ln in lines]):
            return None  # changed meanwhile (approved or voided): next run sees it
        if status == ISSUED:
            # Numbered only once the update took: a draft changed meanwhile takes no number.
            changed = self._issue_document(tx, changed, w.profile, now)
            tx.store_document(changed.id, changed.number, changed.seller)
            counts["issued"] += 1
            self._emit(tx, destinations, INVOICE_ISSUED, changed, now)
        else:
            counts["updated"] += 1
            self._emit(tx, destinations, INVOICE_UPDATED, changed, now)
        return None


__all__ = ["INVOICE_ITEM", "INVOICE_JOB", "InvoiceDrafting", "InvoiceWrite"]
