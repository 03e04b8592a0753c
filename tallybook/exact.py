"""Exact decimal arithmetic for quantities and money, and whole-second durations for proration.

Python's default Decimal context keeps 28 significant digits and rounds silently beyond them. The
metered value domain (tallybook/ingest/limits.py) bounds each value (|v| < 10^12, 6 decimals), not
the sums of many of them: a meter total, a billed quantity plus its corrections or an invoice total
can need more digits. Every sum, difference and product of quantities and amounts in billing runs
inside `exact()`, whose precision covers any figure the store can hold, so nothing accepted is cut;
the only rounding is the one per invoice line to the currency's minor unit (`round_money`).

Proration counts whole seconds, as the docs promise: each instant is truncated to the second it
falls in before a duration is taken, so the shares of any split of a period still add up to the
whole period (every part is measured between truncated instants).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from datetime import datetime
from decimal import Context, Decimal, localcontext

from tallybook.clock import to_micros

# Significant digits: PostgreSQL's numeric holds up to 131,072 digits before the point and 16,383
# after it; quantities and amounts that billing adds up stay far below 400 digits in practice, and
# Decimal arithmetic costs nothing extra for digits a figure does not have.
PRECISION = 400
ZERO = Decimal(0)
# For hot loops (an aggregate's step): `CONTEXT.add(a, b)` costs no context switch.
CONTEXT = Context(prec=PRECISION, Emax=999_999, Emin=-999_999)


@contextmanager
def exact() -> Iterator[None]:
    """A Decimal context in which sums, differences and products of billing figures are exact."""
    with localcontext(CONTEXT):
        yield


def total(values: Iterable[Decimal], start: Decimal = ZERO) -> Decimal:
    """The exact sum of `values` (plus `start`)."""
    with exact():
        return sum(values, start)


def epoch_second(when: datetime) -> int:
    """The whole second an instant falls in (truncated, also before 1970), in seconds since the epoch."""
    return to_micros(when) // 1_000_000


def whole_seconds(start: datetime, end: datetime) -> int:
    """The seconds from `start` to `end`, both truncated to their second first."""
    return epoch_second(end) - epoch_second(start)


__all__ = ["CONTEXT", "PRECISION", "epoch_second", "exact", "total", "whole_seconds"]
