"""EntitlementService on the in-memory repository (no database): the rules that live in the service
rather than the engine: one entitlement per customer and feature at any instant (a plan change can
schedule the next), which one a feature key means, the default grant, refusals."""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest

from tallybook.clock import FixedClock
from tallybook.customers.model import Customer, CustomerNotFound
from tallybook.entitlements.memory import MemoryEntitlementRepository
from tallybook.entitlements.model import (
    EntitlementConflict,
    EntitlementError,
    EntitlementSpec,
    FeatureSpec,
    GrantSpec,
    InvalidReset,
    NotMetered,
    OwnerNotFound,
    ResetSpec,
    UsagePeriodSpec,
)
from tallybook.entitlements.recurrence import Interval
from tallybook.entitlements.service import EntitlementService
from tallybook.meters.models import Aggregation, Meter, MeterNotFound

T0 = datetime(2026, 3, 10, 12, 0, tzinfo=UTC)


def customer(key: str = "acme") -> Customer:
    return Customer(
        id=f"01JCUST{key.upper():0<19}"[:26],
        name=key,
        key=key,
        description=None,
        primary_email=None,
        currency=None,
        timezone=None,
        billing_address=None,
        metadata=None,
        subject_keys=(key,),
        created_at=T0,
        updated_at=T0,
        deleted_at=None,
    )


class Customers:
    def __init__(self, *found: Customer) -> None:
        self.found = {c.key: c for c in found} | {c.id: c for c in found}

    def resolve(self, id_or_key: str) -> Customer:
        if id_or_key not in self.found:
            raise CustomerNotFound(id_or_key)
        return self.found[id_or_key]

    get = resolve

    def customer_of_subjects(self, subjects: Sequence[str]) -> dict[str, str]:
        return {s: self.found[s].id for s in subjects if s in self.found}


class Meters:
    """A SUM meter whose usage is a list of (time, amount) events."""

    def __init__(self) -> None:
        self.events: list[tuple[datetime, Decimal]] = []

    def get(self, slug: str) -> Meter:
        if slug not in ("api_calls", "seats"):
            raise MeterNotFound(slug)
        aggregation = Aggregation.SUM if slug == "api_calls" else Aggregation.MAX
        return Meter(slug, 1, slug, slug, None, slug, aggregation, "$.v", {}, None, None, "api", T0, T0, None)

    def usage_in_ranges(
        self, meter: str, bounds: Sequence[datetime], subjects: Sequence[str], filter_group_by: dict[str, str]
    ) -> list[Decimal]:
        return [
            sum((v for t, v in self.events if left <= t < right), Decimal(0))
            for left, right in itertools.pairwise(bounds)
        ]


@pytest.fixture
def clock() -> FixedClock:
    return FixedClock(T0)


@pytest.fixture
def parts(clock: FixedClock) -> tuple[EntitlementService, Meters, Customer]:
    acme = customer()
    meters = Meters()
    service = EntitlementService(MemoryEntitlementRepository(), Customers(acme), meters, clock)
    service.create_feature(FeatureSpec("api_calls", "API calls", "api_calls"))
    service.create_feature(FeatureSpec("seats", "Seats", "seats"))
    service.create_feature(FeatureSpec("sso", "SSO"))
    return service, meters, acme


def metered(**extra: object) -> EntitlementSpec:
    return EntitlementSpec(
        type="metered",
        feature_key="api_calls",
        usage_period=UsagePeriodSpec(Interval("MONTH")),
        **extra,  # type: ignore[arg-type]
    )


def test_default_grant_and_value(parts: tuple[EntitlementService, Meters, Customer], clock: FixedClock) -> None:
    service, meters, acme = parts
    entitlement = service.create_entitlement(acme, metered(issue_after_reset=Decimal(100)))
    grants = service.grants_of(acme, "api_calls")
    assert [(g.amount, g.min_rollover, g.max_rollover, g.priority) for g in grants] == [(100, 100, 100, 1)]
    meters.events.append((T0 + timedelta(minutes=1), Decimal(40)))
    clock.advance(timedelta(hours=1))
    value = service.value(acme, "api_calls")
    assert (value.has_access, value.balance, value.usage) == (True, 60, 40)
    assert service.value(acme, entitlement.id).balance == 60  # by id too


def test_one_entitlement_per_feature_at_any_instant(parts: tuple[EntitlementService, Meters, Customer]) -> None:
    service, _, acme = parts
    first = service.create_entitlement(acme, EntitlementSpec("boolean", "sso", active_to=T0 + timedelta(days=10)))
    with pytest.raises(EntitlementConflict):
        service.create_entitlement(acme, EntitlementSpec("boolean", "sso"))
    # Scheduled to start where the first one ends: allowed, and the key means the active one.
    later = service.create_entitlement(acme, EntitlementSpec("boolean", "sso", active_from=T0 + timedelta(days=10)))
    assert service.entitlement_of(acme, "sso").id == first.id
    assert service.value(acme, "sso", T0 + timedelta(days=11)).entitlement.id == later.id
    assert service.value(acme, "sso", T0 + timedelta(days=11)).has_access


def test_refusals(parts: tuple[EntitlementService, Meters, Customer], clock: FixedClock) -> None:
    service, _, acme = parts
    with pytest.raises(EntitlementError, match="SUM or COUNT"):
        service.create_entitlement(
            acme, EntitlementSpec("metered", "seats", usage_period=UsagePeriodSpec(Interval("MONTH")))
        )
    service.create_entitlement(acme, EntitlementSpec("boolean", "sso"))
    with pytest.raises(NotMetered):
        service.create_grant(acme, "sso", GrantSpec(Decimal(1), T0))
    with pytest.raises(OwnerNotFound, match="subjectKeys"):
        service.customer_of_subject("nobody")
    entitlement = service.create_entitlement(acme, metered())
    with pytest.raises(InvalidReset, match="future"):
        service.reset(acme, entitlement.id, ResetSpec(T0 + timedelta(hours=1)))
    clock.advance(timedelta(hours=2))
    service.reset(acme, entitlement.id, ResetSpec())
    with pytest.raises(InvalidReset, match="period"):
        service.reset(acme, entitlement.id, ResetSpec(T0 + timedelta(hours=1)))
