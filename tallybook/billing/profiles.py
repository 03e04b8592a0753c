"""Billing profiles: which app collects an invoice (Stripe, or none: webhook-only), tax, collection
method, approval and grace. OpenMeter's BillingProfile shapes; one default profile from config.

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
billed with the default profile; `for_customers` answers any number of customers with two queries.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

from tallybook.billing.settings import BillingSettings
from tallybook.clock import Clock, format_rfc3339, from_micros, to_micros
from tallybook.customers import CustomerService
from tallybook.customers.model import CustomerNotFound
from tallybook.customers.validation import ADDRESS_FIELDS, address_json
from tallybook.errors import DomainError
from tallybook.ids import looks_like_ulid, new_ulid, stable_ulid
from tallybook.store import profiles as profile_store
from tallybook.store.base import SqlStore

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


# -- the wire shape (OpenMeter's BillingProfile) ---------------------------------------------------------
def _app_ref(collector: str) -> dict[str, Any]:
    return {"type": collector}


def workflow_json(profile: BillingProfile) -> dict[str, Any]:
    return {
        "collection": {"alignment": {"type": "subscription"}, "interval": format_iso_duration(profile.grace)},
        "invoicing": {
            "autoAdvance": profile.auto_advance,
            "draftPeriod": format_iso_duration(profile.draft_period),
            "dueAfter": format_iso_duration(profile.due_after),
            "progressiveBilling": False,
            "defaultTaxConfig": {"behavior": profile.tax_behavior},
        },
        "payment": {"collectionMethod": profile.collection_method, "autoCollect": profile.auto_collect},
        "tax": {"enabled": profile.tax_enabled, "enforced": profile.tax_enforced},
    }


def document_json(profile: BillingProfile) -> dict[str, Any]:
    body: dict[str, Any] = {"numberPrefix": profile.number_prefix, "locale": profile.locale}
    if profile.timezone is not None:
        body["timezone"] = profile.timezone
    return body


def apps_json(profile: BillingProfile) -> dict[str, Any]:
    ref = _app_ref(profile.collector)
    return {"tax": dict(ref), "invoicing": dict(ref), "payment": dict(ref)}


def profile_json(profile: BillingProfile) -> dict[str, Any]:
    body: dict[str, Any] = {"id": profile.id, "name": profile.name}
    if profile.description is not None:
        body["description"] = profile.description
    body["metadata"] = profile.metadata
    body["default"] = profile.default
    body["source"] = profile.source
    if profile.created_at is not None:
        body["createdAt"] = format_rfc3339(profile.created_at)
    if profile.updated_at is not None:
        body["updatedAt"] = format_rfc3339(profile.updated_at)
    if profile.deleted_at is not None:
        body["deletedAt"] = format_rfc3339(profile.deleted_at)
    body["supplier"] = profile.supplier
    body["workflow"] = workflow_json(profile)
    body["apps"] = apps_json(profile)
    body["invoiceDocument"] = document_json(profile)
    return body


# -- reading a create/replace body -----------------------------------------------------------------------
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


# Set by the server; a client may send them back unchanged from a GET (they are ignored).
_READ_ONLY = frozenset(("id", "createdAt", "updatedAt", "deletedAt", "source"))
_FIELDS = ("name", "description", "metadata", "supplier", "default", "workflow", "apps", "invoiceDocument")
_COUNTRY = re.compile(r"^[A-Z]{2}$")


class _Reader:
    """Walks a JSON body collecting every problem with its JSON path."""

    def __init__(self) -> None:
        self.errors: list[tuple[str, str]] = []

    def add(self, path: str, message: str) -> None:
        self.errors.append((path, message))

    def obj(self, value: Any, path: str, allowed: Iterable[str], ignored: Iterable[str] = ()) -> dict[str, Any]:
        if value is None:
            return {}
        if not isinstance(value, dict):
            self.add(path, "must be an object")
            return {}
        allowed, ignored = tuple(allowed), frozenset(ignored)
        for name in value:
            if name not in allowed and name not in ignored:
                self.add(f"{path}.{name}", f"unknown field; {path} takes {', '.join(allowed)}")
        return value

    def boolean(self, value: Any, path: str, default: bool) -> bool:
        if value is None:
            return default
        if not isinstance(value, bool):
            self.add(path, "must be true or false")
            return default
        return value

    def choice(self, value: Any, path: str, options: tuple[str, ...], default: str) -> str:
        if value is None:
            return default
        if value not in options:
            self.add(path, f"must be {' or '.join(options)}, got {value!r}")
            return default
        return str(value)

    def duration(self, value: Any, path: str, default: timedelta, whole_days: bool = False) -> timedelta:
        if value is None:
            return default
        try:
            span = parse_iso_duration(value)
        except ValueError as exc:
            self.add(path, str(exc))
            return default
        if span > MAX_DURATION:
            self.add(path, f"must be at most P{MAX_DURATION.days}D")
            return default
        if whole_days and span % timedelta(days=1):
            self.add(path, f"must be whole days, e.g. P30D (got {value})")
            return default
        return span

    def text(self, value: Any, path: str, max_length: int, required: bool = False) -> str | None:
        if value is None:
            if required:
                self.add(path, f"is required: a string of 1 to {max_length} characters")
            return None
        if not isinstance(value, str) or not value.strip() or len(value) > max_length:
            self.add(path, f"must be a string of 1 to {max_length} characters")
            return None
        return value


def _metadata(reader: _Reader, value: Any) -> dict[str, Any] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(v, str) for v in value.values()):
        reader.add("metadata", 'must be an object of string values, e.g. {"team": "growth"}')
        return None
    return dict(value)


def _supplier(reader: _Reader, value: Any) -> dict[str, Any]:
    if value is None:
        reader.add("supplier", 'is required: an object with at least `name`, e.g. {"name": "Example Ltd"}')
        return {}
    raw = reader.obj(value, "supplier", ("name", "key", "taxId", "addresses"), ignored=("id",))
    out: dict[str, Any] = {}
    name = reader.text(raw.get("name"), "supplier.name", NAME_MAX, required=isinstance(value, dict))
    if name is not None:
        out["name"] = name
    key = reader.text(raw.get("key"), "supplier.key", NAME_MAX)
    if key is not None:
        out["key"] = key
    if raw.get("taxId") is not None:
        tax = reader.obj(raw["taxId"], "supplier.taxId", ("code",))
        code = reader.text(tax.get("code"), "supplier.taxId.code", 32)
        if code is not None:
            out["taxId"] = {"code": code}
    addresses = raw.get("addresses")
    if addresses is not None:
        if not isinstance(addresses, list) or len(addresses) > 1:
            reader.add("supplier.addresses", "must be a list of at most one address")
        elif addresses:
            path = "supplier.addresses[0]"
            address = reader.obj(addresses[0], path, ADDRESS_FIELDS)
            clean: dict[str, str] = {}
            for name in ADDRESS_FIELDS:
                got = reader.text(address.get(name), f"{path}.{name}", TEXT_MAX)
                if got is not None:
                    clean[name] = got
            country = clean.get("country")
            if country is not None and not _COUNTRY.match(country):
                reader.add(f"{path}.country", "must be an ISO 3166-1 alpha-2 code in capitals, e.g. GB or US")
            out["addresses"] = [clean]
    return out


def _document(reader: _Reader, value: Any) -> tuple[str, str | None, str]:
    """`invoiceDocument`: {numberPrefix, timezone, locale}, each optional."""
    raw = reader.obj(value, "invoiceDocument", ("numberPrefix", "timezone", "locale"))
    prefix, timezone, locale = DEFAULT_NUMBER_PREFIX, None, DEFAULT_LOCALE
    checks = (
        ("numberPrefix", check_number_prefix),
        ("timezone", check_timezone),
        ("locale", check_locale),
    )
    found: dict[str, str] = {}
    for name, check in checks:
        got = raw.get(name)
        if got is None:
            continue
        problem = check(got) if isinstance(got, str) else "must be a string"
        if problem is not None:
            reader.add(f"invoiceDocument.{name}", problem)
            continue
        found[name] = got
    prefix = found.get("numberPrefix", prefix)
    timezone = found.get("timezone", timezone)
    locale = found.get("locale", locale)
    return prefix, timezone, locale


def _collector(reader: _Reader, value: Any) -> str | None:
    """`apps`: {tax, invoicing, payment}, each an app type or {"type": ...}; all three the same."""
    if value is None:
        return None
    raw = reader.obj(value, "apps", ("tax", "invoicing", "payment"))
    if not isinstance(value, dict):
        return None
    named: dict[str, str] = {}
    for role in ("tax", "invoicing", "payment"):
        path = f"apps.{role}"
        ref = raw.get(role)
        if ref is None:
            reader.add(path, f"is required: {' or '.join(COLLECTORS)} (the same app for tax, invoicing and payment)")
            continue
        if isinstance(ref, dict):
            reader.obj(ref, path, ("type",), ignored=("id", "name"))
            ref = ref.get("type")
        if isinstance(ref, str) and looks_like_ulid(ref):
            reader.add(path, f"Tallybook has no app ids; name the app type: {' or '.join(COLLECTORS)}")
            continue
        if ref not in COLLECTORS:
            reader.add(path, f'must be {" or ".join(COLLECTORS)} (or {{"type": ...}}), got {ref!r}')
            continue
        named[role] = str(ref)
    if len(set(named.values())) > 1:
        listed = ", ".join(f"{role}={app}" for role, app in named.items())
        reader.add("apps", f"tax, invoicing and payment must name the same app ({listed}); one app does all three")
        return None
    if len(named) < 3:
        return None
    return named["invoicing"]


def parse_profile(payload: Any) -> ProfileInput:
    """Check a create or replace body (OpenMeter's BillingProfileCreate); raise InvalidProfile.

    Fields left out take OpenMeter's defaults: collection interval PT1H, autoAdvance true,
    draftPeriod P0D, dueAfter P30D, charge_automatically, tax enabled (and not enforced).
    """
    reader = _Reader()
    if not isinstance(payload, dict):
        raise InvalidProfile([("(body)", "send a JSON object with at least `name` and `supplier`")])
    for name in payload:
        if name not in _FIELDS and name not in _READ_ONLY:
            reader.add(name, f"unknown field; a billing profile takes {', '.join(_FIELDS)}")
    name = reader.text(payload.get("name"), "name", NAME_MAX, required=True)
    description = reader.text(payload.get("description"), "description", DESCRIPTION_MAX)
    metadata = _metadata(reader, payload.get("metadata"))
    supplier = _supplier(reader, payload.get("supplier"))
    default = reader.boolean(payload.get("default"), "default", False)
    collector = _collector(reader, payload.get("apps"))
    number_prefix, timezone, locale = _document(reader, payload.get("invoiceDocument"))

    workflow = reader.obj(payload.get("workflow"), "workflow", ("collection", "invoicing", "payment", "tax"))
    collection = reader.obj(workflow.get("collection"), "workflow.collection", ("alignment", "interval"))
    alignment = collection.get("alignment")
    if alignment is not None:
        aligned = reader.obj(alignment, "workflow.collection.alignment", ("type", "recurringPeriod"))
        if isinstance(alignment, dict) and aligned.get("type") != "subscription":
            reader.add(
                "workflow.collection.alignment.type",
                "only `subscription` is supported: an invoice is drafted when each billing period ends",
            )
    grace = reader.duration(collection.get("interval"), "workflow.collection.interval", timedelta(hours=1))

    invoicing = reader.obj(
        workflow.get("invoicing"),
        "workflow.invoicing",
        (
            "autoAdvance",
            "draftPeriod",
            "dueAfter",
            "progressiveBilling",
            "subscriptionEndProrationMode",
            "defaultTaxConfig",
        ),
    )
    auto_advance = reader.boolean(invoicing.get("autoAdvance"), "workflow.invoicing.autoAdvance", True)
    draft_period = reader.duration(invoicing.get("draftPeriod"), "workflow.invoicing.draftPeriod", timedelta(0))
    due_after = reader.duration(
        invoicing.get("dueAfter"), "workflow.invoicing.dueAfter", timedelta(days=30), whole_days=True
    )
    # Tallybook invoices each period once, at its end: progressive billing is not done; accepted so
    # that a profile read from OpenMeter can be sent as it is.
    reader.boolean(invoicing.get("progressiveBilling"), "workflow.invoicing.progressiveBilling", False)
    proration = invoicing.get("subscriptionEndProrationMode")
    if proration is not None and proration != "bill_actual_period":
        reader.add(
            "workflow.invoicing.subscriptionEndProrationMode",
            "only `bill_actual_period` is supported: a subscription that ends mid-period pays for the time used",
        )
    tax_config = reader.obj(
        invoicing.get("defaultTaxConfig"),
        "workflow.invoicing.defaultTaxConfig",
        ("behavior",),
    )
    tax_behavior = reader.choice(
        tax_config.get("behavior"), "workflow.invoicing.defaultTaxConfig.behavior", TAX_BEHAVIORS, "exclusive"
    )

    payment = reader.obj(workflow.get("payment"), "workflow.payment", ("collectionMethod", "autoCollect"))
    collection_method = reader.choice(
        payment.get("collectionMethod"), "workflow.payment.collectionMethod", COLLECTION_METHODS, CHARGE_AUTOMATICALLY
    )
    auto_collect = reader.boolean(payment.get("autoCollect"), "workflow.payment.autoCollect", True)

    tax = reader.obj(workflow.get("tax"), "workflow.tax", ("enabled", "enforced"))
    tax_enabled = reader.boolean(tax.get("enabled"), "workflow.tax.enabled", True)
    tax_enforced = reader.boolean(tax.get("enforced"), "workflow.tax.enforced", False)
    if tax_enforced and not tax_enabled:
        reader.add("workflow.tax.enforced", "true needs workflow.tax.enabled: true (tax cannot be enforced when off)")

    if reader.errors:
        raise InvalidProfile(reader.errors)
    assert name is not None
    return ProfileInput(
        name=name,
        description=description,
        metadata=metadata,
        supplier=supplier,
        default=default,
        collector=collector,
        grace=grace,
        auto_advance=auto_advance,
        draft_period=draft_period,
        due_after=due_after,
        collection_method=collection_method,
        auto_collect=auto_collect,
        tax_enabled=tax_enabled,
        tax_enforced=tax_enforced,
        tax_behavior=tax_behavior,
        number_prefix=number_prefix,
        timezone=timezone,
        locale=locale,
    )


def parse_override(payload: Any) -> str | None:
    """A customer override body `{billingProfileId}`; None (or left out): follow the default."""
    if payload is None:
        return None
    if not isinstance(payload, dict):
        raise InvalidProfile([("(body)", 'send a JSON object: {"billingProfileId": "<profile id>"}')])
    errors = [
        (name, "unknown field; a customer override takes billingProfileId")
        for name in payload
        if name not in ("billingProfileId", "customerId")
    ]
    profile_id = payload.get("billingProfileId")
    if profile_id is not None and not isinstance(profile_id, str):
        errors.append(("billingProfileId", "must be a billing profile id (a string) or null for the default"))
    if errors:
        raise InvalidProfile(errors)
    return profile_id


# -- stored rows ---------------------------------------------------------------------------------------
def _body(profile: BillingProfile | ProfileInput, collector: str) -> dict[str, Any]:
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


def config_profile(settings: BillingSettings) -> BillingProfile:
    """The default profile tallybook.yaml describes (timestamps and `default` are set on reading)."""
    cfg = settings.profile
    supplier: dict[str, Any] = {}
    if cfg.supplier.name is not None:
        supplier["name"] = cfg.supplier.name
    if cfg.supplier.tax_id is not None:
        supplier["taxId"] = {"code": cfg.supplier.tax_id}
    if cfg.supplier.address is not None:
        supplier["addresses"] = [address_json(cfg.supplier.address)]
    return BillingProfile(
        id=CONFIG_PROFILE_ID,
        name=cfg.name,
        description=cfg.description,
        default=True,
        source=CONFIG,
        collector=cfg.collector,
        tax_enabled=cfg.tax_enabled,
        tax_enforced=cfg.tax_enforced,
        tax_behavior=cfg.tax_behavior,
        collection_method=cfg.collection_method,
        auto_collect=cfg.auto_collect,
        auto_advance=settings.auto_issue,
        draft_period=settings.auto_issue_after,
        due_after=cfg.due_after,
        grace=settings.invoice_grace,
        supplier=supplier,
        number_prefix=cfg.number_prefix,
        timezone=cfg.timezone,
        locale=cfg.locale,
    )


# -- the service -----------------------------------------------------------------------------------------
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


_ORDER_KEYS = {
    "createdAt": lambda p: (p.created_at, p.id),
    "updatedAt": lambda p: (p.updated_at, p.id),
    "default": lambda p: (p.default, p.created_at, p.id),
    "name": lambda p: (p.name.casefold(), p.id),
}
ORDER_BY = tuple(_ORDER_KEYS)


class ProfileService:
    """Billing profiles and which customers use which (no HTTP here; see api/routes/billing_profiles)."""

    def __init__(
        self,
        store: SqlStore,
        clock: Clock,
        customers: CustomerService,
        settings: BillingSettings | None = None,
        stripe_enabled: bool = False,
    ) -> None:
        self.store = store
        self.clock = clock
        self.customers = customers
        self.stripe_enabled = stripe_enabled
        self.config = config_profile(settings or BillingSettings())
        self._started = clock.now()

    # -- the config profile ----------------------------------------------------------------------------
    def sync_config(self) -> BillingProfile:
        """Write the config profile to the database (at start): insert it, or update it if the file changed."""
        now_us = to_micros(self.clock.now())
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            self._write_config(conn, now_us)
            return self._effective(conn, CONFIG_PROFILE_ID)

    def _write_config(self, conn: Any, now_us: int) -> None:
        """Make the config row match this process's settings and carry the right default flag."""
        row = profile_store.get_profile(conn, CONFIG_PROFILE_ID)
        is_default = profile_store.live_api_default(conn) is None
        values = {
            "name": self.config.name,
            "description": self.config.description,
            "source": CONFIG,
            "body": _body(self.config, self.config.collector),
            "deleted_us": None,
        }
        if row is None:
            profile_store.insert_profile(
                conn,
                {
                    "id": CONFIG_PROFILE_ID,
                    "is_default": is_default,
                    "created_us": now_us,
                    "updated_us": now_us,
                    **values,
                },
            )
            return
        changed = any(row[k] != v for k, v in values.items())
        if changed:
            profile_store.update_profile(
                conn, CONFIG_PROFILE_ID, {**values, "is_default": is_default, "updated_us": now_us}
            )
        elif row["is_default"] != is_default:
            profile_store.update_profile(conn, CONFIG_PROFILE_ID, {"is_default": is_default})

    # -- reading -----------------------------------------------------------------------------------------
    def _profiles(self, conn: Any, include_deleted: bool = False) -> list[BillingProfile]:
        """Every (live) profile with `default` resolved; the config profile always among them."""
        rows = profile_store.profile_rows(conn, include_deleted)
        default_id = CONFIG_PROFILE_ID
        api_defaults = [r for r in rows if r["source"] == API and r["is_default"] and r["deleted_us"] is None]
        if api_defaults:
            default_id = max(api_defaults, key=lambda r: (r["updated_us"], r["id"]))["id"]
        out: list[BillingProfile] = []
        config_row = None
        for row in rows:
            if row["id"] == CONFIG_PROFILE_ID:
                config_row = row
                continue
            out.append(profile_from_row(row, row["id"] == default_id))
        # The config profile says what this process's tallybook.yaml says; the row gives its times.
        created = from_micros(config_row["created_us"]) if config_row else self._started
        updated = from_micros(config_row["updated_us"]) if config_row else self._started
        config = replace(self.config, default=default_id == CONFIG_PROFILE_ID, created_at=created, updated_at=updated)
        return [config, *out]

    def _effective(self, conn: Any, profile_id: str) -> BillingProfile:
        for profile in self._profiles(conn, include_deleted=True):
            if profile.id == profile_id:
                return profile
        raise ProfileNotFound(f"no billing profile has the id {profile_id!r}", billingProfileId=profile_id)

    def get(self, profile_id: str) -> BillingProfile:
        """A profile by id, deleted ones too (showing deletedAt)."""
        with self.store.read() as conn:
            return self._effective(conn, profile_id)

    def list_profiles(self, query: ProfileListQuery | None = None) -> ProfilePage:
        query = query or ProfileListQuery()
        if query.order_by not in _ORDER_KEYS:
            raise ProfileError(f"orderBy must be one of {', '.join(ORDER_BY)}, got {query.order_by!r}")
        with self.store.read() as conn:
            found = self._profiles(conn, query.include_deleted)
        found.sort(key=_ORDER_KEYS[query.order_by], reverse=query.descending)
        start = (query.page - 1) * query.page_size
        return ProfilePage(found[start : start + query.page_size], len(found), query.page, query.page_size)

    def default(self) -> BillingProfile:
        with self.store.read() as conn:
            return next(p for p in self._profiles(conn) if p.default)

    def for_customers(self, customer_ids: Iterable[str]) -> dict[str, BillingProfile]:
        """Each customer's profile (its assignment, else the default): two queries for any number."""
        ids = list(dict.fromkeys(customer_ids))
        with self.store.read() as conn:
            profiles = self._profiles(conn)
            assigned = profile_store.assignments_of(conn, ids) if ids else {}
        by_id = {p.id: p for p in profiles}
        default = next(p for p in profiles if p.default)
        # An assignment to a profile deleted meanwhile (cannot happen through the service) -> default.
        return {cid: by_id.get(assigned.get(cid, ""), default) for cid in ids}

    def shortest_grace(self) -> timedelta:
        """The shortest grace of any live profile: no customer's period is due before now minus this."""
        with self.store.read() as conn:
            return min(p.grace for p in self._profiles(conn))

    # -- writing -----------------------------------------------------------------------------------------
    def _check_apps(self, collector: str) -> None:
        if collector == STRIPE and not self.stripe_enabled:
            message = (
                "stripe needs the Stripe integration: set stripe.enabled: true in tallybook.yaml (and STRIPE_API_KEY)"
            )
            raise InvalidProfile([("apps", message)])

    def create(self, data: ProfileInput) -> BillingProfile:
        collector = data.collector or CUSTOM_INVOICING
        self._check_apps(collector)
        now = self.clock.now()
        now_us = to_micros(now)
        profile_id = new_ulid(now)
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            if data.default:
                profile_store.clear_defaults(conn)
            profile_store.insert_profile(
                conn,
                {
                    "id": profile_id,
                    "name": data.name,
                    "description": data.description,
                    "is_default": data.default,
                    "source": API,
                    "body": _body(data, collector),
                    "created_us": now_us,
                    "updated_us": now_us,
                    "deleted_us": None,
                },
            )
            self._write_config(conn, now_us)
            return self._effective(conn, profile_id)

    def check_not_config(self, profile_id: str, action: str = "changed") -> None:
        """Refuse (409) to change the config profile: it is tallybook.yaml's."""
        if profile_id == CONFIG_PROFILE_ID:
            raise ProfileConflict(
                f"billing profile {profile_id} is defined in tallybook.yaml (billing.profile, billing.invoice_grace, "
                f"billing.auto_issue, billing.auto_issue_after) and cannot be {action} through the API; "
                "edit the file and restart, or create a profile of your own",
                billingProfileId=profile_id,
            )

    def _writable(self, conn: Any, profile_id: str, action: str) -> dict[str, Any]:
        self.check_not_config(profile_id, action)
        row = profile_store.get_profile(conn, profile_id)
        if row is None:
            raise ProfileNotFound(f"no billing profile has the id {profile_id!r}", billingProfileId=profile_id)
        if row["deleted_us"] is not None:
            deleted = format_rfc3339(from_micros(row["deleted_us"]))
            raise ProfileNotFound(f"billing profile {profile_id} was deleted at {deleted}", billingProfileId=profile_id)
        return row

    def replace(self, profile_id: str, data: ProfileInput) -> BillingProfile:
        """Replace every field (OpenMeter's PUT); `apps` left out keeps the profile's app."""
        now_us = to_micros(self.clock.now())
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            row = self._writable(conn, profile_id, "changed")
            collector = data.collector or (row["body"].get("apps") or {}).get("collector", CUSTOM_INVOICING)
            self._check_apps(collector)
            if data.default:
                profile_store.clear_defaults(conn, except_id=profile_id)
            profile_store.update_profile(
                conn,
                profile_id,
                {
                    "name": data.name,
                    "description": data.description,
                    "is_default": data.default,
                    "body": _body(data, collector),
                    "updated_us": now_us,
                },
            )
            self._write_config(conn, now_us)
            return self._effective(conn, profile_id)

    def delete(self, profile_id: str) -> BillingProfile:
        """Soft-delete a profile no live customer is assigned to; a deleted default hands over to config."""
        now_us = to_micros(self.clock.now())
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            self._writable(conn, profile_id, "deleted")
            count, sample = profile_store.live_customers_on(conn, profile_id)
            if count:
                shown = ", ".join(sample) + (", ..." if count > len(sample) else "")
                raise ProfileConflict(
                    f"billing profile {profile_id} is assigned to {count} customer(s) ({shown}); move them to "
                    "another profile (PUT /api/v1/billing/customers/{customerId}) or remove their override first",
                    billingProfileId=profile_id,
                    customerCount=count,
                )
            profile_store.delete_assignments_to(conn, profile_id)  # deleted customers' leftovers
            profile_store.update_profile(
                conn, profile_id, {"deleted_us": now_us, "is_default": False, "updated_us": now_us}
            )
            self._write_config(conn, now_us)
            return self._effective(conn, profile_id)

    # -- customer overrides --------------------------------------------------------------------------
    def _customer_id(self, customer: str) -> str:
        try:
            return self.customers.resolve(customer).id
        except CustomerNotFound as exc:
            raise CustomerUnknown(str(exc), customerIdOrKey=customer) from None

    def _customer_profile(self, conn: Any, customer_id: str) -> CustomerProfile:
        profiles = self._profiles(conn)
        by_id = {p.id: p for p in profiles}
        default = next(p for p in profiles if p.default)
        row = profile_store.get_assignment(conn, customer_id)
        if row is None or row["profile_id"] not in by_id:
            return CustomerProfile(customer_id, default)
        return CustomerProfile(
            customer_id,
            by_id[row["profile_id"]],
            assigned_profile_id=row["profile_id"],
            assigned_at=from_micros(row["created_us"]),
            assignment_updated_at=from_micros(row["updated_us"]),
        )

    def customer_profile(self, customer: str) -> CustomerProfile:
        """A customer's (id or key) effective profile: its override, else the default."""
        customer_id = self._customer_id(customer)
        with self.store.read() as conn:
            return self._customer_profile(conn, customer_id)

    def assign(self, customer: str, profile_id: str | None) -> CustomerProfile:
        """Bill a customer (id or key) with a profile; None: remove its override (follow the default)."""
        customer_id = self._customer_id(customer)
        now_us = to_micros(self.clock.now())
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            if profile_id is None:
                profile_store.delete_assignment(conn, customer_id)
                return self._customer_profile(conn, customer_id)
            row = profile_store.get_profile(conn, profile_id)
            if row is None and profile_id != CONFIG_PROFILE_ID:
                raise InvalidProfile([("billingProfileId", f"no billing profile has the id {profile_id!r}")])
            if row is not None and row["deleted_us"] is not None:
                raise InvalidProfile([("billingProfileId", f"billing profile {profile_id} was deleted")])
            if row is None:
                self._write_config(conn, now_us)
            profile_store.put_assignment(conn, customer_id, profile_id, now_us)
            return self._customer_profile(conn, customer_id)

    def unassign(self, customer: str) -> None:
        """Remove a customer's override; it is billed with the default profile again."""
        customer_id = self._customer_id(customer)
        with self.store.write() as conn:
            profile_store.lock_profiles(conn)
            if not profile_store.delete_assignment(conn, customer_id):
                raise OverrideNotFound(
                    f"customer {customer_id} has no billing profile override; it is billed with the default profile",
                    customerId=customer_id,
                )


def customer_profile_json(found: CustomerProfile) -> dict[str, Any]:
    """GET/PUT /api/v1/billing/customers/{id}: the effective profile, plus OpenMeter's field names."""
    profile = found.profile
    body: dict[str, Any] = {
        "customerId": found.customer_id,
        "billingProfileId": profile.id,
        "baseBillingProfileId": profile.id,
    }
    if found.assigned_profile_id is not None:
        override: dict[str, Any] = {"customerId": found.customer_id, "billingProfileId": found.assigned_profile_id}
        if found.assigned_at is not None:
            override["createdAt"] = format_rfc3339(found.assigned_at)
        if found.assignment_updated_at is not None:
            override["updatedAt"] = format_rfc3339(found.assignment_updated_at)
        body["customerOverride"] = override
    body["profile"] = profile_json(profile)
    body["customerProfile"] = {
        "supplier": profile.supplier,
        "workflow": workflow_json(profile),
        "apps": apps_json(profile),
    }
    return body


__all__ = [
    "CHARGE_AUTOMATICALLY",
    "COLLECTORS",
    "CONFIG_PROFILE_ID",
    "CUSTOM_INVOICING",
    "SEND_INVOICE",
    "STRIPE",
    "BillingProfile",
    "CustomerProfile",
    "InvalidProfile",
    "ProfileConflict",
    "ProfileError",
    "ProfileInput",
    "ProfileListQuery",
    "ProfileNotFound",
    "ProfilePage",
    "ProfileService",
    "customer_profile_json",
    "document_json",
    "format_iso_duration",
    "parse_iso_duration",
    "parse_override",
    "parse_profile",
    "profile_json",
]
