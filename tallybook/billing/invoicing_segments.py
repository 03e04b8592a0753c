"""What an invoice is computed from: a subscription's segments of a billing period, and the job
(one invoice to compute: its key, its segments, the stored draft, the billed invoices it corrects).

`key_segments` decides which subscription puts what on which invoice (opening, period, in-advance
fees of the next period, plan changes); see tallybook/billing/invoicing.py for the invoice kinds.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from tallybook.billing.invoicing_model import (
    CORRECTION,
    OPENING,
    Invoice,
    InvoiceKey,
    UsageKey,
    billed_in_advance,
)
from tallybook.billing.models import FlatPrice, PlanVersion
from tallybook.billing.periods import Period
from tallybook.billing.subscriptions import Subscription


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


@dataclass
class InvoiceJob:
    """One invoice to compute: its key, its segments, and (for drafts) the stored invoice."""

    key: InvoiceKey
    segments: list[Segment]
    existing: Invoice | None = None
    corrections_allowed: bool = True
    previous: list[Invoice] = field(default_factory=list)  # billed invoices to correct


def segment_usage_keys(segments: Iterable[Segment]) -> Iterable[UsageKey]:
    for seg in segments:
        if seg.advance:
            continue
        for rc in seg.plan.rate_cards:
            if rc.meter is not None and not isinstance(rc.price, FlatPrice):
                yield (rc.meter, seg.covered.start, seg.covered.end)


def opening_key(sub: Subscription) -> InvoiceKey:
    """The key of a subscription's opening invoice: its start to the end of its first period."""
    first = sub.schedule.period_containing(sub.active_from)
    return (sub.customer_id, sub.currency, Period(sub.active_from, first.end), OPENING)


def key_segments(sub: Subscription, key: InvoiceKey, plan_of: Callable[[Subscription], PlanVersion]) -> list[Segment]:
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
            plan = plan_of(sub)
            if any(billed_in_advance(rc) for rc in plan.rate_cards):  # else nothing to open with
                out.append(Segment(sub, plan, first, covered, advance=True))
        return out
    covered = sub.covered(period)
    if covered is not None and schedule.period_containing(period.start) == period:
        plan = plan_of(sub)
        out.append(Segment(sub, plan, period, covered))
        if sub.previous_id is not None and period.start < sub.active_from:
            out.append(Segment(sub, plan, period, covered, advance=True))
    following = schedule.period_containing(period.end)
    next_covered = sub.covered(following)
    if following.start == period.end and next_covered is not None:
        started_before = sub.active_from < following.start
        changed_at_boundary = sub.active_from == following.start and sub.previous_id is not None
        if started_before or changed_at_boundary:
            out.append(Segment(sub, plan_of(sub), following, next_covered, advance=True))
    return out


__all__ = ["InvoiceJob", "Segment", "key_segments", "opening_key", "segment_usage_keys"]
