"""The credit engine against a reference model written here, minute by minute.

The engine walks segments between points where something changes and reads each segment's usage
in one call; the reference below knows nothing of segments: it steps one minute at a time,
burns that minute's usage, and applies the rules at every minute boundary (resets by modular
arithmetic on the anchor, recurrences likewise). Both must agree on balance, usage in the period,
overage and every grant's balance, for any grants, resets and usage hypothesis draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from zoneinfo import ZoneInfo

from hypothesis import given, settings
from hypothesis import strategies as st

from tallybook.entitlements import engine
from tallybook.entitlements.recurrence import Interval, Recurrence

T0 = datetime(2026, 3, 1, tzinfo=UTC)
UTC_ZONE = ZoneInfo("UTC")
PERIOD = 60  # minutes: the usage period is PT1H


def minute(m: int) -> datetime:
    return T0 + timedelta(minutes=m)


@dataclass(frozen=True)
class RefGrant:
    id: str
    amount: int
    priority: int
    effective: int
    expires: int | None
    voided: int | None
    min_rollover: int
    max_rollover: int
    recur_every: int | None  # minutes (a multiple of 60), anchored at `effective`

    def active(self, m: int) -> bool:
        ends = [t for t in (self.expires, self.voided) if t is not None]
        return self.effective <= m and (not ends or m < min(ends))


@dataclass(frozen=True)
class RefReset:
    at: int
    retain_anchor: bool
    preserve: bool


def order(grants: Sequence[RefGrant]) -> list[RefGrant]:
    # priority, then expiring first (never-expiring last), then creation (list order), then id
    return sorted(
        grants,
        key=lambda g: (g.priority, g.expires is None, g.expires if g.expires is not None else 0, int(g.id[1:])),
    )


def reference(
    grants: Sequence[RefGrant],
    usage: Sequence[int],
    anchor: int,
    manual: Sequence[RefReset],
    preserve_default: bool,
    until: int,
) -> tuple[int, int, int, dict[str, int]]:
    by_minute = {r.at: r for r in manual if r.at > 0}
    balances = {g.id: g.amount for g in grants if g.active(0)}
    overage = 0
    used_in_period = 0
    ordered = order(grants)

    def burn(need: int) -> int:
        for g in ordered:
            if need <= 0:
                break
            have = balances.get(g.id, 0)
            take = min(have, need)
            if take > 0:
                balances[g.id] = have - take
                need -= take
        return max(need, 0)

    for m in range(1, until + 1):
        u = usage[m - 1] if m - 1 < len(usage) else 0
        need = u + overage
        overage = burn(need) if need > 0 else 0
        used_in_period += u
        reset = by_minute.get(m)
        if reset is None and (m - anchor) % PERIOD == 0:
            reset = RefReset(m, True, preserve_default)
        carried = 0
        if reset is not None:
            for g in grants:
                if g.id in balances and g.active(m):
                    balances[g.id] = min(g.max_rollover, max(g.min_rollover, balances[g.id]))
            carried = overage if reset.preserve else 0
            overage = 0
            used_in_period = 0
            if not reset.retain_anchor:
                anchor = m
        for g in grants:
            if g.recur_every and g.active(m) and m > g.effective and (m - g.effective) % g.recur_every == 0:
                balances[g.id] = g.amount
        for g in grants:
            if g.active(m):
                if g.effective == m:
                    balances[g.id] = g.amount
            else:
                balances.pop(g.id, None)
        if carried > 0:
            overage = burn(carried)
    return sum(balances.values()), used_in_period, overage, balances


def usage_reader(usage: Sequence[int]):  # type: ignore[no-untyped-def]
    calls: list[int] = []

    def read(bounds: Sequence[datetime]) -> list[Decimal]:
        calls.append(len(bounds))
        out = []
        for left, right in itertools.pairwise(bounds):
            a = int((left - T0).total_seconds() // 60)
            b = int((right - T0).total_seconds() // 60)
            out.append(Decimal(sum(usage[i] for i in range(a, b) if i < len(usage))))
        return out

    read.calls = calls  # type: ignore[attr-defined]
    return read


def run_engine(
    grants: Sequence[RefGrant],
    usage: Sequence[int],
    anchor: int,
    manual: Sequence[RefReset],
    preserve_default: bool,
    until: int,
) -> engine.Result:
    terms = [
        engine.GrantTerms(
            id=g.id,
            amount=Decimal(g.amount),
            priority=g.priority,
            effective_at=minute(g.effective),
            created_at=T0 + timedelta(microseconds=int(g.id[1:])),
            expires_at=None if g.expires is None else minute(g.expires),
            voided_at=None if g.voided is None else minute(g.voided),
            min_rollover=Decimal(g.min_rollover),
            max_rollover=Decimal(g.max_rollover),
            recurrence=None
            if g.recur_every is None
            else Recurrence(Interval("HOUR", g.recur_every // 60), minute(g.effective)),
        )
        for g in grants
    ]
    period = Recurrence(Interval("HOUR", 1), minute(anchor))
    resets = engine.reset_timeline(
        T0,
        minute(until),
        period,
        [engine.ManualReset(minute(r.at), r.retain_anchor, r.preserve) for r in manual],
        preserve_default,
        UTC_ZONE,
    )
    return engine.run(terms, T0, minute(until), resets, usage_reader(usage), UTC_ZONE)


@st.composite
def scenarios(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    until = draw(st.integers(0, 300))
    grants = []
    for index in range(draw(st.integers(0, 5))):
        effective = draw(st.integers(0, 300))
        expires = draw(st.one_of(st.none(), st.integers(effective + 1, 400)))
        voided = draw(st.one_of(st.none(), st.integers(0, 400)))
        low = draw(st.integers(0, 30))
        grants.append(
            RefGrant(
                id=f"g{index}",
                amount=draw(st.integers(0, 60)),
                priority=draw(st.integers(1, 3)),
                effective=effective,
                expires=expires,
                voided=voided,
                min_rollover=low,
                max_rollover=draw(st.integers(low, 60)),
                recur_every=draw(st.sampled_from([None, None, 60, 120])),
            )
        )
    usage = draw(st.lists(st.integers(0, 6), max_size=300))
    manual_minutes = draw(st.lists(st.integers(1, 300), max_size=4, unique=True))
    manual = [RefReset(m, draw(st.booleans()), draw(st.booleans())) for m in sorted(manual_minutes)]
    anchor = draw(st.integers(-120, 120))
    return grants, usage, anchor, manual, draw(st.booleans()), until


@settings(max_examples=400, deadline=None)
@given(scenarios())
def test_engine_matches_the_minute_by_minute_reference(scenario) -> None:  # type: ignore[no-untyped-def]
    grants, usage, anchor, manual, preserve_default, until = scenario
    balance, used, overage, balances = reference(grants, usage, anchor, manual, preserve_default, until)
    result = run_engine(grants, usage, anchor, manual, preserve_default, until)
    assert result.balance == balance
    assert result.usage == used
    assert result.overage == overage
    assert {k: v for k, v in result.grant_balances.items()} == {k: Decimal(v) for k, v in balances.items()}


def test_burn_order_is_priority_then_earliest_expiry_then_creation() -> None:
    a = engine.GrantTerms("a", Decimal(1), 2, T0, T0)
    b = engine.GrantTerms("b", Decimal(1), 1, T0, T0 + timedelta(seconds=2), expires_at=minute(90))
    c = engine.GrantTerms("c", Decimal(1), 1, T0, T0 + timedelta(seconds=1), expires_at=minute(60))
    d = engine.GrantTerms("d", Decimal(1), 1, T0, T0)  # never expires: after those that do
    e = engine.GrantTerms("e", Decimal(1), 1, T0, T0 + timedelta(seconds=3))
    assert [g.id for g in engine.burn_order([a, b, c, d, e])] == ["c", "b", "d", "e", "a"]


def test_rollover_at_reset_follows_min_and_max() -> None:
    """OpenMeter's rule: Balance_After_Reset = MIN(MaxRolloverAmount, MAX(Balance_Before_Reset, MinRolloverAmount))."""
    big = RefGrant("g0", 100, 1, 0, None, None, 10, 30, None)  # 100 - 20 used = 80 -> capped to 30
    small = RefGrant("g1", 5, 2, 0, None, None, 10, 30, None)  # untouched 5 -> raised to 10
    result = run_engine([big, small], [20], anchor=0, manual=[], preserve_default=False, until=60)
    assert result.grant_balances == {"g0": Decimal(30), "g1": Decimal(10)}
    assert result.usage == 0 and result.period_start == minute(60)


def test_preserved_overage_burns_the_next_period() -> None:
    grant = RefGrant("g0", 10, 1, 0, None, None, 10, 10, None)  # issueAfterReset-style: back to 10
    result = run_engine([grant], [25], anchor=0, manual=[], preserve_default=True, until=60)
    # 25 used of 10: overage 15; at the reset the grant is back to 10 and the debt burns it.
    assert result.balance == 0 and result.overage == 5
    forgiven = run_engine([grant], [25], anchor=0, manual=[], preserve_default=False, until=60)
    assert forgiven.balance == 10 and forgiven.overage == 0


def test_one_usage_read_per_run() -> None:
    grants = [RefGrant(f"g{i}", 10, 1, i * 7, None, None, 0, 0, 60) for i in range(5)]
    reader = usage_reader([1] * 300)
    terms = [engine.GrantTerms(g.id, Decimal(g.amount), 1, minute(g.effective), T0, recurrence=None) for g in grants]
    engine.run(terms, T0, minute(300), [], reader, UTC_ZONE)
    # One call with six points: the start, four grant activations, the end.
    assert reader.calls == [6]  # type: ignore[attr-defined]


def test_monthly_period_in_the_customer_zone_clamps_the_day() -> None:
    tz = ZoneInfo("Europe/Budapest")
    anchor = datetime(2026, 1, 31, 0, 0, tzinfo=tz)
    period = Recurrence(Interval("MONTH", 1), anchor.astimezone(UTC))
    boundaries = period.between(anchor.astimezone(UTC), datetime(2026, 5, 1, tzinfo=UTC), tz)
    local = [b.astimezone(tz).strftime("%Y-%m-%d %H:%M") for b in boundaries]
    # Feb has no 31st; Mar 31 after the DST change is still local midnight.
    assert local == ["2026-02-28 00:00", "2026-03-31 00:00", "2026-04-30 00:00"]


ZONES = [
    ZoneInfo(name) for name in ("UTC", "Europe/Budapest", "America/New_York", "Australia/Lord_Howe", "Asia/Kolkata")
]


@settings(max_examples=300, deadline=None)
@given(
    unit=st.sampled_from(["HOUR", "DAY", "WEEK", "MONTH", "YEAR"]),
    count=st.integers(1, 3),
    anchor_minutes=st.integers(-2_000_000, 2_000_000),
    offset_minutes=st.integers(-3_000_000, 3_000_000),
    tz=st.sampled_from(ZONES),
)
def test_recurrence_periods_contain_their_instant_and_follow_each_other(
    unit: str, count: int, anchor_minutes: int, offset_minutes: int, tz: ZoneInfo
) -> None:
    """Whatever the zone (DST, half-hour offsets), boundaries strictly increase, the period at `t`
    contains `t`, and the next boundary after `t` is that period's end."""
    recurrence = Recurrence(Interval(unit, count), minute(anchor_minutes))
    t = minute(anchor_minutes + offset_minutes) + timedelta(seconds=17)
    begin, end = recurrence.period_at(t, tz)
    assert begin <= t < end
    assert recurrence.next_after(t, tz) == end
    assert recurrence.next_after(begin - timedelta(microseconds=1), tz) == begin
    assert recurrence.between(begin - timedelta(microseconds=1), end, tz) == [begin, end]


def test_never_expiring_grants_burn_in_creation_order_whatever_their_effective_time() -> None:
    """OpenMeter orders grants that never expire by creation, not by when they take effect (a
    counterexample hypothesis found: the later-created, earlier-effective grant burned first)."""
    older = engine.GrantTerms("older", Decimal(1), 1, minute(62), T0)
    newer = engine.GrantTerms("newer", Decimal(1), 1, minute(61), T0 + timedelta(seconds=1))
    assert [g.id for g in engine.burn_order([newer, older])] == ["older", "newer"]
