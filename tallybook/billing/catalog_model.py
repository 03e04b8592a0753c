"""The catalog's model: plans with versioned rate cards, their statuses and the catalog's errors.

A plan key has numbered versions. A version starts as a **draft** that can be edited, is
**published** (from then on immutable; publishing archives the version that was published before
it) and is finally **archived**. A change to a published plan is a new draft version copied from
it (`CatalogService.next_version`). At most one live draft and one published version exist per key.

The pricing itself (`PlanVersion`, rate cards, prices) is `tallybook.billing.models`; the API's
JSON shapes are in `tallybook.api.wire.plans`, the stored document in `catalog_documents`.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from decimal import Decimal
from enum import StrEnum

from tallybook.billing.models import BillingCadence, Cadence, PlanVersion
from tallybook.errors import DomainError

KEY_PATTERN = re.compile(r"^[a-z0-9]+(?:_[a-z0-9]+)*$")
MAX_KEY_LENGTH = 64
MAX_NAME_LENGTH = 256
MAX_DESCRIPTION_LENGTH = 1024
MAX_RATE_CARDS = 100
MAX_TIERS = 100
# Amounts and quantities: below 10^15 and at most 18 decimal places (a per-unit price of a
# millionth of a cent is 0.00000001); bounds that keep every product exact in rating.
AMOUNT_LIMIT = Decimal(10) ** 15
MAX_DECIMAL_PLACES = 18

# Problems found in a body: (JSON path of the field, what to fix), every one reported at once.
FieldErrors = list[tuple[str, str]]


# -- errors ----------------------------------------------------------------------------------------
class CatalogError(DomainError):
    """A catalog error; `errors` lists (field, message) pairs when the problem is in named fields.

    The API answers it as a problem (api/problems.py) with an `errors` member of {field, message}
    objects when there are any.
    """

    status = 400
    code = "catalog-error"

    def __init__(self, detail: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        extra = {"errors": [{"field": name, "message": message} for name, message in errors]} if errors else {}
        super().__init__(detail, **extra)
        self.errors = tuple(errors)


class InvalidPlan(CatalogError):
    status = 400
    code = "invalid-plan"

    def __init__(self, errors: Sequence[tuple[str, str]]) -> None:
        shown = "; ".join(f"{name}: {message}" for name, message in errors)
        super().__init__(f"{len(errors)} problem(s) in the plan: {shown}", errors)


class PlanNotFound(CatalogError):
    status = 404
    code = "plan-not-found"


class PlanConflict(CatalogError):
    status = 409
    code = "plan-conflict"


# -- entities --------------------------------------------------------------------------------------
class PlanStatus(StrEnum):
    DRAFT = "draft"
    PUBLISHED = "published"  # OpenMeter calls it "active"
    ARCHIVED = "archived"


API_STATUS = {PlanStatus.DRAFT: "draft", PlanStatus.PUBLISHED: "active", PlanStatus.ARCHIVED: "archived"}


@dataclass(frozen=True)
class PlanInput:
    """A parsed create or update body: the pricing (status and version are not used) plus labels."""

    spec: PlanVersion
    description: str | None = None
    metadata: dict[str, str] | None = None
    rate_cards_path: str = "phases[0].rateCards"  # where the body had them, for error fields


@dataclass(frozen=True)
class Plan:
    """One stored version of a plan, as the API and invoicing see it."""

    id: str
    spec: PlanVersion
    description: str | None
    metadata: dict[str, str] | None
    created_at: datetime
    updated_at: datetime
    published_at: datetime | None
    archived_at: datetime | None
    deleted_at: datetime | None

    @property
    def key(self) -> str:
        return self.spec.plan_key

    @property
    def version(self) -> int:
        return self.spec.version

    @property
    def status(self) -> PlanStatus:
        return PlanStatus(self.spec.status)


@dataclass(frozen=True)
class PlanListQuery:
    page: int = 1
    page_size: int = 100
    keys: tuple[str, ...] = ()
    ids: tuple[str, ...] = ()
    statuses: tuple[PlanStatus, ...] = ()
    currencies: tuple[str, ...] = ()
    include_deleted: bool = False
    order_by: str = "id"  # id | key | version | created_at | updated_at
    descending: bool = False


@dataclass(frozen=True)
class PlanPage:
    items: list[Plan]
    total_count: int
    page: int
    page_size: int


# -- billing cadence as ISO 8601 durations ---------------------------------------------------------
_DURATION = re.compile(r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?$")
_CADENCE_TEXT = {
    BillingCadence.DAILY: "P1D",
    BillingCadence.WEEKLY: "P1W",
    BillingCadence.MONTHLY: "P1M",
    BillingCadence.QUARTERLY: "P3M",
    BillingCadence.YEARLY: "P1Y",
}
CADENCE_HELP = "use P1D, P1W, P1M, P3M, P1Y or a number of days such as P30D"


def parse_cadence(text: str) -> Cadence:
    """An ISO 8601 duration → a billing cadence; ValueError for durations Tallybook cannot bill."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None or text == "P":
        raise ValueError(f"{text!r} is not an ISO 8601 duration without a time part; {CADENCE_HELP}")
    years, months, weeks, days = (int(part) if part else 0 for part in match.groups())
    parts = {"Y": years, "M": months, "W": weeks, "D": days}
    used = {unit: n for unit, n in parts.items() if n}
    if len(used) == 1:
        ((unit, n),) = used.items()
        if (unit, n) in (("Y", 1), ("M", 12)):
            return Cadence(BillingCadence.YEARLY)
        if (unit, n) == ("M", 3):
            return Cadence(BillingCadence.QUARTERLY)
        if (unit, n) == ("M", 1):
            return Cadence(BillingCadence.MONTHLY)
        if (unit, n) in (("W", 1), ("D", 7)):
            return Cadence(BillingCadence.WEEKLY)
        if (unit, n) == ("D", 1):
            return Cadence(BillingCadence.DAILY)
        if unit in ("D", "W") and n * (7 if unit == "W" else 1) <= 3660:
            return Cadence(BillingCadence.EVERY_N_DAYS, days=n * (7 if unit == "W" else 1))
    raise ValueError(f"{text!r} is not a billing cadence Tallybook supports; {CADENCE_HELP}")


def format_cadence(cadence: Cadence) -> str:
    if cadence.kind is BillingCadence.EVERY_N_DAYS:
        return f"P{cadence.days}D"
    return _CADENCE_TEXT[cadence.kind]


# -- decimals --------------------------------------------------------------------------------------
def plain(value: Decimal) -> str:
    """A Decimal as a plain decimal string (never exponent notation): '0.001', '1000000'."""
    return format(value, "f")
