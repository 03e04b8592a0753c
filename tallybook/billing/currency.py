"""Currencies: ISO 4217 codes, their minor units (from Babel's CLDR data) and money rounding.

Amounts are computed unrounded in Decimal and rounded once, per invoice line, with `round_money`:
to the currency's minor unit (2 decimals for USD and EUR, 0 for JPY, 3 for BHD), ties resolved by
the configured `RoundingMode`:

- `half_even` (banker's rounding, the default): a tie goes to the even neighbour, so 0.125 → 0.12
  and 0.135 → 0.14. Over many lines the ties cancel out instead of drifting upwards.
- `half_up`: a tie goes away from zero, so 0.125 → 0.13 and -0.125 → -0.13 (a credit rounds to the
  same magnitude as the matching charge).

Anything that is not a tie rounds to the nearest minor unit in both modes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date
from decimal import ROUND_HALF_EVEN, ROUND_HALF_UP, Decimal, localcontext
from functools import lru_cache

from babel import Locale
from babel.numbers import (
    get_currency_name,
    get_currency_precision,
    get_currency_symbol,
    get_territory_currencies,
    list_currencies,
)

from tallybook.billing.models import RoundingMode

_CODE = re.compile(r"^[A-Z]{3}$")
_ROUNDING = {RoundingMode.HALF_EVEN: ROUND_HALF_EVEN, RoundingMode.HALF_UP: ROUND_HALF_UP}
# Enough significant digits for any amount a meter can produce, so quantize never overflows.
_MONEY_PRECISION = 60


@lru_cache(maxsize=1)
def _known_codes() -> frozenset[str]:
    return frozenset(list_currencies())


def validate_currency(code: str) -> str:
    """The ISO 4217 code, upper-cased; ValueError naming the problem when Babel does not know it."""
    if not isinstance(code, str):
        raise ValueError(f"currency must be a 3-letter ISO 4217 code such as 'USD', got {code!r}")
    normalised = code.strip().upper()
    if not _CODE.match(normalised):
        raise ValueError(f"currency {code!r} is not a 3-letter ISO 4217 code such as 'USD' or 'EUR'")
    if normalised not in _known_codes():
        raise ValueError(f"currency {code!r} is not a known ISO 4217 currency code")
    return normalised


def minor_units(currency: str) -> int:
    """Decimal places of the currency's minor unit: USD 2, JPY 0, BHD 3 (Babel / CLDR data)."""
    return int(get_currency_precision(validate_currency(currency)))


def round_money(amount: Decimal, currency: str, mode: RoundingMode) -> Decimal:
    """`amount` rounded to the currency's minor unit; ties follow `mode` (see the module docs)."""
    if not isinstance(amount, Decimal) or not amount.is_finite():
        raise ValueError(f"amount must be a finite Decimal, got {amount!r}")
    rounding = _ROUNDING[RoundingMode(mode)]
    exponent = Decimal(1).scaleb(-minor_units(currency))
    with localcontext() as ctx:
        ctx.prec = max(_MONEY_PRECISION, amount.adjusted() + 10)
        return amount.quantize(exponent, rounding=rounding)


@dataclass(frozen=True, slots=True)
class CurrencyInfo:
    """A currency as OpenMeter's listCurrencies shows it: `subunits` is the number of decimal places
    of its minor unit (USD 2, JPY 0, BHD 3)."""

    code: str
    name: str
    symbol: str
    subunits: int


@lru_cache(maxsize=4)
def currencies_in_use(on: date) -> tuple[CurrencyInfo, ...]:
    """The currencies that are legal tender somewhere on `on` (CLDR via Babel), sorted by code,
    with English names and symbols. Like OpenMeter's list, it leaves out historic currencies and
    units of account; every one of them passes `validate_currency`."""
    codes: set[str] = set()
    for territory in Locale("en").territories:
        codes.update(get_territory_currencies(str(territory), start_date=on, tender=True))
    known = _known_codes()
    return tuple(
        CurrencyInfo(
            code=code,
            name=get_currency_name(code, locale="en"),
            symbol=get_currency_symbol(code, locale="en"),
            subunits=minor_units(code),
        )
        for code in sorted(codes & known)
    )
