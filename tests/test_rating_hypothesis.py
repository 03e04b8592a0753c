"""Property tests: rating against a small reference rater written another way.

The reference works on Fractions and prices integer quantities one unit at a time (graduated) or
searches for the package count; rate_usage works on Decimals with per-tier arithmetic.
"""

from __future__ import annotations

from decimal import Decimal as D
from fractions import Fraction

from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook.billing.currency import minor_units, round_money
from tallybook.billing.models import Commitments, PackagePrice, RoundingMode, Tier, TieredPrice, TierMode, UnitPrice
from tallybook.billing.rating import apply_commitments, prorate, rate_usage

money = st.decimals(min_value=D(0), max_value=D(1000), places=4, allow_nan=False, allow_infinity=False)
small_quantity = st.integers(min_value=0, max_value=600)
fractional_quantity = st.decimals(min_value=D(0), max_value=D(5000), places=3, allow_nan=False, allow_infinity=False)


@st.composite
def tier_lists(draw: st.DrawFn, max_bound: int = 400) -> tuple[Tier, ...]:
    bounds = sorted(draw(st.sets(st.integers(min_value=1, max_value=max_bound), max_size=4)))
    uppers: list[D | None] = [D(b) for b in bounds]
    uppers.append(None)
    return tuple(Tier(up_to=u, unit_amount=draw(money), flat_amount=draw(money)) for u in uppers)


# -- the reference rater ---------------------------------------------------------------------------
def ref_tier_of(tiers: tuple[Tier, ...], position: Fraction) -> int:
    """Index of the tier that holds `position` (bounds are inclusive), by linear search."""
    for index, tier in enumerate(tiers):
        if tier.up_to is None or position <= Fraction(tier.up_to):
            return index
    raise AssertionError("the last tier is open")


def ref_graduated_per_unit(tiers: tuple[Tier, ...], quantity: int) -> Fraction:
    """Price unit 1, unit 2, ... each at its own tier; add each entered tier's flat amount once."""
    total = Fraction(0)
    entered: set[int] = set()
    for unit in range(1, quantity + 1):
        index = ref_tier_of(tiers, Fraction(unit))
        total += Fraction(tiers[index].unit_amount)
        entered.add(index)
    return total + sum((Fraction(tiers[i].flat_amount) for i in entered), Fraction(0))


def ref_graduated_fraction(tiers: tuple[Tier, ...], quantity: Fraction) -> Fraction:
    """Overlap of [0, quantity] with each tier's range, for non-integer quantities."""
    total = Fraction(0)
    low = Fraction(0)
    for tier in tiers:
        high = quantity if tier.up_to is None else Fraction(tier.up_to)
        overlap = max(Fraction(0), min(quantity, high) - low)
        if quantity > low:
            total += overlap * Fraction(tier.unit_amount) + Fraction(tier.flat_amount)
        low = high
        if tier.up_to is None:
            break
    return total


def ref_volume(tiers: tuple[Tier, ...], quantity: Fraction) -> Fraction:
    if quantity == 0:
        return Fraction(0)
    tier = tiers[ref_tier_of(tiers, quantity)]
    return quantity * Fraction(tier.unit_amount) + Fraction(tier.flat_amount)


def ref_packages(quantity: Fraction, size: Fraction) -> int:
    """The smallest whole number of packages that holds `quantity`, by counting up."""
    count = int(quantity // size) - 1 if quantity > size else 0
    while count * size < quantity:
        count += 1
    return count


# -- rate_usage against the reference ----------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(), quantity=small_quantity)
def test_graduated_matches_the_per_unit_reference(tiers: tuple[Tier, ...], quantity: int) -> None:
    rated = rate_usage(TieredPrice(TierMode.GRADUATED, tiers), D(quantity))
    assert Fraction(rated.amount) == ref_graduated_per_unit(tiers, quantity)
    assert sum(line.quantity for line in rated.tiers) == quantity
    assert sum(line.amount for line in rated.tiers) == rated.amount


@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(max_bound=5000), quantity=fractional_quantity)
def test_graduated_matches_the_overlap_reference_for_fractions(tiers: tuple[Tier, ...], quantity: D) -> None:
    rated = rate_usage(TieredPrice(TierMode.GRADUATED, tiers), quantity)
    assert Fraction(rated.amount) == ref_graduated_fraction(tiers, Fraction(quantity))


@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(max_bound=5000), quantity=fractional_quantity)
def test_volume_matches_the_reference(tiers: tuple[Tier, ...], quantity: D) -> None:
    rated = rate_usage(TieredPrice(TierMode.VOLUME, tiers), quantity)
    assert Fraction(rated.amount) == ref_volume(tiers, Fraction(quantity))
    if quantity > 0:
        (line,) = rated.tiers
        assert rated.amount == quantity * line.unit_amount + line.flat_amount
        assert rated.unit_price == line.unit_amount


@settings(max_examples=200, deadline=None)
@given(
    amount=money,
    size=st.decimals(min_value=D("0.5"), max_value=D(10**6), places=1, allow_nan=False, allow_infinity=False),
    quantity=st.decimals(min_value=D(0), max_value=D(10**8), places=2, allow_nan=False, allow_infinity=False),
)
def test_package_is_the_smallest_whole_package_count(amount: D, size: D, quantity: D) -> None:
    rated = rate_usage(PackagePrice(amount, size), quantity)
    packages = ref_packages(Fraction(quantity), Fraction(size))
    assert rated.packages == packages
    assert rated.amount == packages * amount
    assert packages * size >= quantity > (packages - 1) * size or quantity == 0


@settings(max_examples=100, deadline=None)
@given(amount=money, a=fractional_quantity, b=fractional_quantity)
def test_unit_price_is_linear(amount: D, a: D, b: D) -> None:
    price = UnitPrice(amount)
    assert rate_usage(price, a + b).amount == rate_usage(price, a).amount + rate_usage(price, b).amount


# -- properties -----------------------------------------------------------------------------------
@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(max_bound=5000), a=fractional_quantity, b=fractional_quantity)
def test_graduated_total_never_falls_as_usage_grows(tiers: tuple[Tier, ...], a: D, b: D) -> None:
    price = TieredPrice(TierMode.GRADUATED, tiers)
    low, high = sorted((a, b))
    assert rate_usage(price, low).amount <= rate_usage(price, high).amount


@settings(max_examples=150, deadline=None)
@given(tiers=tier_lists(max_bound=5000), quantity=fractional_quantity)
def test_volume_charges_the_whole_quantity_at_the_tier_it_falls_in(tiers: tuple[Tier, ...], quantity: D) -> None:
    rated = rate_usage(TieredPrice(TierMode.VOLUME, tiers), quantity)
    if quantity == 0:
        assert rated.amount == 0
        return
    (line,) = rated.tiers
    lower = tiers[line.tier_index - 1].up_to if line.tier_index else D(0)
    upper = tiers[line.tier_index].up_to
    assert lower is not None and lower < quantity
    assert upper is None or quantity <= upper
    assert line.quantity == quantity


@settings(max_examples=200, deadline=None)
@given(
    amount=st.decimals(min_value=D(0), max_value=D(10**6), places=6, allow_nan=False, allow_infinity=False),
    minimum=st.none() | money,
    extra=st.none() | money,
)
def test_commitments_keep_the_amount_within_bounds(amount: D, minimum: D | None, extra: D | None) -> None:
    maximum = None if extra is None else (minimum or D(0)) + extra
    committed = apply_commitments(amount, Commitments(minimum, maximum))
    assert committed.amount == amount + committed.adjustment
    if minimum is not None:
        assert committed.amount >= minimum
    if maximum is not None:
        assert committed.amount <= maximum
    if (minimum is None or amount >= minimum) and (maximum is None or amount <= maximum):
        assert committed.adjustment == 0 and committed.reason is None
    again = apply_commitments(committed.amount, Commitments(minimum, maximum))
    assert again.adjustment == 0


@settings(max_examples=200, deadline=None)
@given(
    amount=money,
    period=st.integers(min_value=1, max_value=31 * 86400),
    share=st.fractions(min_value=0, max_value=1),
)
def test_prorate_matches_exact_fractions(amount: D, period: int, share: Fraction) -> None:
    covered = int(share * period)
    result = prorate(amount, D(covered), D(period))
    exact = Fraction(amount) * covered / period
    assert abs(Fraction(result) - exact) <= Fraction(1, 10**60)
    assert 0 <= result <= amount


@settings(max_examples=300, deadline=None)
@given(
    amount=st.decimals(min_value=D(-(10**6)), max_value=D(10**6), places=6, allow_nan=False, allow_infinity=False),
    currency=st.sampled_from(["USD", "EUR", "JPY", "BHD"]),
)
def test_rounding_is_to_the_nearest_minor_unit_and_modes_differ_only_on_ties(amount: D, currency: str) -> None:
    unit = Fraction(1, 10 ** minor_units(currency))
    even = round_money(amount, currency, RoundingMode.HALF_EVEN)
    up = round_money(amount, currency, RoundingMode.HALF_UP)
    for rounded in (even, up):
        assert abs(Fraction(rounded) - Fraction(amount)) <= unit / 2
        assert Fraction(rounded) % unit == 0
    distance = abs(Fraction(amount) - Fraction(even))
    if even != up:
        assert distance == unit / 2
        assert abs(up) > abs(even)  # half_up takes the tie away from zero
    elif distance == unit / 2:  # a tie both modes settle alike: away from zero is the even neighbour
        assert (Fraction(even) / unit) % 2 == 0
        assert abs(even) > abs(amount)
