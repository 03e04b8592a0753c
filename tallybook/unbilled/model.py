"""Unbilled usage: what the report asks, and what it answers.

A row is usage (a meter's aggregate over a span of time) that no invoice will ever carry, with the
reason: its subject belongs to no customer; its customer has no subscription covering that time;
or the subscriptions covering it have no usage price on that meter.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from enum import StrEnum

from tallybook.errors import DomainError

MAX_RANGE = timedelta(days=366)


class Reason(StrEnum):
    SUBJECT_WITHOUT_CUSTOMER = "subject_without_customer"
    NO_SUBSCRIPTION = "no_subscription"
    METER_NOT_PRICED = "meter_not_priced"


REASONS = tuple(r.value for r in Reason)


class InvalidUnbilledQuery(DomainError):
    status = 400
    code = "invalid-unbilled-query"


@dataclass(frozen=True, slots=True)
class Span:
    """[start, end): instants, start < end."""

    start: datetime
    end: datetime


@dataclass(frozen=True, slots=True)
class UnbilledQuery:
    """Usage with event time in [from_, to), counted as of `as_of` (None: now; voids respected)."""

    from_: datetime
    to: datetime
    as_of: datetime | None = None
    reasons: tuple[str, ...] = ()  # empty: all
    meters: tuple[str, ...] = ()  # meter slugs; empty: all live meters

    def check(self) -> None:
        """Raise InvalidUnbilledQuery naming every problem."""
        problems = []
        for name, value in (("from", self.from_), ("to", self.to), ("asOf", self.as_of)):
            if value is not None and value.tzinfo is None:
                problems.append(f"{name}: needs a time zone offset, e.g. 2026-01-01T00:00:00Z")
        if not problems:
            if self.from_ >= self.to:
                problems.append("from must be before to")
            elif self.to - self.from_ > MAX_RANGE:
                problems.append(f"from and to may be at most {MAX_RANGE.days} days apart; ask month by month")
        unknown = [r for r in self.reasons if r not in REASONS]
        if unknown:
            problems.append(f"reason: must be one of {', '.join(REASONS)}, got {', '.join(unknown)}")
        if problems:
            raise InvalidUnbilledQuery("; ".join(problems))

    def wants(self, reason: Reason) -> bool:
        return not self.reasons or reason.value in self.reasons


@dataclass(frozen=True, slots=True)
class Customer:
    id: str
    key: str | None
    name: str
    timezone: str  # IANA; the report's months for this customer are in this zone


@dataclass(frozen=True, slots=True)
class Coverage:
    """A subscription's active time and the meters its plan prices by usage."""

    subscription_id: str
    plan: str  # "pro v2"
    active_from: datetime
    active_to: datetime | None
    priced_meters: frozenset[str]


@dataclass(frozen=True, slots=True)
class UnbilledRow:
    reason: Reason
    meter: str
    period: Span
    quantity: Decimal
    subject: str | None = None  # subject_without_customer
    customer: Customer | None = None  # the other reasons
    detail: str = ""


@dataclass(frozen=True, slots=True)
class UnbilledReport:
    query: UnbilledQuery
    generated_at: datetime
    rows: list[UnbilledRow] = field(default_factory=list)


__all__ = [
    "MAX_RANGE",
    "REASONS",
    "Coverage",
    "Customer",
    "InvalidUnbilledQuery",
    "Reason",
    "Span",
    "UnbilledQuery",
    "UnbilledReport",
    "UnbilledRow",
]
