"""Invoice lines: what each segment bills (fees, usage, credits for unused in-advance time,
commitments) and the corrections of late usage, each line rounded once to the currency.

`InvoiceLines` is pure given its inputs: the usage read, the quantities billed so far and the
in-advance charges (all read beforehand by tallybook/billing/invoicing_compute.py), so the same
job gives the same lines whether it is drafted, refreshed, previewed or verified.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from decimal import Decimal
from typing import Any

from tallybook.billing.currency import round_money
from tallybook.billing.invoicing_model import (
    DRAFT,
    FEE,
    PERIOD,
    ZERO,
    Charged,
    Line,
    UsageKey,
    billable_quantity,
    flat_share,
    in_advance_credit_here,
    in_advance_line,
    period_label,
)
from tallybook.billing.invoicing_segments import InvoiceJob, Segment
from tallybook.billing.models import FlatPrice, PaymentTerm, RateCard
from tallybook.billing.periods import Period
from tallybook.billing.rating import apply_commitments, rate_usage
from tallybook.billing.settings import BillingSettings


def pays_for(line: Line, seg: Segment) -> bool:
    """Whether a line is this subscription's for a time inside the segment's billing period."""
    return (
        line.subscription_id == seg.subscription.id
        and seg.period.start <= line.period.start
        and line.period.end <= seg.period.end
    )


def missed_at_upgrade(rc: RateCard, seg: Segment, charged: Charged, invoice_id: str | None) -> bool:
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


def credits_for(line: Line, seg: Segment, rate_card_key: str | None) -> bool:
    """Whether a stored credit line gives back this segment's subscription's fee (of that rate card)."""
    return (
        line.kind == "credit"
        and line.subscription_id == seg.subscription.id
        and (rate_card_key is None or line.rate_card_key == rate_card_key)
        and seg.period.start <= line.period.start
        and line.period.end <= seg.period.end
    )


class InvoiceLines:
    """Builds a job's lines. `rate_card_of` finds the rate card a stored line was billed with (its
    subscription's plan), for corrections."""

    def __init__(self, settings: BillingSettings, rate_card_of: Callable[[Line], RateCard | None]) -> None:
        self.settings = settings
        self._rate_card = rate_card_of

    def job_lines(
        self,
        job: InvoiceJob,
        usage: dict[UsageKey, dict[str, Decimal]],
        billed_so_far: dict[tuple[str, str | None, str | None], Decimal],
        charged: Charged,
        as_of: datetime | None,
    ) -> list[Line]:
        invoice_id = job.existing.id if job.existing is not None else None
        # In-advance lines are fixed once drafted: a later cancel is a credit (on this draft, or
        # a credit note once it is issued), never a change to the charge (which may have been sent).
        frozen = [ln for ln in job.existing.lines if in_advance_line(ln)] if job.existing is not None else []
        # Recomputing an issued invoice: its credits stay as issued (later ones are credit notes).
        kept_credits = None
        if job.existing is not None and job.existing.status != DRAFT:
            kept_credits = [ln for ln in job.existing.lines if ln.kind == "credit"]
        lines: list[Line] = []
        late: list[Line] = []
        for seg in sorted(job.segments, key=lambda s: (s.advance, s.covered.start, s.subscription.id)):
            kept = [ln for ln in frozen if seg.advance and pays_for(ln, seg)]
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
                    if missed_at_upgrade(rc, seg, charged, invoice_id):
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
            return [ln for ln in kept_credits if credits_for(ln, seg, rc.key) and not in_advance_credit_here(ln)]
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
                    f"{rc.name} paid in advance on invoice {first_invoice}, not used: {period_label(unused, tz)}"
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
            return [ln for ln in kept_credits if credits_for(ln, seg, None) and in_advance_credit_here(ln)]
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
                    description=(f"{rc.name} billed above in advance, not used: {period_label(unused, sub.timezone)}"),
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

    def rated_total(self, rc: RateCard, quantity: Decimal, currency: str) -> Decimal:
        assert not isinstance(rc.price, FlatPrice)
        raw = rate_usage(rc.price, quantity).amount
        return self._round(apply_commitments(raw, rc.commitments).amount, currency)

    def _corrections(
        self,
        job: InvoiceJob,
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
                amount = self.rated_total(rc, now_qty, currency) - self.rated_total(rc, before, currency)
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
                            f"usage that arrived after invoice {inv.id} was issued, for {period_label(ln.period, tz)}"
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


__all__ = ["InvoiceLines", "credits_for", "missed_at_upgrade", "pays_for"]
