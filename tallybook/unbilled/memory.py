"""In-memory sources for unit tests of the report: events as (meter, subject, time, value) with an
ingest and an optional void instant, customers with their subjects, and subscriptions' coverage.

Aggregation here is SUM or MAX per meter, enough to check that spans are aggregated as a whole
(a MAX over a span is not the sum of smaller windows' MAXes)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal

from tallybook.unbilled.model import Coverage, Customer, Span


@dataclass(frozen=True, slots=True)
class MemoryEvent:
    meter: str
    subject: str
    time: datetime
    value: Decimal
    ingested: datetime
    voided: datetime | None = None


@dataclass
class MemorySources:
    aggregations: dict[str, str] = field(default_factory=dict)  # meter -> SUM | MAX
    events: list[MemoryEvent] = field(default_factory=list)
    customer_of: dict[str, str] = field(default_factory=dict)  # subject -> customer id
    customer_rows: dict[str, Customer] = field(default_factory=dict)
    subscriptions: dict[str, list[Coverage]] = field(default_factory=dict)

    # -- UsageSource
    def meters(self) -> list[str]:
        return sorted(self.aggregations)

    def _counted(self, meter: str, span: Span, as_of: datetime | None) -> list[MemoryEvent]:
        return [
            e
            for e in self.events
            if e.meter == meter
            and span.start <= e.time < span.end
            and (as_of is None or e.ingested <= as_of)
            and (e.voided is None or (as_of is not None and e.voided > as_of))
        ]

    def _aggregate(self, meter: str, values: list[Decimal]) -> Decimal:
        return max(values) if self.aggregations[meter] == "MAX" else sum(values, Decimal(0))

    def by_subject(self, meter: str, span: Span, as_of: datetime | None) -> list[tuple[str, str | None, Decimal]]:
        grouped: dict[str, list[Decimal]] = {}
        for e in self._counted(meter, span, as_of):
            grouped.setdefault(e.subject, []).append(e.value)
        return [(s, self.customer_of.get(s), self._aggregate(meter, v)) for s, v in sorted(grouped.items())]

    def by_customer(
        self, meter: str, span: Span, customer_ids: Sequence[str], as_of: datetime | None
    ) -> dict[str, Decimal]:
        grouped: dict[str, list[Decimal]] = {}
        for e in self._counted(meter, span, as_of):
            customer = self.customer_of.get(e.subject)
            if customer is not None and customer in customer_ids:
                grouped.setdefault(customer, []).append(e.value)
        return {c: self._aggregate(meter, v) for c, v in grouped.items()}

    # -- BillingSource
    def customers(self, customer_ids: Sequence[str]) -> dict[str, Customer]:
        return {c: self.customer_rows[c] for c in customer_ids if c in self.customer_rows}

    def coverage(self, customer_ids: Sequence[str], span: Span) -> dict[str, list[Coverage]]:
        return {
            c: [
                s
                for s in self.subscriptions.get(c, [])
                if s.active_from < span.end and (s.active_to is None or s.active_to > span.start)
            ]
            for c in customer_ids
        }


__all__ = ["MemoryEvent", "MemorySources"]
