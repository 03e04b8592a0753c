"""Entitlements from plans: a rate card's `entitlementTemplate` becomes the customer's entitlement
while a subscription to the plan is active.

`sync(customer)` runs after every subscription start, end or plan change (the subscription service
tells it) and makes the customer's subscription-managed entitlements (annotated with
`subscription.id`) match their subscriptions: one per subscription and templated rate card, active
from the subscription's start to its end; a metered one's usage period is anchored at the
subscription's billing anchor, and usage is measured from its start. A plan change ends the old
subscription's entitlements where the new subscription's begin. Entitlements made by hand are
never touched; if one overlaps, the templated one is skipped and the refusal logged.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from decimal import Decimal
from typing import Any, Protocol

from tallybook.entitlements.model import METERED, STATIC, EntitlementError, EntitlementSpec, UsagePeriodSpec
from tallybook.entitlements.recurrence import Interval
from tallybook.entitlements.service import EntitlementService
from tallybook.errors import DomainError

log = logging.getLogger(__name__)

SUBSCRIPTION_ANNOTATION = "subscription.id"


class Subscriptions(Protocol):
    """What sync needs of tallybook.billing.subscriptions.SubscriptionService."""

    def of_customer_id(self, customer_id: str) -> Sequence[Any]:
        """Every subscription of the customer with this id, a deleted customer's too."""
        ...

    def plan_of(self, sub: Any) -> Any: ...


def spec_from_template(template: dict[str, Any], feature_key: str, sub: Any) -> EntitlementSpec:
    kind = template["type"]
    common: dict[str, Any] = {
        "type": kind,
        "feature_key": feature_key,
        "metadata": template.get("metadata"),
        "active_from": sub.active_from,
        "active_to": sub.active_to,
        "annotations": {SUBSCRIPTION_ANNOTATION: sub.id},
    }
    if kind == STATIC:
        return EntitlementSpec(**common, config=template["config"])
    if kind == METERED:
        issue = template.get("issueAfterReset")
        return EntitlementSpec(
            **common,
            usage_period=UsagePeriodSpec(Interval.parse(template["usagePeriod"]), sub.anchor),
            measure_usage_from=sub.active_from,
            is_soft_limit=bool(template.get("isSoftLimit", False)),
            issue_after_reset=None if issue is None else Decimal(str(issue)),
            issue_after_reset_priority=template.get("issueAfterResetPriority"),
            preserve_overage_at_reset=bool(template.get("preserveOverageAtReset", False)),
        )
    return EntitlementSpec(**common)


class SubscriptionEntitlements:
    def __init__(self, entitlements: EntitlementService, subscriptions: Subscriptions) -> None:
        self.entitlements = entitlements
        self.subscriptions = subscriptions

    def sync(self, customer_id: str) -> None:
        """Make the customer's subscription-managed entitlements match their subscriptions.

        Works on deleted customers too (cancelling a deleted customer's subscription ends its
        entitlements), but never creates an entitlement for one. A subscription whose plan cannot
        be read is logged and its entitlements left as they are; the others are still synced.
        """
        service = self.entitlements
        now = service.clock.now()
        customer = service.customers_by_id(customer_id)
        wanted: dict[tuple[str, str], tuple[Any, dict[str, Any]]] = {}
        unreadable: set[str] = set()
        for sub in self.subscriptions.of_customer_id(customer_id):
            try:
                plan = self.subscriptions.plan_of(sub)
            except DomainError as exc:
                unreadable.add(sub.id)
                log.warning(
                    "subscription's plan not read; its entitlements are left as they are",
                    extra={"customer_id": customer_id, "subscription_id": sub.id, "error": exc.detail},
                )
                continue
            for card in plan.rate_cards:
                template = getattr(card, "entitlement_template", None)
                if template is not None and card.feature_key:
                    wanted[(sub.id, card.feature_key)] = (sub, template)
        existing = [
            e
            for e in service.repository.entitlements([customer_id])
            if (e.annotations or {}).get(SUBSCRIPTION_ANNOTATION) is not None
        ]
        have = set()
        for entitlement in existing:
            key = ((entitlement.annotations or {})[SUBSCRIPTION_ANNOTATION], entitlement.feature_key)
            have.add(key)
            if key[0] in unreadable:
                continue
            if key not in wanted:
                service.repository.end_entitlement(entitlement.id, now)
                continue
            sub = wanted[key][0]
            if entitlement.active_to != sub.active_to:
                service.repository.set_active_to(entitlement.id, sub.active_to, now)
        if customer.deleted:
            return  # a deleted customer keeps what it had, ended as its subscriptions end; nothing new
        for key in sorted(wanted.keys() - have, key=lambda k: (wanted[k][0].active_from, k)):
            sub, template = wanted[key]
            if sub.active_to is not None and sub.active_to <= now:
                continue  # ended before its entitlement was made
            try:
                service.create_entitlement(customer, spec_from_template(template, key[1], sub))
            except EntitlementError as exc:
                log.warning(
                    "entitlement from a plan's rate card not created",
                    extra={
                        "customer_id": customer_id,
                        "subscription_id": sub.id,
                        "feature": key[1],
                        "error": exc.detail,
                    },
                )
