"""The credit engine: how metered usage burns down grants, pure and exact (Decimal).

Rules (OpenMeter's documented ones, written here from the facts, not from its code):

- **Burn-down order**: lower `priority` first; then the grant that expires first (grants that never
  expire last); then the one created first; then the lower id.
- **Activity**: a grant counts from `effectiveAt` (inclusive) to the earliest of its expiry and its
  void (exclusive). Its balance is its amount when it becomes active, and zero once inactive.
- **Recurrence**: at each recurrence boundary after `effectiveAt` a grant's balance becomes its
  amount again (no rollover limits apply).
- **Overage**: usage no active grant covers is overage, a debt within the usage period: later usage
  and overage together burn any grant that becomes active later in the same period.
- **Reset** (the end of a usage period, or a manual reset): each active grant's balance becomes
  `min(maxRollover, max(minRollover, balance))`; usage in the period starts again from zero; the
  overage is forgiven, unless the reset preserves it, in which case it burns the rolled-over
  balances (in burn-down order) and what they cannot cover stays overage.
- **Order at one instant**: reset rollover, then recurrences, then grants becoming active or
  inactive, then preserved overage; then the usage that follows the instant.
- **Negative usage** (a SUM meter with refunds) first reduces the overage; it never refills grants.

The engine sees time as a sorted list of points (the start, resets, grant activity changes,
recurrences, checkpoints, the end). Between two points nothing changes but usage, so the usage of
every segment is read in one call (`UsageReader`), which the service answers with one SQL query.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from zoneinfo import ZoneInfo

from tallybook.entitlements.model import EntitlementError
from tallybook.entitlements.recurrence import APPROX_SECONDS, Recurrence

ZERO = Decimal(0)
# Points one balance may walk (resets, grant changes, recurrences): a bound on the work one value
# takes (ten years of daily periods is 3,650).
MAX_POINTS = 100_000


class TooManyPoints(EntitlementError):
    code = "too-many-periods"


# Given points p0 < p1 < ... < pn, the usage in each [p_i, p_(i+1)): n values.
UsageReader = Callable[[Sequence[datetime]], Sequence[Decimal]]


@dataclass(frozen=True, slots=True)
class GrantTerms:
    """What the engine needs of a grant."""

    id: str
    amount: Decimal
    priority: int
    effective_at: datetime
    created_at: datetime
    expires_at: datetime | None = None
    voided_at: datetime | None = None
    min_rollover: Decimal = ZERO
    max_rollover: Decimal = ZERO
    recurrence: Recurrence | None = None

    @property
    def ends_at(self) -> datetime | None:
        ends = [t for t in (self.expires_at, self.voided_at) if t is not None]
        return min(ends) if ends else None

    def active_at(self, t: datetime) -> bool:
        end = self.ends_at
        return self.effective_at <= t and (end is None or t < end)

    def rollover(self, balance: Decimal) -> Decimal:
        return min(self.max_rollover, max(self.min_rollover, balance))


_NEVER = datetime.min.replace(tzinfo=UTC)


def burn_order(grants: Iterable[GrantTerms]) -> list[GrantTerms]:
    """Grants in the order usage burns them."""

    # OpenMeter's order: priority, then the earliest expiry (never-expiring grants after those
    # that expire, in no order of their own), then creation, then id. Never-expiring grants share
    # one placeholder so that creation decides between them, not when they take effect.
    def key(g: GrantTerms) -> tuple[int, int, datetime, datetime, str]:
        expires = g.expires_at
        return (g.priority, 0 if expires is not None else 1, expires or _NEVER, g.created_at, g.id)

    return sorted(grants, key=key)


@dataclass(frozen=True, slots=True)
class ResetPoint:
    at: datetime
    preserve_overage: bool


@dataclass(frozen=True, slots=True)
class ManualReset:
    at: datetime
    retain_anchor: bool
    preserve_overage: bool


def reset_timeline(
    start: datetime,
    through: datetime,
    usage_period: Recurrence,
    manual: Sequence[ManualReset],
    preserve_by_default: bool,
    tz: ZoneInfo,
) -> list[ResetPoint]:
    """Every reset in (start, through]: the usage period's boundaries and the manual resets.

    A manual reset that does not retain the anchor moves the anchor to itself: later periods
    follow from it. A manual reset at a period boundary is that boundary's reset (with its options).
    """
    points: list[ResetPoint] = []
    pending = sorted((m for m in manual if start < m.at), key=lambda m: m.at)
    if through > start:
        # A cheap bound before walking: roughly how many periods lie between start and through.
        step = APPROX_SECONDS[usage_period.interval.unit] * usage_period.interval.count
        if (through - start).total_seconds() / step > MAX_POINTS:
            raise TooManyPoints(
                f"{through.isoformat()} is more than {MAX_POINTS:,} usage periods after measurement began; "
                "ask for a time closer to now"
            )
    period = usage_period
    last = start
    index = 0
    while True:
        automatic = period.next_after(last, tz)
        upcoming = pending[index] if index < len(pending) else None
        if upcoming is not None and upcoming.at <= automatic:
            if upcoming.at > through:
                break
            points.append(ResetPoint(upcoming.at, upcoming.preserve_overage))
            if not upcoming.retain_anchor:
                period = Recurrence(period.interval, upcoming.at)
            last = upcoming.at
            index += 1
            continue
        if automatic > through:
            break
        points.append(ResetPoint(automatic, preserve_by_default))
        if len(points) > MAX_POINTS:
            raise TooManyPoints(
                f"{through.isoformat()} is more than {MAX_POINTS:,} usage periods after measurement began; "
                "ask for a time closer to now"
            )
        last = automatic
    return points


def current_period(
    start: datetime, at: datetime, usage_period: Recurrence, manual: Sequence[ManualReset], tz: ZoneInfo
) -> tuple[datetime, datetime]:
    """[begin, end) of the usage period containing `at` (the first period begins at `start`)."""
    resets = reset_timeline(start, at, usage_period, manual, False, tz)
    begin = resets[-1].at if resets else start
    anchor = usage_period
    for m in sorted(manual, key=lambda m: m.at):
        if start < m.at <= begin and not m.retain_anchor:
            anchor = Recurrence(usage_period.interval, m.at)
    end = anchor.next_after(begin, tz)
    upcoming = [m.at for m in manual if m.at > at]
    if upcoming and min(upcoming) < end:
        end = min(upcoming)
    return begin, end


@dataclass(frozen=True, slots=True)
class Segment:
    """A stretch of time with no change but usage: one entry of the burn-down history."""

    start: datetime
    end: datetime
    usage: Decimal
    overage_at_start: Decimal
    overage: Decimal
    balances_at_start: dict[str, Decimal]
    balances_at_end: dict[str, Decimal]
    grant_usages: dict[str, Decimal]  # grant id -> burnt in the segment
    after_reset: bool  # a reset happened at `start`


@dataclass(frozen=True, slots=True)
class Point:
    """The state right after everything that happens at `at` (before the usage that follows)."""

    at: datetime
    balance: Decimal
    overage: Decimal
    usage_in_period: Decimal
    period_start: datetime


@dataclass(frozen=True, slots=True)
class Result:
    at: datetime
    period_start: datetime
    balance: Decimal  # sum of the active grants' balances
    usage: Decimal  # usage since the period start
    overage: Decimal
    total_available: Decimal  # granted usage burnt this period + balance
    grant_balances: dict[str, Decimal]  # active grants only
    segments: list[Segment] = field(default_factory=list)
    checkpoints: dict[datetime, Point] = field(default_factory=dict)


def _burn(
    balances: dict[str, Decimal], ordered: Sequence[GrantTerms], need: Decimal
) -> tuple[Decimal, dict[str, Decimal]]:
    """Burn `need` from the balances (in place) in the given order; return (uncovered, burnt)."""
    burnt: dict[str, Decimal] = {}
    for grant in ordered:
        if need <= ZERO:
            break
        have = balances.get(grant.id, ZERO)
        if have <= ZERO:
            continue
        take = min(have, need)
        balances[grant.id] = have - take
        burnt[grant.id] = take
        need -= take
    return max(need, ZERO), burnt


def run(
    grants: Sequence[GrantTerms],
    start: datetime,
    until: datetime,
    resets: Sequence[ResetPoint],
    usage: UsageReader,
    tz: ZoneInfo,
    checkpoints: Sequence[datetime] = (),
    keep_segments: bool = False,
) -> Result:
    """The balance at `until` of grants burnt by usage from `start` (the start of measurement).

    `resets` are the resets in (start, until] (see `reset_timeline`); `checkpoints` are instants in
    [start, until] whose state the result keeps (for windowed history).
    """
    if until < start:
        before_start = {g.id: g.amount for g in grants if g.active_at(until)}
        total = sum(before_start.values(), ZERO)
        return Result(until, start, total, ZERO, ZERO, total, before_start)
    reset_at = {r.at: r for r in resets if start < r.at <= until}
    recurring: dict[datetime, list[GrantTerms]] = {}
    points = {start, until, *reset_at}
    for grant in grants:
        for edge in (grant.effective_at, grant.ends_at):
            if edge is not None and start < edge <= until:
                points.add(edge)
        if grant.recurrence is not None:
            begin = max(grant.effective_at, start)
            end = grant.ends_at if grant.ends_at is not None and grant.ends_at < until else until
            found = grant.recurrence.between(begin, end, tz, limit=MAX_POINTS + 1)
            if len(found) > MAX_POINTS:
                raise TooManyPoints(
                    f"grant {grant.id} recurs more than {MAX_POINTS:,} times before {until.isoformat()}; "
                    "ask for a time closer to now"
                )
            for at in found:
                if at == end and end != until:
                    continue
                recurring.setdefault(at, []).append(grant)
                points.add(at)
    points.update(c for c in checkpoints if start <= c <= until)
    timeline = sorted(points)
    usages = list(usage(timeline)) if len(timeline) > 1 else []
    ordered = burn_order(grants)

    balances: dict[str, Decimal] = {g.id: g.amount for g in grants if g.active_at(start)}
    overage = ZERO
    period_usage = ZERO
    period_burnt = ZERO
    period_start = start
    segments: list[Segment] = []
    kept: dict[datetime, Point] = {}
    wanted = set(checkpoints)
    after_reset = False

    def keep(at: datetime) -> None:
        if at in wanted:
            kept[at] = Point(at, sum(balances.values(), ZERO), overage, period_usage, period_start)

    keep(start)
    for index, at in enumerate(timeline[1:]):
        # -- the segment [previous point, at): burn its usage -----------------------------------------
        segment_start = timeline[index]
        used = usages[index]
        active = [g for g in ordered if g.id in balances]
        before = dict(balances) if keep_segments else {}
        overage_before = overage
        need = used + overage
        overage, burnt = _burn(balances, active, need) if need > ZERO else (ZERO, {})
        period_usage += used
        period_burnt += sum(burnt.values(), ZERO)
        if keep_segments:
            segments.append(
                Segment(segment_start, at, used, overage_before, overage, before, dict(balances), burnt, after_reset)
            )
        # -- what happens at `at` ----------------------------------------------------------------------
        reset = reset_at.get(at)
        carried = ZERO
        after_reset = reset is not None
        if reset is not None:
            for grant in grants:
                if grant.id in balances and grant.active_at(at):
                    balances[grant.id] = grant.rollover(balances[grant.id])
            carried = overage if reset.preserve_overage else ZERO
            overage = ZERO
            period_usage = ZERO
            period_burnt = ZERO
            period_start = at
        for grant in recurring.get(at, ()):
            if grant.active_at(at):
                balances[grant.id] = grant.amount
        for grant in grants:
            if grant.active_at(at):
                if grant.effective_at == at:
                    balances[grant.id] = grant.amount
            else:
                balances.pop(grant.id, None)
        if carried > ZERO:
            overage, burnt = _burn(balances, [g for g in ordered if g.id in balances], carried)
            period_burnt += sum(burnt.values(), ZERO)
        keep(at)

    balance = sum(balances.values(), ZERO)
    return Result(
        at=until,
        period_start=period_start,
        balance=balance,
        usage=period_usage,
        overage=overage,
        total_available=period_burnt + balance,
        grant_balances=dict(balances),
        segments=segments,
        checkpoints=kept,
    )
