"""Credits for in-advance time not used, given when a subscription's end is set.

A cancel (immediate, at the end of the period or at a date) or a plan change ends a subscription.
An in-advance fee that already covers time after that end was charged for time the customer will
not use; the customer gets it back at once, not at the end of the period:

- the fee is on an **issued** invoice (issued, paid, uncollectible): a credit note against it, now
  (reason `cancellation`, or `plan_change` when the subscription moved to another plan). An
  issued invoice is never edited.
- the fee is on a **draft** (not issued yet): a `credit` line on that draft, which is refreshed
  now (`invoice.updated`), so it is issued with the credit on it.

Each credit is what the period's fees charged, minus what was given back already, minus the fee
for the time used (each rounded once), so charged minus every credit is exactly the fee for the
time used, to the cent, however often the end moves (a cancel at a date, then a plan change before
it). If a credit cannot be given here (a failure, or a credit note that would take the invoice
below zero), the invoice drafted when the period ends carries it as a `credit` line, as it did
before credit notes: nothing is lost, only later.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from decimal import Decimal

from tallybook.billing.currency import round_money
from tallybook.billing.invoicing import InvoicingService
from tallybook.billing.invoicing_model import DRAFT, FEE, flat_share, period_label
from tallybook.billing.models import FlatPrice, PaymentTerm
from tallybook.billing.periods import Period
from tallybook.billing.subscriptions import Subscription
from tallybook.clock import format_rfc3339
from tallybook.creditnotes.model import (
    CANCELLATION,
    CREDIT,
    PLAN_CHANGE,
    CreditNote,
    CreditNoteLine,
    CreditNoteRequest,
)
from tallybook.creditnotes.service import CreditNoteService
from tallybook.exact import exact, total

log = logging.getLogger(__name__)


class CancelCredits:
    def __init__(self, invoicing: InvoicingService, credit_notes: CreditNoteService) -> None:
        self.invoicing = invoicing
        self.credit_notes = credit_notes

    def subscription_ended(self, sub: Subscription) -> list[CreditNote]:
        """Give back the in-advance time after `sub`'s end (see the module docs); the credit notes issued."""
        end = sub.active_to
        if end is None:
            return []
        plan = self.invoicing.subscriptions.plan_of(sub)
        cards = [
            rc
            for rc in plan.rate_cards
            if isinstance(rc.price, FlatPrice) and rc.price.payment_term is PaymentTerm.IN_ADVANCE
        ]
        if not cards:
            return []
        charged = self.invoicing.charges_of([sub.id])
        settings = self.invoicing.settings
        by_invoice: dict[str, list[CreditNoteLine]] = defaultdict(list)
        drafts: set[str] = set()
        for rc in cards:
            assert isinstance(rc.price, FlatPrice)
            charges = charged.get((sub.id, rc.key), [])
            periods = {sub.schedule.period_containing(c.period.start) for c in charges if c.kind == FEE}
            for period in sorted(periods, key=lambda p: p.start):
                if period.end <= end:
                    continue  # used in full
                within = [c for c in charges if period.start <= c.period.start and c.period.end <= period.end]
                fees = [c for c in within if c.kind == FEE]
                covered = sub.covered(period)
                raw = flat_share(rc.price, covered, period)[0] if covered is not None else Decimal(0)
                used = round_money(raw, sub.currency, settings.rounding)
                with exact():
                    due = total(c.amount for c in within) - used
                if not fees or due <= 0:
                    continue
                on_draft = [c for c in fees if c.invoice_status == DRAFT]
                if on_draft:
                    drafts.add(on_draft[-1].invoice_id)  # refreshing it adds the credit line
                    continue
                charge = max(fees, key=lambda c: c.period.start)  # the invoice that billed the time
                unused = Period(max(end, period.start), max(c.period.end for c in fees))
                by_invoice[charge.invoice_id].append(
                    CreditNoteLine(
                        kind=CREDIT,
                        name=f"Credit: {rc.name} (unused time)",
                        period=unused,
                        amount=due,
                        subscription_id=sub.id,
                        rate_card_key=rc.key,
                        tax_code=rc.tax_code or settings.default_tax_code,
                        description=f"{rc.name} paid in advance, not used: {period_label(unused, sub.timezone)}",
                        detail={"charged": str(total(c.amount for c in fees)), "used": str(used)},
                    )
                )
        reason = PLAN_CHANGE if sub.next_id else CANCELLATION
        memo = (
            f"Subscription {sub.id} moved to another plan on {format_rfc3339(end)}"
            if sub.next_id
            else f"Subscription {sub.id} ends on {format_rfc3339(end)}"
        )
        notes = []
        for invoice_id, lines in by_invoice.items():
            try:
                notes.append(self.credit_notes.issue(CreditNoteRequest(invoice_id, reason, tuple(lines), memo)))
            except Exception:
                log.warning(
                    "credit note at cancel failed; the period's invoice carries the credit",
                    exc_info=True,
                    extra={"subscription_id": sub.id, "invoice_id": invoice_id},
                )
        for draft_id in sorted(drafts):
            self.invoicing.refresh(draft_id)
        return notes


__all__ = ["CancelCredits"]
