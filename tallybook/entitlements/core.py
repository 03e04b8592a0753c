"""The shared core of EntitlementService: collaborators (repository, customers, meters, clock),
owner look-ups (a customer by id or key, by id even if deleted, or by one of its subjects), the
entitlement look-ups every operation starts from, and the change listeners.

EntitlementService (service.py) is assembled from this core and one part per job: features.py,
grants.py and balances.py (resets, value, access, history).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import datetime, timedelta
from zoneinfo import ZoneInfo

from tallybook.clock import Clock, SystemClock
from tallybook.customers.model import Customer, CustomerNotFound
from tallybook.entitlements.model import (
    Entitlement,
    EntitlementError,
    EntitlementNotFound,
    Feature,
    FeatureNotFound,
    OwnerNotFound,
)
from tallybook.entitlements.ports import Customers, EntitlementRepository, Meters
from tallybook.entitlements.recurrence import Interval
from tallybook.errors import DomainError
from tallybook.meters.models import Meter
from tallybook.meters.windows import UnknownTimeZone, zone

log = logging.getLogger(__name__)

MIN_PERIOD = timedelta(hours=1)


class ServiceCore:
    """What every part of EntitlementService shares: its collaborators, owner and entitlement
    look-ups, and the change listeners."""

    def __init__(
        self,
        repository: EntitlementRepository,
        customers: Customers,
        meters: Meters,
        clock: Clock | None = None,
    ) -> None:
        self.repository = repository
        self.customers = customers
        self.meters = meters
        self.clock = clock or SystemClock()
        # Called after a change that can move a balance (grant, reset, override): the notifier
        # re-evaluates thresholds without waiting for its next pass.
        self.on_change: list[Callable[[Entitlement], None]] = []
        self._features: dict[str, Feature] = {}

    # -- owners ---------------------------------------------------------------------------------------
    def customer(self, id_or_key: str) -> Customer:
        try:
            return self.customers.resolve(id_or_key)
        except CustomerNotFound as exc:
            raise OwnerNotFound(str(exc)) from None

    def customers_by_id(self, customer_id: str) -> Customer:
        """The customer owning an entitlement (deleted customers too)."""
        try:
            return self.customers.get(customer_id)
        except CustomerNotFound as exc:
            raise OwnerNotFound(str(exc)) from None

    def customer_of_subject(self, subject: str) -> Customer:
        """The live customer a subject's usage is attributed to (its key, or one of its subjectKeys)."""
        owner = self.customers.customer_of_subjects([subject]).get(subject)
        if owner is None:
            raise OwnerNotFound(
                f"no customer has the subject {subject!r}; create a customer with key {subject!r} or with "
                f'"usageAttribution": {{"subjectKeys": ["{subject}"]}} first (entitlements belong to customers)'
            )
        return self.customer(owner)

    def feature(self, id_or_key: str) -> Feature:
        found = self.repository.feature(id_or_key)
        if found is None:
            raise FeatureNotFound(f"no feature has the id or key {id_or_key!r}")
        return found

    def entitlement(self, entitlement_id: str) -> Entitlement:
        found = self.repository.entitlement(entitlement_id)
        if found is None:
            raise EntitlementNotFound(f"no entitlement has the id {entitlement_id!r}")
        return found

    def entitlement_of(self, customer: Customer, id_or_feature: str, include_deleted: bool = False) -> Entitlement:
        """The customer's entitlement with this id, or its live entitlement to the feature with this key."""
        found = self.repository.entitlement(id_or_feature)
        if found is not None and found.customer_id == customer.id and (include_deleted or found.deleted_at is None):
            return found
        live = self.repository.entitlements([customer.id], [id_or_feature])
        if live:
            return current_of(live, self.clock.now())
        raise EntitlementNotFound(
            f"customer {customer.key or customer.id!r} has no entitlement with id or feature key {id_or_feature!r}"
        )

    # -- internals ------------------------------------------------------------------------------------
    def _meter(self, slug: str, error: type[EntitlementError]) -> Meter:
        try:
            return self.meters.get(slug)
        except DomainError:
            raise error(f"no meter has the slug {slug!r}") from None

    def zone_of(self, customer: Customer) -> ZoneInfo:
        """The customer's time zone (UTC when it has none or an unknown one)."""
        try:
            return zone(customer.timezone or "UTC")
        except UnknownTimeZone:
            return zone("UTC")

    def _feature_of(self, entitlement: Entitlement) -> Feature:
        """An entitlement's feature. What a balance reads of it (meter, group-by filters) never
        changes after creation (features are archived, not edited), so it is kept once read."""
        cached = self._features.get(entitlement.feature_id)
        if cached is None:
            cached = self._features[entitlement.feature_id] = self.feature(entitlement.feature_id)
        return cached

    def _changed(self, entitlement: Entitlement) -> None:
        for listener in self.on_change:
            try:
                listener(entitlement)
            except Exception:
                log.exception("entitlement change listener failed", extra={"entitlement_id": entitlement.id})


def current_of(entitlements: Sequence[Entitlement], at: datetime) -> Entitlement:
    """Of one customer's live entitlements to a feature (a plan change can schedule the next one),
    the one active at `at`, else the one that starts next, else the latest."""
    active = [e for e in entitlements if e.active_at(at)]
    if active:
        return active[0]
    upcoming = sorted((e for e in entitlements if e.active_from > at), key=lambda e: e.active_from)
    if upcoming:
        return upcoming[0]
    return max(entitlements, key=lambda e: e.active_from)


def parse_interval(text: str) -> Interval:
    try:
        return Interval.parse(text)
    except ValueError as exc:
        raise EntitlementError(str(exc)) from None
