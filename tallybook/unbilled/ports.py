"""What the unbilled-usage report needs from the rest of Tallybook: meter usage and who is
subscribed to what. tallybook/unbilled/sql.py implements them over the meters and billing
services; memory.py holds them in lists for unit tests."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal
from typing import Protocol

from tallybook.unbilled.model import Coverage, Customer, Span


class UsageSource(Protocol):
    def meters(self) -> list[str]:
        """The live meters' slugs."""
        ...

    def by_subject(self, meter: str, span: Span, as_of: datetime | None) -> list[tuple[str, str | None, Decimal]]:
        """(subject, its customer id or None, the meter's aggregate) for every subject with events
        in the span: one grouped query."""
        ...

    def by_customer(
        self, meter: str, span: Span, customer_ids: Sequence[str], as_of: datetime | None
    ) -> dict[str, Decimal]:
        """The meter's aggregate over the span for each of these customers that has events in it."""
        ...


class BillingSource(Protocol):
    def customers(self, customer_ids: Sequence[str]) -> dict[str, Customer]: ...

    def coverage(self, customer_ids: Sequence[str], span: Span) -> dict[str, list[Coverage]]:
        """Each customer's subscriptions active at some point in the span."""
        ...


__all__ = ["BillingSource", "UsageSource"]
