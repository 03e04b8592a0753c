"""Subscriptions: a customer on a published plan version from a start to an optional end.

- The plan version fixes the currency and the cadence; the customer's time zone (UTC when it has
  none) is captured at the start, so later changes to the customer do not move past periods.
- `alignment`: `anniversary` (default) anchors periods at the subscription's start, or at an
  explicit `billing_anchor`; `calendar` anchors them on calendar starts (the 1st, Monday, 1 Jan).
- A customer has at most one subscription at any instant: overlapping ones are refused (409).
- Cancel `immediate` ends it now, `next_billing_cycle` at the end of the current period, or at a
  given instant. A plan change ends the subscription at the change time and starts a new one on the
  other plan version right there, keeping the billing anchor, so the period that holds the change is
  billed once with both parts prorated. "Now" is read from the clock once per request.
- Listeners registered with `on_end` run after a cancel or change commits: billing gives back the
  in-advance time not used there (tallybook/billing/cancel_credits.py).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any, Literal

from tallybook.billing.models import BillingCadence, Cadence, PlanVersion
from tallybook.billing.periods import Alignment, InvalidPeriod, Period, Schedule, zone
from tallybook.billing.subscriptions_ports import SubscriptionStorage
from tallybook.clock import Clock, from_micros, to_micros
from tallybook.customers import CustomerNotFound, CustomerService
from tallybook.errors import DomainError
from tallybook.ids import new_ulid

log = logging.getLogger(__name__)

Timing = Literal["immediate", "next_billing_cycle"] | datetime
PlanLookup = Callable[[str, int | None], PlanVersion]
EndListener = Callable[["Subscription"], object]


class SubscriptionError(DomainError):
    status = 400
    code = "invalid-subscription"


class InvalidSubscription(SubscriptionError):
    pass


class SubscriptionNotFound(SubscriptionError):
    status = 404
    code = "subscription-not-found"


class SubscriptionConflict(SubscriptionError):
    status = 409
    code = "subscription-conflict"


class CustomerMissing(SubscriptionError):
    status = 404
    code = "customer-not-found"


class PlanNotFound(SubscriptionError):
    """Raised by plan lookups when no published plan version matches."""

    status = 404
    code = "plan-not-found"


@dataclass(frozen=True, slots=True)
class Subscription:
    id: str
    customer_id: str
    name: str
    plan_key: str
    plan_version: int
    currency: str
    cadence: Cadence
    alignment: Alignment
    anchor: datetime
    timezone: str
    active_from: datetime
    active_to: datetime | None
    canceled_at: datetime | None
    previous_id: str | None
    next_id: str | None
    billed_through: datetime | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime

    @property
    def schedule(self) -> Schedule:
        return Schedule.aligned(self.cadence, self.alignment, self.timezone, self.anchor)

    def covered(self, period: Period) -> Period | None:
        """The part of a billing period this subscription was active in."""
        return period.overlap(self.active_from, self.active_to)

    def status(self, now: datetime) -> str:
        if self.active_to is not None and self.active_to <= now:
            return "inactive"
        if self.active_from > now:
            return "scheduled"
        return "canceled" if self.active_to is not None else "active"


@dataclass(frozen=True, slots=True)
class SubscriptionInput:
    customer: str  # id or key
    plan_key: str
    plan_version: int | None = None  # None: the published version
    active_from: datetime | None = None  # None: now
    active_to: datetime | None = None
    alignment: Alignment = Alignment.ANNIVERSARY
    billing_anchor: datetime | None = None
    name: str | None = None
    metadata: dict[str, str] | None = None


def subscription_from_row(row: dict[str, Any]) -> Subscription:
    return Subscription(
        id=row["id"],
        customer_id=row["customer_id"],
        name=row["name"],
        plan_key=row["plan_key"],
        plan_version=int(row["plan_version"]),
        currency=row["currency"],
        cadence=Cadence(BillingCadence(row["cadence"]), row["cadence_days"]),
        alignment=Alignment(row["alignment"]),
        anchor=from_micros(row["anchor_us"]),
        timezone=row["timezone"],
        active_from=from_micros(row["active_from_us"]),
        active_to=None if row["active_to_us"] is None else from_micros(row["active_to_us"]),
        canceled_at=None if row["canceled_us"] is None else from_micros(row["canceled_us"]),
        previous_id=row["previous_id"],
        next_id=row["next_id"],
        billed_through=None if row["billed_through_us"] is None else from_micros(row["billed_through_us"]),
        metadata=row["metadata"],
        created_at=from_micros(row["created_us"]),
        updated_at=from_micros(row["updated_us"]),
    )


def _row(sub: Subscription) -> dict[str, Any]:
    return {
        "id": sub.id,
        "customer_id": sub.customer_id,
        "name": sub.name,
        "plan_key": sub.plan_key,
        "plan_version": sub.plan_version,
        "currency": sub.currency,
        "cadence": sub.cadence.kind.value,
        "cadence_days": sub.cadence.days,
        "alignment": sub.alignment.value,
        "anchor_us": to_micros(sub.anchor),
        "timezone": sub.timezone,
        "active_from_us": to_micros(sub.active_from),
        "active_to_us": None if sub.active_to is None else to_micros(sub.active_to),
        "canceled_us": None if sub.canceled_at is None else to_micros(sub.canceled_at),
        "previous_id": sub.previous_id,
        "next_id": sub.next_id,
        "billed_through_us": None if sub.billed_through is None else to_micros(sub.billed_through),
        "metadata": sub.metadata,
        "created_us": to_micros(sub.created_at),
        "updated_us": to_micros(sub.updated_at),
    }


def _aware(value: datetime | None, name: str) -> None:
    if value is not None and value.tzinfo is None:
        raise InvalidSubscription(f"{name} needs a time zone offset, e.g. 2026-01-01T00:00:00Z")


def _overlaps(a_from: datetime, a_to: datetime | None, b_from: datetime, b_to: datetime | None) -> bool:
    if (a_to is not None and a_to <= a_from) or (b_to is not None and b_to <= b_from):
        return False
    return (b_to is None or a_from < b_to) and (a_to is None or b_from < a_to)


class SubscriptionService:
    def __init__(
        self, storage: SubscriptionStorage, clock: Clock, customers: CustomerService, plans: PlanLookup
    ) -> None:
        self.storage = storage
        self.clock = clock
        self.customers = customers
        self.plans = plans
        self._end_listeners: list[EndListener] = []
        # Told the customer id after a subscription of theirs starts, ends or changes (e.g. the
        # entitlements a plan's rate cards carry: tallybook/entitlements/subscriptions.py).
        self.listeners: list[Callable[[str], None]] = []

    def _changed(self, customer_id: str) -> None:
        for listener in self.listeners:
            try:
                listener(customer_id)
            except Exception:
                log.exception("subscription listener failed", extra={"customer_id": customer_id})

    # -- reading ------------------------------------------------------------------------------------
    def get(self, subscription_id: str) -> Subscription:
        with self.storage.reading() as tx:
            row = tx.get(subscription_id)
        if row is None:
            raise SubscriptionNotFound(f"no subscription has the id {subscription_id!r}")
        return subscription_from_row(row)

    def list_subscriptions(self, customer: str | None = None, limit: int = 100, offset: int = 0) -> list[Subscription]:
        ids = None if customer is None else [self.customer_id(customer)]
        with self.storage.reading() as tx:
            rows = tx.list(ids, limit=limit, offset=offset)
        return [subscription_from_row(r) for r in rows]

    def of_customer_id(self, customer_id: str) -> list[Subscription]:
        """Every subscription of the customer with this id, oldest first; a deleted customer's too
        (no live-customer lookup: listeners run after a deleted customer's subscription is cancelled)."""
        with self.storage.reading() as tx:
            rows = tx.list([customer_id])
        return [subscription_from_row(r) for r in rows]

    def of_customers(self, customer_ids: list[str], start: datetime, end: datetime) -> list[Subscription]:
        """Subscriptions of these customers active at some point in [start, end)."""
        with self.storage.reading() as tx:
            rows = tx.list(customer_ids, overlapping=(to_micros(start), to_micros(end)))
        return [subscription_from_row(r) for r in rows]

    def plan_of(self, sub: Subscription) -> PlanVersion:
        return self.plans(sub.plan_key, sub.plan_version)

    # -- changing ------------------------------------------------------------------------------------
    def create(self, data: SubscriptionInput, previous_id: str | None = None) -> Subscription:
        now = self.clock.now()
        for name, value in (
            ("activeFrom", data.active_from),
            ("activeTo", data.active_to),
            ("billingAnchor", data.billing_anchor),
        ):
            _aware(value, name)
        customer = self.customer(data.customer)
        plan = self.plans(data.plan_key, data.plan_version)
        if plan.status != "published":
            raise InvalidSubscription(
                f"plan {plan.plan_key!r} version {plan.version} is {plan.status}; subscribe to a published version"
            )
        if customer.currency is not None and customer.currency != plan.currency:
            raise InvalidSubscription(
                f"plan {plan.plan_key!r} is priced in {plan.currency} but customer {customer.id} pays in "
                f"{customer.currency}; pick a plan in {customer.currency} or change the customer's currency"
            )
        active_from = data.active_from or now
        if data.active_to is not None and data.active_to <= active_from:
            raise InvalidSubscription("activeTo must be after activeFrom")
        tz = customer.timezone or "UTC"
        try:
            zone(tz)
            anchor = data.billing_anchor or active_from
            sub = Subscription(
                id=new_ulid(now),
                customer_id=customer.id,
                name=data.name or plan.name,
                plan_key=plan.plan_key,
                plan_version=plan.version,
                currency=plan.currency,
                cadence=plan.cadence,
                alignment=Alignment(data.alignment),
                anchor=anchor,
                timezone=tz,
                active_from=active_from,
                active_to=data.active_to,
                canceled_at=None,
                previous_id=previous_id,
                next_id=None,
                billed_through=None,
                metadata=data.metadata,
                created_at=now,
                updated_at=now,
            )
            sub.schedule.period_containing(active_from)  # checks the cadence and anchor
        except (InvalidPeriod, ValueError) as exc:
            raise InvalidSubscription(str(exc)) from None
        with self.storage.writing() as tx:
            existing = tx.list([customer.id])
            for row in existing:
                other = subscription_from_row(row)
                if other.id != previous_id and _overlaps(
                    active_from, data.active_to, other.active_from, other.active_to
                ):
                    raise SubscriptionConflict(
                        f"customer {customer.id} already has subscription {other.id} in that time "
                        f"(from {other.active_from.isoformat()}); cancel it or change its plan instead",
                        subscriptionId=other.id,
                    )
            tx.insert(_row(sub))
            if previous_id is not None:
                tx.update(previous_id, {"next_id": sub.id})
        self._changed(sub.customer_id)
        return sub

    def on_end(self, listener: EndListener) -> None:
        """Call `listener` with the subscription after a cancel or plan change has ended it (committed).

        Billing issues the credit for in-advance time paid for but not used this way, at the moment
        the end is set (tallybook/billing/cancel_credits.py). A listener that fails is logged and
        skipped: the end stands, and the invoice of the period it falls in carries the credit.
        """
        self._end_listeners.append(listener)

    def cancel(self, subscription_id: str, timing: Timing = "immediate") -> Subscription:
        with self._changing(subscription_id):
            sub = self.get(subscription_id)
            now = self.clock.now()
            ended = self._end(sub, self._resolve_timing(sub, timing, now), now)
            self._ended(ended)
            self._changed(sub.customer_id)
            return ended

    def change(
        self, subscription_id: str, plan_key: str, plan_version: int | None, timing: Timing = "immediate"
    ) -> tuple[Subscription, Subscription]:
        """End the subscription at `timing` and start one on the other plan version there.

        The change instant is resolved once, from one reading of the clock: "immediate" is that
        instant, and ending the old subscription does not check it against a later reading.
        """
        with self._changing(subscription_id):
            return self._change(subscription_id, plan_key, plan_version, timing)

    def _change(
        self, subscription_id: str, plan_key: str, plan_version: int | None, timing: Timing
    ) -> tuple[Subscription, Subscription]:
        sub = self.get(subscription_id)
        now = self.clock.now()
        at = max(self._resolve_timing(sub, timing, now), sub.active_from)
        if sub.active_to is not None and sub.active_to <= at:
            raise SubscriptionConflict(f"subscription {sub.id} ends at {sub.active_to.isoformat()}, before the change")
        plan = self.plans(plan_key, plan_version)
        if plan.currency != sub.currency:
            raise InvalidSubscription(
                f"plan {plan.plan_key!r} is priced in {plan.currency}; a plan change keeps the currency {sub.currency}"
            )
        old_end = sub.active_to
        ended = self._end(sub, at, now)
        try:
            new = self.create(
                SubscriptionInput(
                    customer=sub.customer_id,
                    plan_key=plan.plan_key,
                    plan_version=plan.version,
                    active_from=at,
                    active_to=old_end,
                    alignment=sub.alignment,
                    billing_anchor=sub.anchor,
                    metadata=sub.metadata,
                ),
                previous_id=sub.id,
            )
        except SubscriptionError:
            with self.storage.writing() as tx:  # put the old end back: the change did not happen
                tx.update(
                    sub.id,
                    {
                        "active_to_us": None if old_end is None else to_micros(old_end),
                        "canceled_us": None if sub.canceled_at is None else to_micros(sub.canceled_at),
                    },
                )
            self._changed(sub.customer_id)
            raise
        ended = replace(ended, next_id=new.id)
        self._ended(ended)
        return ended, new

    # -- internals -------------------------------------------------------------------------------------
    @contextmanager
    def _changing(self, subscription_id: str) -> Iterator[None]:
        """One change of a subscription at a time, from reading it to the credits its end gives:
        two cancels at once would otherwise both see the in-advance fee not yet credited and both
        credit it. The second is refused (409) rather than queued: its caller reads the result of
        the first and decides again."""
        with self.storage.changing(subscription_id) as held:
            if not held:
                raise SubscriptionConflict(
                    f"subscription {subscription_id} is being changed by another request; read it again and retry"
                )
            yield

    def _end(self, sub: Subscription, end: datetime, now: datetime) -> Subscription:
        """Set the subscription's end (not before its start: canceled before it starts, it never runs)."""
        if sub.active_to is not None and sub.active_to <= now:
            raise SubscriptionConflict(f"subscription {sub.id} already ended at {sub.active_to.isoformat()}")
        end = max(end, sub.active_from)
        with self.storage.writing() as tx:
            tx.update(
                sub.id,
                {"active_to_us": to_micros(end), "canceled_us": to_micros(now), "updated_us": to_micros(now)},
            )
        return replace(sub, active_to=end, canceled_at=now, updated_at=now)

    def _ended(self, sub: Subscription) -> None:
        for listener in self._end_listeners:
            try:
                listener(sub)
            except Exception:
                log.exception(
                    "a subscription-end listener failed; the period's invoice carries what it missed",
                    extra={"subscription_id": sub.id},
                )

    def _resolve_timing(self, sub: Subscription, timing: Timing, now: datetime) -> datetime:
        if isinstance(timing, datetime):
            _aware(timing, "timing")
            if timing < now:
                raise InvalidSubscription("timing must not be in the past")
            return timing
        if timing == "immediate":
            return now
        if timing == "next_billing_cycle":
            return sub.schedule.period_containing(max(now, sub.active_from)).end
        raise InvalidSubscription("timing must be 'immediate', 'next_billing_cycle' or a date-time")

    def customer(self, ref: str) -> Any:
        """A live customer by id or key (CustomerMissing, a 404, when there is none)."""
        try:
            return self.customers.resolve(ref)
        except CustomerNotFound as exc:
            raise CustomerMissing(str(exc), customerIdOrKey=ref) from None

    def customer_id(self, ref: str) -> str:
        return str(self.customer(ref).id)


__all__ = [
    "CustomerMissing",
    "EndListener",
    "InvalidSubscription",
    "PlanLookup",
    "PlanNotFound",
    "Subscription",
    "SubscriptionConflict",
    "SubscriptionError",
    "SubscriptionInput",
    "SubscriptionNotFound",
    "SubscriptionService",
    "Timing",
    "subscription_from_row",
]
