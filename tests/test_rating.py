"""Rating, commitments, proration and currency rounding, with hand-checked numbers."""

from __future__ import annotations

from decimal import Decimal as D

import pytest

from tallybook.billing.currency import minor_units, round_money, validate_currency
from tallybook.billing.models import (
    Commitments,
    FlatPrice,
    PackagePrice,
    RoundingMode,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
)
from tallybook.billing.rating import (
    CommitmentReason,
    CommittedAmount,
    RatedUsage,
    TierLine,
    apply_commitments,
    prorate,
    rate_usage,
)

# 0-1000 at 0.01 plus a 5.00 flat fee; 1001-10000 at 0.008 plus 2.00; above at 0.005.
TIERS = (
    Tier(up_to=D(1000), unit_amount=D("0.01"), flat_amount=D(5)),
    Tier(up_to=D(10000), unit_amount=D("0.008"), flat_amount=D(2)),
    Tier(up_to=None, unit_amount=D("0.005")),
)
GRADUATED = TieredPrice(TierMode.GRADUATED, TIERS)
VOLUME = TieredPrice(TierMode.VOLUME, TIERS)


# -- unit ------------------------------------------------------------------------------------------
def test_unit_price_multiplies_quantity() -> None:
    rated = rate_usage(UnitPrice(D("0.001")), D(123456))
    assert rated == RatedUsage(amount=D("123.456"), unit_price=D("0.001"), tiers=())


def test_unit_price_keeps_fractional_quantities_exact() -> None:
    assert rate_usage(UnitPrice(D("0.01")), D("2.5")).amount == D("0.025")
    assert rate_usage(UnitPrice(D("0.0001")), D("0.3")).amount == D("0.00003")


def test_zero_quantity_costs_nothing_for_every_price() -> None:
    for price in (UnitPrice(D(1)), PackagePrice(D(1), D(10)), GRADUATED, VOLUME):
        rated = rate_usage(price, D(0))
        assert rated.amount == 0
        assert rated.tiers == ()


@pytest.mark.parametrize("price", [UnitPrice(D(1)), PackagePrice(D(1), D(10)), GRADUATED, VOLUME])
def test_negative_quantity_is_refused(price: object) -> None:
    with pytest.raises(ValueError, match="quantity must not be negative"):
        rate_usage(price, D("-0.5"))  # type: ignore[arg-type]


def test_non_finite_or_float_quantity_is_refused() -> None:
    with pytest.raises(ValueError, match="finite Decimal"):
        rate_usage(UnitPrice(D(1)), D("NaN"))
    with pytest.raises(ValueError, match="finite Decimal"):
        rate_usage(UnitPrice(D(1)), 1.5)  # type: ignore[arg-type]


def test_flat_price_is_not_a_usage_price() -> None:
    with pytest.raises(ValueError, match="not a usage price"):
        rate_usage(FlatPrice(D(49)), D(1))  # type: ignore[arg-type]


# -- package ---------------------------------------------------------------------------------------
PER_MILLION = PackagePrice(amount=D("0.20"), quantity_per_package=D(1_000_000))


@pytest.mark.parametrize(
    ("quantity", "packages", "amount"),
    [
        (D(1), D(1), D("0.20")),  # a started package is a whole one
        (D(999_999), D(1), D("0.20")),
        (D(1_000_000), D(1), D("0.20")),  # exactly full: no extra package
        (D(1_000_001), D(2), D("0.40")),
        (D(2_500_000), D(3), D("0.60")),
        (D("0.5"), D(1), D("0.20")),
    ],
)
def test_package_rounds_partial_packages_up(quantity: D, packages: D, amount: D) -> None:
    rated = rate_usage(PER_MILLION, quantity)
    assert rated.packages == packages
    assert rated.amount == amount
    assert rated.unit_price is None


def test_package_with_fractional_size() -> None:
    # 2.5 GB packages at 1.00: 6 GB needs 3 packages.
    assert rate_usage(PackagePrice(D(1), D("2.5")), D(6)).amount == D(3)
    assert rate_usage(PackagePrice(D(1), D("2.5")), D(5)).amount == D(2)


def test_package_size_must_be_positive() -> None:
    with pytest.raises(ValueError, match="must be positive"):
        rate_usage(PackagePrice(D(1), D(0)), D(5))


# -- tiered: graduated -----------------------------------------------------------------------------
def test_graduated_within_first_tier() -> None:
    rated = rate_usage(GRADUATED, D(500))
    assert rated.amount == D("10.00")  # 500 * 0.01 + 5
    assert rated.tiers == (TierLine(0, D(500), D("0.01"), D(5), D("10.00")),)
    assert rated.unit_price is None


def test_graduated_exactly_at_a_boundary_stays_in_the_lower_tier() -> None:
    rated = rate_usage(GRADUATED, D(1000))
    assert rated.amount == D(15)  # 1000 * 0.01 + 5; the second tier's flat fee is not entered
    assert [line.tier_index for line in rated.tiers] == [0]


def test_graduated_one_past_a_boundary_enters_the_next_tier_and_its_flat_fee() -> None:
    rated = rate_usage(GRADUATED, D(1001))
    assert rated.amount == D("17.008")  # 15 + 1 * 0.008 + 2
    assert rated.tiers[1] == TierLine(1, D(1), D("0.008"), D(2), D("2.008"))


def test_graduated_into_the_open_last_tier() -> None:
    rated = rate_usage(GRADUATED, D(25000))
    # 1000*0.01+5 = 15; 9000*0.008+2 = 74; 15000*0.005 = 75
    assert [line.amount for line in rated.tiers] == [D(15), D(74), D(75)]
    assert [line.quantity for line in rated.tiers] == [D(1000), D(9000), D(15000)]
    assert rated.amount == D(164)


def test_graduated_fractional_quantity_crossing_a_boundary() -> None:
    rated = rate_usage(GRADUATED, D("1000.5"))
    assert rated.tiers[1].quantity == D("0.5")
    assert rated.amount == D("17.004")


# -- tiered: volume --------------------------------------------------------------------------------
def test_volume_prices_every_unit_at_the_tier_the_total_falls_in() -> None:
    rated = rate_usage(VOLUME, D(5000))
    assert rated.amount == D(42)  # 5000 * 0.008 + 2
    assert rated.unit_price == D("0.008")
    assert rated.tiers == (TierLine(1, D(5000), D("0.008"), D(2), D(42)),)


def test_volume_boundaries_are_inclusive() -> None:
    assert rate_usage(VOLUME, D(1000)).amount == D(15)  # 1000 * 0.01 + 5
    assert rate_usage(VOLUME, D(1001)).amount == D("10.008")  # 1001 * 0.008 + 2: cheaper than 1000
    assert rate_usage(VOLUME, D(10000)).amount == D(82)
    assert rate_usage(VOLUME, D(10001)).amount == D("50.005")  # the open tier has no flat fee


def test_volume_against_graduated_on_the_same_tiers() -> None:
    quantity = D(25000)
    assert rate_usage(VOLUME, quantity).amount == D(125)  # 25000 * 0.005
    assert rate_usage(GRADUATED, quantity).amount == D(164)


def test_single_open_tier_with_only_a_flat_amount() -> None:
    flat_only = TieredPrice(TierMode.VOLUME, (Tier(None, D(0), D(99)),))
    assert rate_usage(flat_only, D(1)).amount == D(99)
    assert rate_usage(flat_only, D(10**9)).amount == D(99)
    assert rate_usage(flat_only, D(0)).amount == D(0)


def test_quantity_beyond_a_closed_last_tier_is_refused() -> None:
    closed = TieredPrice(TierMode.GRADUATED, (Tier(D(10), D(1)),))
    assert rate_usage(closed, D(10)).amount == D(10)
    with pytest.raises(ValueError, match="above the last tier"):
        rate_usage(closed, D(11))
    with pytest.raises(ValueError, match="above the last tier"):
        rate_usage(TieredPrice(TierMode.VOLUME, closed.tiers), D(11))


def test_malformed_tiers_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one tier"):
        rate_usage(TieredPrice(TierMode.GRADUATED, ()), D(1))
    with pytest.raises(ValueError, match="only the last tier"):
        rate_usage(TieredPrice(TierMode.GRADUATED, (Tier(None, D(1)), Tier(D(5), D(1)))), D(1))
    with pytest.raises(ValueError, match="must be greater than 10"):
        rate_usage(TieredPrice(TierMode.VOLUME, (Tier(D(10), D(1)), Tier(D(10), D(1)), Tier(None))), D(1))


# -- commitments -----------------------------------------------------------------------------------
def test_minimum_commitment_lifts_the_amount() -> None:
    committed = apply_commitments(D("3.25"), Commitments(minimum=D(10)))
    assert committed == CommittedAmount(D(10), D("6.75"), CommitmentReason.MINIMUM_SPEND)


def test_minimum_commitment_applies_to_zero_usage() -> None:
    assert apply_commitments(D(0), Commitments(minimum=D(10))).adjustment == D(10)


def test_maximum_commitment_caps_the_amount() -> None:
    committed = apply_commitments(D("180.5"), Commitments(maximum=D(150)))
    assert committed == CommittedAmount(D(150), D("-30.5"), CommitmentReason.MAXIMUM_SPEND)


def test_amount_between_the_bounds_is_unchanged() -> None:
    both = Commitments(minimum=D(10), maximum=D(150))
    assert apply_commitments(D(42), both) == CommittedAmount(D(42), D(0), None)
    assert apply_commitments(D(10), both) == CommittedAmount(D(10), D(0), None)  # at the minimum
    assert apply_commitments(D(150), both) == CommittedAmount(D(150), D(0), None)  # at the maximum
    assert apply_commitments(D(7), Commitments()) == CommittedAmount(D(7), D(0), None)


def test_minimum_above_maximum_is_refused() -> None:
    with pytest.raises(ValueError, match="greater than the maximum"):
        apply_commitments(D(1), Commitments(minimum=D(10), maximum=D(5)))


def test_commitments_after_rating_a_tiered_price() -> None:
    rated = rate_usage(GRADUATED, D(25000)).amount  # 164
    assert apply_commitments(rated, Commitments(maximum=D(100))).amount == D(100)
    assert apply_commitments(rate_usage(GRADUATED, D(100)).amount, Commitments(minimum=D(20))).adjustment == D(14)


# -- proration -------------------------------------------------------------------------------------
DAY = D(86400)


def test_prorate_by_seconds() -> None:
    # 49.00 a month; February 2026 has 28 days; a subscription from Feb 15 covers 14 of them.
    assert prorate(D(49), 14 * DAY, 28 * DAY) == D("24.5")
    # March has 31 days: 10 days of 31 is 15.806451..., rounded once on the invoice line.
    ten_of_march = prorate(D(49), 10 * DAY, 31 * DAY)
    assert round_money(ten_of_march, "USD", RoundingMode.HALF_EVEN) == D("15.81")


def test_prorate_whole_and_empty_periods() -> None:
    assert prorate(D(49), 31 * DAY, 31 * DAY) == D(49)
    assert prorate(D(49), D(0), 31 * DAY) == D(0)


def test_prorate_one_third_is_exact_enough_to_round_once() -> None:
    third = prorate(D(100), D(1), D(3))
    assert round_money(third, "USD", RoundingMode.HALF_UP) == D("33.33")
    assert round_money(third * 3, "USD", RoundingMode.HALF_UP) == D("100.00")


@pytest.mark.parametrize(
    ("covered", "period", "message"),
    [(D(1), D(0), "period_seconds must be positive"), (D(-1), D(10), "must not be negative"), (D(11), D(10), "longer")],
)
def test_prorate_refuses_nonsense(covered: D, period: D, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        prorate(D(49), covered, period)


# -- currencies and rounding -----------------------------------------------------------------------
@pytest.mark.parametrize(("code", "digits"), [("USD", 2), ("EUR", 2), ("JPY", 0), ("BHD", 3), ("KWD", 3)])
def test_minor_units_come_from_babel(code: str, digits: int) -> None:
    assert minor_units(code) == digits


def test_validate_currency_normalises_and_refuses_unknown_codes() -> None:
    assert validate_currency("usd") == "USD"
    assert validate_currency(" EUR ") == "EUR"
    with pytest.raises(ValueError, match="not a known ISO 4217"):
        validate_currency("ABC")
    with pytest.raises(ValueError, match="3-letter"):
        validate_currency("dollars")
    with pytest.raises(ValueError, match="3-letter"):
        validate_currency(12)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a known"):
        minor_units("ZZZ")


@pytest.mark.parametrize(
    ("amount", "currency", "half_even", "half_up"),
    [
        (D("0.125"), "USD", D("0.12"), D("0.13")),
        (D("0.135"), "USD", D("0.14"), D("0.14")),
        (D("-0.125"), "USD", D("-0.12"), D("-0.13")),
        (D("2.5"), "JPY", D("2"), D("3")),
        (D("3.5"), "JPY", D("4"), D("4")),
        (D("1.0005"), "BHD", D("1.000"), D("1.001")),
        (D("1.0015"), "BHD", D("1.002"), D("1.002")),
        (D("10.005"), "EUR", D("10.00"), D("10.01")),
        (D("0.1249999"), "USD", D("0.12"), D("0.12")),  # not a tie: nearest in both modes
        (D("0.1250001"), "USD", D("0.13"), D("0.13")),
    ],
)
def test_rounding_modes_on_ties(amount: D, currency: str, half_even: D, half_up: D) -> None:
    assert round_money(amount, currency, RoundingMode.HALF_EVEN) == half_even
    assert round_money(amount, currency, RoundingMode.HALF_UP) == half_up
    assert round_money(amount, currency, RoundingMode.HALF_UP).as_tuple().exponent == -minor_units(currency)


def test_round_money_pads_to_the_minor_unit() -> None:
    assert str(round_money(D(49), "USD", RoundingMode.HALF_EVEN)) == "49.00"
    assert str(round_money(D(49), "BHD", RoundingMode.HALF_EVEN)) == "49.000"
    assert str(round_money(D("1234.4"), "JPY", RoundingMode.HALF_EVEN)) == "1234"


def test_round_money_handles_large_amounts_without_losing_digits() -> None:
    big = D("123456789012345678901234567890.125")
    assert round_money(big, "USD", RoundingMode.HALF_UP) == D("123456789012345678901234567890.13")


def test_round_money_refuses_floats_and_nan() -> None:
    with pytest.raises(ValueError, match="finite Decimal"):
        round_money(0.1, "USD", RoundingMode.HALF_EVEN)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="finite Decimal"):
        round_money(D("NaN"), "USD", RoundingMode.HALF_EVEN)
