"""Billing profiles' model: which app collects an invoice (Stripe, or none: webhook-only), tax,
collection method, approval and grace; one default profile from config.

A profile says, for the customers billed with it:

- `collector` (`apps.invoicing`, = `apps.tax` = `apps.payment`): `stripe` (Stripe invoices the
  customer, computes tax, collects the money) or `custom_invoicing` (no app: Tallybook's invoice
  webhooks are the integration);
- `grace` (`workflow.collection.interval`): how long after a billing period ends its invoice is
  drafted;
- `auto_advance` and `draft_period` (`workflow.invoicing.autoAdvance`, `draftPeriod`): whether a
  draft is issued without approval once it is that old;
- `collection_method`, `due_after`, `auto_collect` (`workflow.payment`,
  `workflow.invoicing.dueAfter`): how the collector asks for the money;
- `tax_enabled`, `tax_enforced`, `tax_behavior` (`workflow.tax`,
  `workflow.invoicing.defaultTaxConfig.behavior`): tax by the collector;
- `number_prefix`, `timezone`, `locale` (`invoiceDocument`, a Tallybook extension): the invoice
  number series of the profile's invoices (tallybook/billing/documents.py) and how the invoice page
  and PDF write dates (the time zone; None: the customer's) and numbers.

The config profile (`billing:` in tallybook.yaml, see tallybook/billing/settings.py) is written to
`billing_profiles` at start with a fixed id and is read-only through the API. It is the default
unless a profile created through the API is marked default. A customer without an assignment is
billed with the default profile. The service is `profiles.ProfileService`, storage
`profiles_ports.ProfileStorage`; the API's JSON shapes (OpenMeter's BillingProfile) are
`tallybook.api.wire.billing_profiles`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tallybook.clock import from_micros
from tallybook.errors import DomainError
from tallybook.ids import stable_ulid

STRIPE = "stripe"  # Stripe invoices the customer, computes tax, collects the money
CUSTOM_INVOICING = "custom_invoicing"  # no app: Tallybook's invoice webhooks are the integration
COLLECTORS = (STRIPE, CUSTOM_INVOICING)
CHARGE_AUTOMATICALLY, SEND_INVOICE = "charge_automatically", "send_invoice"
COLLECTION_METHODS = (CHARGE_AUTOMATICALLY, SEND_INVOICE)
TAX_BEHAVIORS = ("exclusive", "inclusive")
CONFIG, API = "config", "api"  # where a profile comes from
# The config profile's id: the same in every process and database.
CONFIG_PROFILE_ID = stable_ulid("tallybook.billing.profile:config")
MAX_DURATION = timedelta(days=366)
NAME_MAX, DESCRIPTION_MAX, TEXT_MAX = 256, 1024, 1024
# OpenMeter's custom invoicing app numbers invoices INV-...; a profile may name its own series.
DEFAULT_NUMBER_PREFIX = "INV-"
DEFAULT_LOCALE = "en"
NUMBER_PREFIX = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._/-]{0,19}$")
NUMBER_PREFIX_HELP = "1 to 20 letters, digits and . _ / - (starting with a letter or digit), e.g. INV- or ACME/2026/"


def check_number_prefix(value: str) -> str | None:
    """Why `value` cannot be an invoice number prefix (None: it can)."""
    return None if NUMBER_PREFIX.match(value) else f"must be {NUMBER_PREFIX_HELP}"


def check_timezone(value: str) -> str | None:
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(value)
    except (ZoneInfoNotFoundError, ValueError):
        return f"{value!r} is not an IANA time zone name, e.g. Europe/Berlin or UTC"
    return None


def check_locale(value: str) -> str | None:
    from babel import Locale, UnknownLocaleError

    try:
        Locale.parse(value)
    except (UnknownLocaleError, ValueError, TypeError):
        return f"{value!r} is not a locale Babel knows, e.g. en, en_GB or de_DE"
    return None


@dataclass(frozen=True, slots=True)
class BillingProfile:
    id: str
    name: str
    default: bool
    source: str  # config | api
    collector: str = CUSTOM_INVOICING  # apps.invoicing (= apps.tax = apps.payment)
    # workflow.tax
    tax_enabled: bool = False
    tax_enforced: bool = False
    tax_behavior: str = "exclusive"  # workflow.invoicing.defaultTaxConfig.behavior
    # workflow.payment
    collection_method: str = CHARGE_AUTOMATICALLY
    auto_collect: bool = True  # Stripe invoice auto_advance after finalization
    # workflow.invoicing
    auto_advance: bool = False  # issue drafts without approval, after draft_period
    draft_period: timedelta = timedelta(0)
    due_after: timedelta = timedelta(days=30)  # send_invoice: days until due
    # workflow.collection.interval: wait this long after a period ends before drafting
    grace: timedelta = timedelta(hours=1)
    description: str | None = None
    supplier: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] | None = None
    # invoiceDocument: the number series of issued invoices, and how their page writes dates
    number_prefix: str = DEFAULT_NUMBER_PREFIX
    timezone: str | None = None  # None: the customer's time zone
    locale: str = DEFAULT_LOCALE
    created_at: datetime | None = None
    updated_at: datetime | None = None
    deleted_at: datetime | None = None

    @property
    def days_until_due(self) -> int:
        return max(0, self.due_after.days)

    @property
    def read_only(self) -> bool:
        return self.source == CONFIG


# -- errors ----------------------------------------------------------------------------------------------
class ProfileError(DomainError):
    status = 400
    code = "invalid-billing-profile"


class InvalidProfile(ProfileError):
    """A bad body: `errors` lists every field to fix as (JSON path, message)."""

    def __init__(self, errors: list[tuple[str, str]]) -> None:
        super().__init__(
            "; ".join(f"{name}: {message}" for name, message in errors),
            errors=[{"field": name, "message": message} for name, message in errors],
        )
        self.errors = errors


class ProfileNotFound(ProfileError):
    status = 404
    code = "billing-profile-not-found"


class ProfileConflict(ProfileError):
    status = 409
    code = "billing-profile-conflict"


class CustomerUnknown(ProfileError):
    status = 404
    code = "customer-not-found"


class OverrideNotFound(ProfileError):
    status = 404
    code = "customer-override-not-found"


# -- ISO 8601 durations ----------------------------------------------------------------------------------
# catalog.parse_cadence reads billing cadences (P1M, P1W, ...), which are calendar periods, not
# lengths of time; these are lengths: weeks, days and a time part (PT1H, P1DT12H, P30D).
_ISO_DURATION = re.compile(
    r"^P(?:(\d+)Y)?(?:(\d+)M)?(?:(\d+)W)?(?:(\d+)D)?(?:T(?:(\d+)H)?(?:(\d+)M)?(?:(\d+(?:\.\d{1,6})?)S)?)?$"
)
DURATION_HELP = "an ISO 8601 duration of weeks, days, hours, minutes or seconds, e.g. PT1H, P1D or P30D"


def parse_iso_duration(text: Any) -> timedelta:
    """`PT1H`, `P1D`, `P2W`, `P1DT12H`, `PT90S` -> timedelta; ValueError saying what to write."""
    match = _ISO_DURATION.match(text) if isinstance(text, str) else None
    if match is None or text in ("P", "PT") or text.endswith("T"):
        raise ValueError(f"{text!r} is not {DURATION_HELP}")
    years, months, weeks, days, hours, minutes = (int(g) if g else 0 for g in match.groups()[:6])
    if years or months:
        raise ValueError(f"{text!r}: months and years vary in length; write days instead, e.g. P30D")
    seconds = Decimal(match.group(7) or 0)
    return timedelta(weeks=weeks, days=days, hours=hours, minutes=minutes, microseconds=int(seconds * 1_000_000))


def format_iso_duration(span: timedelta) -> str:
    """A timedelta as the ISO 8601 duration parse_iso_duration reads back: P0D, PT1H, P30D, P1DT2H."""
    micros = to_micros_delta(span)
    days, rest = divmod(micros, 86_400_000_000)
    if rest == 0:
        return f"P{days}D"
    hours, rest = divmod(rest, 3_600_000_000)
    minutes, rest = divmod(rest, 60_000_000)
    text = "P" + (f"{days}D" if days else "") + "T"
    text += f"{hours}H" if hours else ""
    text += f"{minutes}M" if minutes else ""
    if rest:
        seconds = Decimal(rest) / Decimal(1_000_000)
        text += f"{format(seconds.normalize(), 'f')}S"
    return text


def to_micros_delta(span: timedelta) -> int:
    return (span.days * 86_400 + span.seconds) * 1_000_000 + span.microseconds


# -- a create/replace body, checked -----------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProfileInput:
    """A checked create or replace body. `collector` None: keep the profile's (replace without apps)."""

    name: str
    supplier: dict[str, Any]
    default: bool = False
    description: str | None = None
    metadata: dict[str, Any] | None = None
    collector: str | None = None
    grace: timedelta = timedelta(hours=1)
    auto_advance: bool = True
    draft_period: timedelta = timedelta(0)
    due_after: timedelta = timedelta(days=30)
    collection_method: str = CHARGE_AUTOMATICALLY
    auto_collect: bool = True
    tax_enabled: bool = True
    tax_enforced: bool = False
    tax_behavior: str = "exclusive"
    number_prefix: str = DEFAULT_NUMBER_PREFIX
    timezone: str | None = None
    locale: str = DEFAULT_LOCALE


# -- queries and answers --------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class ProfileListQuery:
    page: int = 1
    page_size: int = 100
    include_deleted: bool = False
    order_by: str = "createdAt"  # createdAt | updatedAt | default | name
    descending: bool = False


@dataclass(frozen=True, slots=True)
class ProfilePage:
    items: list[BillingProfile]
    total_count: int
    page: int
    page_size: int


@dataclass(frozen=True, slots=True)
class CustomerProfile:
    """A customer's effective profile; `assigned_*` are set when it has an override of its own."""

    customer_id: str
    profile: BillingProfile
    assigned_profile_id: str | None = None
    assigned_at: datetime | None = None
    assignment_updated_at: datetime | None = None


ORDER_KEYS = {
    "createdAt": lambda p: (p.created_at, p.id),
    "updatedAt": lambda p: (p.updated_at, p.id),
    "default": lambda p: (p.default, p.created_at, p.id),
    "name": lambda p: (p.name.casefold(), p.id),
}
ORDER_BY = tuple(ORDER_KEYS)


# -- the stored row (its settings as one JSON body) ----------------------------------------------------
def profile_body(profile: BillingProfile | ProfileInput, collector: str) -> dict[str, Any]:
    return {
        "supplier": profile.supplier,
        "metadata": profile.metadata,
        "apps": {"collector": collector},
        "document": {"number_prefix": profile.number_prefix, "timezone": profile.timezone, "locale": profile.locale},
        "workflow": {
            "grace_us": to_micros_delta(profile.grace),
            "auto_advance": profile.auto_advance,
            "draft_period_us": to_micros_delta(profile.draft_period),
            "due_after_us": to_micros_delta(profile.due_after),
            "collection_method": profile.collection_method,
            "auto_collect": profile.auto_collect,
            "tax_enabled": profile.tax_enabled,
            "tax_enforced": profile.tax_enforced,
            "tax_behavior": profile.tax_behavior,
        },
    }


def _opt_time(us: int | None) -> datetime | None:
    return None if us is None else from_micros(us)


def profile_from_row(row: dict[str, Any], default: bool) -> BillingProfile:
    body = row["body"] or {}
    flow = body.get("workflow") or {}
    document = body.get("document") or {}  # profiles stored before invoiceDocument have none
    return BillingProfile(
        id=row["id"],
        name=row["name"],
        description=row["description"],
        default=default,
        source=row["source"],
        collector=(body.get("apps") or {}).get("collector", CUSTOM_INVOICING),
        tax_enabled=bool(flow.get("tax_enabled", False)),
        tax_enforced=bool(flow.get("tax_enforced", False)),
        tax_behavior=flow.get("tax_behavior", "exclusive"),
        collection_method=flow.get("collection_method", CHARGE_AUTOMATICALLY),
        auto_collect=bool(flow.get("auto_collect", True)),
        auto_advance=bool(flow.get("auto_advance", False)),
        draft_period=timedelta(microseconds=int(flow.get("draft_period_us", 0))),
        due_after=timedelta(microseconds=int(flow.get("due_after_us", 30 * 86_400_000_000))),
        grace=timedelta(microseconds=int(flow.get("grace_us", 3_600_000_000))),
        supplier=dict(body.get("supplier") or {}),
        metadata=body.get("metadata"),
        number_prefix=document.get("number_prefix") or DEFAULT_NUMBER_PREFIX,
        timezone=document.get("timezone"),
        locale=document.get("locale") or DEFAULT_LOCALE,
        created_at=from_micros(row["created_us"]),
        updated_at=from_micros(row["updated_us"]),
        deleted_at=_opt_time(row["deleted_us"]),
    )
