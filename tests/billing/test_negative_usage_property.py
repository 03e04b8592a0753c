"""Property: any usage total, negative included, rates without error; a negative one rates exactly
as zero usage and always carries a warning naming the measured total, a non-negative one rates as
itself with no warning."""

from __future__ import annotations

from decimal import Decimal as D

from hypothesis import given
from hypothesis import strategies as st

from tallybook.billing.invoicing import billable_quantity
from tallybook.billing.models import PackagePrice, Tier, TieredPrice, TierMode, UnitPrice, UsagePrice
from tallybook.billing.rating import rate_usage

totals = st.decimals(min_value=D(-(10**9)), max_value=D(10**9), places=6, allow_nan=False, allow_infinity=False)
money = st.decimals(min_value=D(0), max_value=D(1000), places=4, allow_nan=False, allow_infinity=False)


@st.composite
def prices(draw: st.DrawFn) -> UsagePrice:
    kind = draw(st.sampled_from(["unit", "package", "graduated", "volume"]))
    if kind == "unit":
        return UnitPrice(amount=draw(money))
    if kind == "package":
        return PackagePrice(amount=draw(money), quantity_per_package=D(draw(st.integers(1, 1000))))
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=10**6), max_size=3)))
    tiers = tuple(Tier(up_to=D(b), unit_amount=draw(money), flat_amount=draw(money)) for b in bounds)
    tiers += (Tier(up_to=None, unit_amount=draw(money), flat_amount=draw(money)),)
    return TieredPrice(mode=TierMode.GRADUATED if kind == "graduated" else TierMode.VOLUME, tiers=tiers)


@given(total=totals, price=prices())
def test_any_total_rates_and_negative_ones_rate_as_zero_with_a_warning(total: D, price: UsagePrice) -> None:
    quantity, warning = billable_quantity(total)
    rated = rate_usage(price, quantity)  # never "quantity must not be negative"
    if total < 0:
        assert quantity == 0
        assert warning == f"usage total was {total}; billed as 0"
        assert rated == rate_usage(price, D(0))
        assert rated.amount == 0
    else:
        assert (quantity, warning) == (total, None)
        assert rated == rate_usage(price, total)
