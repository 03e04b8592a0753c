"""The catalog: plans with versioned rate cards, their validation and their JSON shapes.

A plan key has numbered versions. A version starts as a **draft** that can be edited, is
**published** (from then on immutable; publishing archives the version that was published before
it) and is finally **archived**. A change to a published plan is a new draft version copied from
it (`next_version`). At most one live draft and one published version exist per key.

Two JSON shapes live here: the API's, which follows OpenMeter's `Plan`/`RateCard`/price schemas
(camelCase, amounts as decimal strings), and the canonical document the store keeps (snake_case,
one-to-one with `tallybook.billing.models`). No FastAPI here: the routes map `CatalogError`s to
problem answers.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import datetime
from decimal import Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

from tallybook.billing.currency import validate_currency
from tallybook.billing.models import (
    BillingCadence,
    Cadence,
    Commitments,
    FlatPrice,
    PackagePrice,
    PaymentTerm,
    PlanVersion,
    RateCard,
    Tier,
    TieredPrice,
    TierMode,
    UnitPrice,
)
from tallybook.billing.settings import TAX_CODE_PATTERN, BillingSettings
from tallybook.clock import Clock, SystemClock, format_rfc3339, from_micros, to_micros
from tallybook.entitlements.recurrence import Interval
from tallybook.ids import looks_like_ulid, new_ulid
from tallybook.meters.models import MeterNotFound
from tallybook.meters.service import MeterService
from tallybook.store.base import SqlStore
from tallybook.store.catalog import CatalogRepository, PlanLock, PlanSearch, PlanVersionRow

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

FieldErrors = list[tuple[str, str]]


# -- errors ----------------------------------------------------------------------------------------
class CatalogError(Exception):
    status = 400
    code = "catalog-error"

    def __init__(self, detail: str, errors: Sequence[tuple[str, str]] = ()) -> None:
        super().__init__(detail)
        self.detail = detail
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


def _decimal(value: Any, name: str, errors: FieldErrors, *, positive: bool = False) -> Decimal | None:
    """A non-negative (or positive) decimal from a JSON string or number; records an error instead."""
    if value is None:
        errors.append((name, 'is required: a decimal number written as a string, e.g. "0.001"'))
        return None
    if isinstance(value, bool) or not isinstance(value, str | int | Decimal):
        errors.append((name, 'must be a decimal number written as a string, e.g. "0.001"'))
        return None
    try:
        number = Decimal(value.strip()) if isinstance(value, str) else Decimal(value)
    except InvalidOperation:
        errors.append((name, f"{value!r} is not a decimal number"))
        return None
    if not number.is_finite():
        errors.append((name, f"{value!r} is not a finite number"))
        return None
    if number < 0 or (positive and number == 0):
        errors.append((name, "must be greater than 0" if positive else "must not be negative"))
        return None
    if number >= AMOUNT_LIMIT:
        errors.append((name, f"must be less than {plain(AMOUNT_LIMIT)}"))
        return None
    exponent = number.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -MAX_DECIMAL_PLACES:
        errors.append((name, f"has more than {MAX_DECIMAL_PLACES} decimal places"))
        return None
    if isinstance(exponent, int) and exponent > 0:
        number = number.quantize(Decimal(1))
    return number


# -- API JSON → model ------------------------------------------------------------------------------
def _text(
    body: Mapping[str, Any], name: str, path: str, errors: FieldErrors, *, required: bool, limit: int
) -> str | None:
    value = body.get(name)
    if value is None:
        if required:
            errors.append((path, "is required"))
        return None
    if not isinstance(value, str) or (required and not value.strip()):
        errors.append((path, "must be a non-empty string" if required else "must be a string"))
        return None
    if len(value) > limit:
        errors.append((path, f"must be at most {limit} characters"))
        return None
    return value


def _key(value: Any, path: str, errors: FieldErrors) -> str | None:
    if value is None:
        errors.append((path, "is required"))
        return None
    if not isinstance(value, str) or not KEY_PATTERN.match(value) or len(value) > MAX_KEY_LENGTH:
        errors.append((path, "must be lower-case letters, digits and single underscores, at most 64 characters"))
        return None
    return value


def _metadata(value: Any, path: str, errors: FieldErrors) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        errors.append((path, "must be an object of string values"))
        return None
    return dict(value)


def _commitments(body: Mapping[str, Any], path: str, errors: FieldErrors) -> Commitments:
    before = len(errors)
    minimum = maximum = None
    if body.get("minimumAmount") is not None:
        minimum = _decimal(body["minimumAmount"], f"{path}minimumAmount", errors)
    if body.get("maximumAmount") is not None:
        maximum = _decimal(body["maximumAmount"], f"{path}maximumAmount", errors)
    if len(errors) == before and minimum is not None and maximum is not None and minimum > maximum:
        errors.append((f"{path}minimumAmount", f"must not be greater than maximumAmount ({plain(maximum)})"))
    return Commitments(minimum=minimum, maximum=maximum)


def _tiers(value: Any, path: str, errors: FieldErrors) -> tuple[Tier, ...]:
    if not isinstance(value, list) or not value:
        errors.append((path, "must be a list of at least one tier"))
        return ()
    if len(value) > MAX_TIERS:
        errors.append((path, f"must have at most {MAX_TIERS} tiers"))
        return ()
    tiers: list[Tier] = []
    previous: Decimal | None = None
    for index, raw in enumerate(value):
        here = f"{path}[{index}]"
        if not isinstance(raw, dict):
            errors.append((here, "must be an object with upToAmount, unitPrice and flatPrice"))
            continue
        last = index == len(value) - 1
        up_to: Decimal | None = None
        if raw.get("upToAmount") is None:
            if not last:
                errors.append((f"{here}.upToAmount", "is required: only the last tier may be open-ended"))
        else:
            up_to = _decimal(raw["upToAmount"], f"{here}.upToAmount", errors, positive=True)
            if last:
                errors.append((f"{here}.upToAmount", "must be left out: the last tier is open-ended"))
            elif up_to is not None and previous is not None and up_to <= previous:
                errors.append((f"{here}.upToAmount", f"must be greater than the previous tier's ({plain(previous)})"))
            if up_to is not None:
                previous = up_to
        components: dict[str, Decimal] = {}
        for component, kind in (("unitPrice", "unit"), ("flatPrice", "flat")):
            part = raw.get(component)
            if part is None:
                continue
            if not isinstance(part, dict):
                errors.append((f"{here}.{component}", f'must be an object like {{"type": "{kind}", "amount": "1"}}'))
                continue
            if part.get("type", kind) != kind:
                errors.append((f"{here}.{component}.type", f"must be {kind!r}"))
            amount = _decimal(part.get("amount"), f"{here}.{component}.amount", errors)
            if amount is not None:
                components[component] = amount
        if raw.get("unitPrice") is None and raw.get("flatPrice") is None:
            errors.append((here, "needs a unitPrice, a flatPrice or both"))
        tiers.append(
            Tier(
                up_to=up_to,
                unit_amount=components.get("unitPrice", Decimal(0)),
                flat_amount=components.get("flatPrice", Decimal(0)),
            )
        )
    return tuple(tiers)


def _usage_price(
    raw: Mapping[str, Any], path: str, errors: FieldErrors
) -> tuple[UnitPrice | PackagePrice | TieredPrice | None, Commitments]:
    kind = raw.get("type")
    commitments = _commitments(raw, f"{path}.", errors)
    if kind == "unit":
        amount = _decimal(raw.get("amount"), f"{path}.amount", errors)
        return (UnitPrice(amount) if amount is not None else None), commitments
    if kind == "package":
        amount = _decimal(raw.get("amount"), f"{path}.amount", errors)
        size = _decimal(raw.get("quantityPerPackage"), f"{path}.quantityPerPackage", errors, positive=True)
        if amount is None or size is None:
            return None, commitments
        return PackagePrice(amount, size), commitments
    if kind == "tiered":
        mode = raw.get("mode")
        if mode not in ("graduated", "volume"):
            errors.append((f"{path}.mode", "must be 'graduated' or 'volume'"))
        tiers = _tiers(raw.get("tiers"), f"{path}.tiers", errors)
        if mode not in ("graduated", "volume"):
            return None, commitments
        return TieredPrice(TierMode(mode), tiers), commitments
    if kind == "flat":
        errors.append(
            (
                f"{path}.type",
                "a usage_based rate card needs a unit, package or tiered price; "
                "charge a fixed fee with a flat_fee rate card",
            )
        )
    elif kind == "dynamic":
        errors.append((f"{path}.type", "dynamic prices are not supported; use unit, package or tiered"))
    else:
        errors.append((f"{path}.type", "must be one of unit, package, tiered"))
    return None, commitments


def parse_usage_price(raw: Any, path: str = "price") -> tuple[UnitPrice | PackagePrice | TieredPrice, Commitments]:
    """A usage price in OpenMeter's shape → the model and its spend commitments (InvalidPlan if bad)."""
    errors: FieldErrors = []
    if not isinstance(raw, dict):
        raise InvalidPlan([(path, "must be an object with a type")])
    price, commitments = _usage_price(raw, path, errors)
    if errors or price is None:
        raise InvalidPlan(errors or [(path, "is not a valid price")])
    return price, commitments


def _flat_price(raw: Mapping[str, Any], path: str, errors: FieldErrors) -> FlatPrice | None:
    if raw.get("type") != "flat":
        errors.append((f"{path}.type", "a flat_fee rate card's price must have type 'flat'"))
        return None
    for extra in ("minimumAmount", "maximumAmount"):
        if raw.get(extra) is not None:
            errors.append((f"{path}.{extra}", "spend commitments apply to usage-based prices only"))
    term_text = raw.get("paymentTerm", PaymentTerm.IN_ADVANCE.value)
    term: PaymentTerm | None = None
    if term_text in (PaymentTerm.IN_ADVANCE.value, PaymentTerm.IN_ARREARS.value):
        term = PaymentTerm(term_text)
    else:
        errors.append((f"{path}.paymentTerm", "must be 'in_advance' or 'in_arrears'"))
    amount = _decimal(raw.get("amount"), f"{path}.amount", errors)
    if amount is None or term is None:
        return None
    return FlatPrice(amount, term)


def _tax_code(raw: Mapping[str, Any], path: str, errors: FieldErrors) -> str | None:
    config = raw.get("taxConfig")
    if config is None:
        return None
    stripe = config.get("stripe") if isinstance(config, dict) else None
    if not isinstance(config, dict) or (stripe is not None and not isinstance(stripe, dict)):
        errors.append((f"{path}.taxConfig", 'must look like {"stripe": {"code": "txcd_10103001"}}'))
        return None
    if stripe is None:
        return None
    code = stripe.get("code")
    if not isinstance(code, str) or not TAX_CODE_PATTERN.match(code):
        errors.append((f"{path}.taxConfig.stripe.code", "must be a Stripe tax code: 'txcd_' and 8 digits"))
        return None
    return code


def _rate_card(raw: Any, path: str, cadence: Cadence | None, errors: FieldErrors) -> RateCard | None:
    if not isinstance(raw, dict):
        errors.append((path, "must be an object"))
        return None
    before = len(errors)
    kind = raw.get("type")
    if kind not in ("flat_fee", "usage_based"):
        errors.append((f"{path}.type", "must be 'flat_fee' or 'usage_based'"))
    key = _key(raw.get("key"), f"{path}.key", errors)
    name = _text(raw, "name", f"{path}.name", errors, required=True, limit=MAX_NAME_LENGTH)
    description = _text(raw, "description", f"{path}.description", errors, required=False, limit=MAX_DESCRIPTION_LENGTH)
    tax_code = _tax_code(raw, path, errors)
    if "billingCadence" in raw:
        text = raw["billingCadence"]
        if text is None:
            errors.append(
                (
                    f"{path}.billingCadence",
                    "one-time fees are not supported; leave billingCadence out to bill the rate card with the plan",
                )
            )
        else:
            try:
                own = parse_cadence(text)
            except ValueError as exc:
                errors.append((f"{path}.billingCadence", str(exc)))
            else:
                if cadence is not None and own != cadence:
                    errors.append((f"{path}.billingCadence", "must equal the plan's billingCadence (or be left out)"))
    if raw.get("discounts"):
        errors.append((f"{path}.discounts", "discounts are not supported"))
    price_raw = raw.get("price")
    if not isinstance(price_raw, dict):
        errors.append((f"{path}.price", 'is required: an object with a type (write amount "0" for a free item)'))
        return None
    meter: str | None = None
    price: Any = None
    commitments = Commitments()
    template = _entitlement_template(raw, path, cadence, errors)
    if kind == "flat_fee":
        price = _flat_price(price_raw, f"{path}.price", errors)
        for name_of_meter in ("meterSlug", "featureKey"):
            if name_of_meter == "featureKey" and template is not None:
                continue  # the feature the card's entitlement is to
            if raw.get(name_of_meter) is not None:
                errors.append((f"{path}.{name_of_meter}", "a flat_fee rate card is not tied to a meter"))
    elif kind == "usage_based":
        price, commitments = _usage_price(price_raw, f"{path}.price", errors)
        # Tallybook has no separate features: featureKey, when meterSlug is left out, names the meter.
        field_name = "meterSlug" if raw.get("meterSlug") is not None else "featureKey"
        meter_ref = raw.get(field_name)
        if meter_ref is None:
            errors.append((f"{path}.meterSlug", "is required: the slug of the meter whose usage is priced"))
        elif not isinstance(meter_ref, str) or not meter_ref or len(meter_ref) > MAX_KEY_LENGTH:
            errors.append((f"{path}.{field_name}", "must be a meter's slug"))
        else:
            meter = meter_ref
    if len(errors) != before or key is None or name is None or price is None:
        return None
    return RateCard(
        key=key,
        name=name,
        price=price,
        meter=meter,
        tax_code=tax_code,
        commitments=commitments,
        description=description,
        feature_key=raw.get("featureKey") if template is not None else None,
        entitlement_template=template,
    )


def _entitlement_template(
    raw: Mapping[str, Any], path: str, cadence: Cadence | None, errors: FieldErrors
) -> dict[str, Any] | None:
    """OpenMeter's RateCardEntitlement, checked; stored as given (usagePeriod defaults to the cadence)."""
    template = raw.get("entitlementTemplate")
    if template is None:
        return None
    where = f"{path}.entitlementTemplate"
    if not isinstance(template, dict):
        errors.append((where, "must be an object"))
        return None
    feature = raw.get("featureKey")
    if not isinstance(feature, str) or not KEY_PATTERN.match(feature):
        errors.append((f"{path}.featureKey", "is required with an entitlementTemplate: the key of the feature"))
    kind = template.get("type")
    allowed = {"type", "metadata"}
    out: dict[str, Any] = {"type": kind}
    if kind == "metered":
        allowed |= {
            "isSoftLimit",
            "issueAfterReset",
            "issueAfterResetPriority",
            "preserveOverageAtReset",
            "usagePeriod",
        }
        period = template.get("usagePeriod")
        if period is None and cadence is not None:
            period = format_cadence(cadence)
        try:
            Interval.parse(period) if isinstance(period, str) else Interval.parse("")
        except ValueError:
            errors.append((f"{where}.usagePeriod", "must be an ISO 8601 duration such as P1M (default: the cadence)"))
        out["usagePeriod"] = period
        for flag in ("isSoftLimit", "preserveOverageAtReset"):
            if flag in template:
                if not isinstance(template[flag], bool):
                    errors.append((f"{where}.{flag}", "must be true or false"))
                out[flag] = template[flag]
        if template.get("issueAfterReset") is not None:
            amount = _decimal(template["issueAfterReset"], f"{where}.issueAfterReset", errors)
            if amount is not None and amount < 0:
                errors.append((f"{where}.issueAfterReset", "must not be negative"))
            out["issueAfterReset"] = None if amount is None else plain(amount)
        priority = template.get("issueAfterResetPriority")
        if priority is not None:
            if not isinstance(priority, int) or isinstance(priority, bool) or not 1 <= priority <= 255:
                errors.append((f"{where}.issueAfterResetPriority", "must be an integer from 1 to 255"))
            out["issueAfterResetPriority"] = priority
    elif kind == "static":
        allowed |= {"config"}
        config = template.get("config")
        try:
            json.loads(config) if isinstance(config, str) else None
            valid = isinstance(config, str)
        except ValueError:
            valid = False
        if not valid:
            errors.append((f"{where}.config", 'is required: a JSON-parsable string, e.g. "{\\"seats\\": 5}"'))
        out["config"] = config
    elif kind != "boolean":
        errors.append((f"{where}.type", "must be 'metered', 'static' or 'boolean'"))
    for extra in sorted(set(template) - allowed):
        errors.append((f"{where}.{extra}", f"is not a field of a {kind} entitlement template"))
    if isinstance(template.get("metadata"), dict):
        out["metadata"] = template["metadata"]
    return out


def parse_plan(body: Any, *, update_of: PlanVersion | None = None) -> PlanInput:
    """A create body (OpenMeter's PlanCreate) or, with `update_of`, a replace body
    (PlanReplaceUpdate: key and currency may be left out). Raises InvalidPlan naming every field.

    Rate cards come in one phase (`phases: [{key, name, rateCards: [...]}]`, OpenMeter's shape) or
    directly as `rateCards`. Per-invoice spend bounds are `commitments: {minimumAmount,
    maximumAmount}`. Meters are checked by the service, not here.
    """
    errors: FieldErrors = []
    if not isinstance(body, dict):
        raise InvalidPlan([("(body)", "must be a JSON object")])
    if update_of is None:
        key = _key(body.get("key"), "key", errors)
    else:
        key = update_of.plan_key
        if body.get("key") is not None and body["key"] != update_of.plan_key:
            errors.append(("key", f"cannot change; this plan's key is {update_of.plan_key!r}"))
    name = _text(body, "name", "name", errors, required=True, limit=MAX_NAME_LENGTH)
    description = _text(body, "description", "description", errors, required=False, limit=MAX_DESCRIPTION_LENGTH)
    metadata = _metadata(body.get("metadata"), "metadata", errors)
    currency: str | None = None
    raw_currency = body.get("currency")
    if raw_currency is None and update_of is not None:
        currency = update_of.currency
    else:
        try:
            currency = validate_currency(raw_currency if raw_currency is not None else "USD")
        except ValueError as exc:
            errors.append(("currency", str(exc)))
    cadence: Cadence | None = None
    if body.get("billingCadence") is None:
        errors.append(("billingCadence", f"is required; {CADENCE_HELP}"))
    else:
        try:
            cadence = parse_cadence(body["billingCadence"])
        except ValueError as exc:
            errors.append(("billingCadence", str(exc)))
    plan_commitments = Commitments()
    if body.get("commitments") is not None:
        if isinstance(body["commitments"], dict):
            plan_commitments = _commitments(body["commitments"], "commitments.", errors)
        else:
            errors.append(("commitments", "must be an object with minimumAmount and/or maximumAmount"))
    cards_raw, cards_path = _rate_cards_of(body, errors)
    cards: list[RateCard] = []
    seen: dict[str, int] = {}
    for index, raw in enumerate(cards_raw):
        card = _rate_card(raw, f"{cards_path}[{index}]", cadence, errors)
        if card is None:
            continue
        if card.key in seen:
            errors.append(
                (f"{cards_path}[{index}].key", f"{card.key!r} is already the key of rateCards[{seen[card.key]}]")
            )
        seen.setdefault(card.key, index)
        cards.append(card)
    if errors or key is None or name is None or currency is None or cadence is None:
        raise InvalidPlan(errors or [("(body)", "is not a valid plan")])
    spec = PlanVersion(
        plan_key=key,
        version=update_of.version if update_of else 1,
        name=name,
        currency=currency,
        cadence=cadence,
        rate_cards=tuple(cards),
        commitments=plan_commitments,
        status=PlanStatus.DRAFT.value,
    )
    return PlanInput(spec=spec, description=description, metadata=metadata, rate_cards_path=cards_path)


def _rate_cards_of(body: Mapping[str, Any], errors: FieldErrors) -> tuple[list[Any], str]:
    phases, cards = body.get("phases"), body.get("rateCards")
    if phases is not None and cards is not None:
        errors.append(("rateCards", "give the rate cards either in phases or in rateCards, not both"))
        return [], "rateCards"
    if cards is not None:
        if not isinstance(cards, list):
            errors.append(("rateCards", "must be a list"))
            return [], "rateCards"
        found = cards
        path = "rateCards"
    elif phases is not None:
        if not isinstance(phases, list) or len(phases) != 1 or not isinstance(phases[0], dict):
            errors.append(("phases", "must be a list of exactly one phase: Tallybook plans have a single phase"))
            return [], "phases[0].rateCards"
        phase = phases[0]
        if phase.get("duration") is not None:
            errors.append(("phases[0].duration", "must be null: the single phase lasts as long as the subscription"))
        path = "phases[0].rateCards"
        in_phase = phase.get("rateCards")
        if not isinstance(in_phase, list):
            errors.append((path, "must be a list"))
            return [], path
        found = in_phase
    else:
        errors.append(("phases", "is required: one phase with its rateCards (or give rateCards directly)"))
        return [], "rateCards"
    if len(found) > MAX_RATE_CARDS:
        errors.append((path, f"must have at most {MAX_RATE_CARDS} rate cards"))
        return [], path
    return found, path


# -- model → API JSON ------------------------------------------------------------------------------
def _commitments_json(commitments: Commitments) -> dict[str, str]:
    body: dict[str, str] = {}
    if commitments.minimum is not None:
        body["minimumAmount"] = plain(commitments.minimum)
    if commitments.maximum is not None:
        body["maximumAmount"] = plain(commitments.maximum)
    return body


def price_json(price: Any, commitments: Commitments | None = None) -> dict[str, Any]:
    """A price in OpenMeter's shape (amounts as decimal strings)."""
    if isinstance(price, FlatPrice):
        return {"type": "flat", "amount": plain(price.amount), "paymentTerm": price.payment_term.value}
    body: dict[str, Any]
    if isinstance(price, UnitPrice):
        body = {"type": "unit", "amount": plain(price.amount)}
    elif isinstance(price, PackagePrice):
        body = {
            "type": "package",
            "amount": plain(price.amount),
            "quantityPerPackage": plain(price.quantity_per_package),
        }
    elif isinstance(price, TieredPrice):
        tiers = []
        for tier in price.tiers:
            entry: dict[str, Any] = {}
            if tier.up_to is not None:
                entry["upToAmount"] = plain(tier.up_to)
            show_unit = tier.unit_amount != 0 or tier.flat_amount == 0
            entry["unitPrice"] = {"type": "unit", "amount": plain(tier.unit_amount)} if show_unit else None
            entry["flatPrice"] = {"type": "flat", "amount": plain(tier.flat_amount)} if tier.flat_amount != 0 else None
            tiers.append(entry)
        body = {"type": "tiered", "mode": price.mode.value, "tiers": tiers}
    else:
        raise TypeError(f"{type(price).__name__} is not a price")
    if commitments is not None:
        body.update(_commitments_json(commitments))
    return body


def rate_card_json(card: RateCard, cadence: Cadence) -> dict[str, Any]:
    body: dict[str, Any] = {
        "type": "flat_fee" if isinstance(card.price, FlatPrice) else "usage_based",
        "key": card.key,
        "name": card.name,
    }
    if card.description is not None:
        body["description"] = card.description
    if card.meter is not None:
        body["meterSlug"] = card.meter
    body["billingCadence"] = format_cadence(cadence)
    body["price"] = price_json(card.price, card.commitments)
    if card.tax_code is not None:
        body["taxConfig"] = {"stripe": {"code": card.tax_code}}
    if card.entitlement_template is not None:
        body["featureKey"] = card.feature_key
        body["entitlementTemplate"] = card.entitlement_template
    return body


def plan_json(plan: Plan) -> dict[str, Any]:
    """A plan version in OpenMeter's `Plan` shape, its rate cards in one phase."""
    spec = plan.spec
    body: dict[str, Any] = {"id": plan.id, "key": spec.plan_key, "version": spec.version, "name": spec.name}
    if plan.description is not None:
        body["description"] = plan.description
    if plan.metadata is not None:
        body["metadata"] = plan.metadata
    body["currency"] = spec.currency
    body["billingCadence"] = format_cadence(spec.cadence)
    body["status"] = API_STATUS[plan.status]
    if plan.published_at is not None:
        body["effectiveFrom"] = format_rfc3339(plan.published_at)
    if plan.archived_at is not None:
        body["effectiveTo"] = format_rfc3339(plan.archived_at)
    commitments = _commitments_json(spec.commitments)
    if commitments:
        body["commitments"] = commitments
    body["phases"] = [
        {
            "key": "default",
            "name": spec.name,
            "duration": None,
            "rateCards": [rate_card_json(card, spec.cadence) for card in spec.rate_cards],
        }
    ]
    body["validationErrors"] = []
    body["createdAt"] = format_rfc3339(plan.created_at)
    body["updatedAt"] = format_rfc3339(plan.updated_at)
    if plan.deleted_at is not None:
        body["deletedAt"] = format_rfc3339(plan.deleted_at)
    return body


# -- model ↔ canonical stored document -------------------------------------------------------------
def _amount_or_none(value: Decimal | None) -> str | None:
    return None if value is None else plain(value)


def _decimal_or_none(value: str | None) -> Decimal | None:
    return None if value is None else Decimal(value)


def _price_document(price: Any) -> dict[str, Any]:
    if isinstance(price, FlatPrice):
        return {"type": "flat", "amount": plain(price.amount), "payment_term": price.payment_term.value}
    if isinstance(price, UnitPrice):
        return {"type": "unit", "amount": plain(price.amount)}
    if isinstance(price, PackagePrice):
        return {
            "type": "package",
            "amount": plain(price.amount),
            "quantity_per_package": plain(price.quantity_per_package),
        }
    if isinstance(price, TieredPrice):
        return {
            "type": "tiered",
            "mode": price.mode.value,
            "tiers": [
                {
                    "up_to": _amount_or_none(tier.up_to),
                    "unit_amount": plain(tier.unit_amount),
                    "flat_amount": plain(tier.flat_amount),
                }
                for tier in price.tiers
            ],
        }
    raise TypeError(f"{type(price).__name__} is not a price")


def _price_from_document(doc: Mapping[str, Any]) -> FlatPrice | UnitPrice | PackagePrice | TieredPrice:
    kind = doc["type"]
    if kind == "flat":
        return FlatPrice(Decimal(doc["amount"]), PaymentTerm(doc["payment_term"]))
    if kind == "unit":
        return UnitPrice(Decimal(doc["amount"]))
    if kind == "package":
        return PackagePrice(Decimal(doc["amount"]), Decimal(doc["quantity_per_package"]))
    if kind == "tiered":
        tiers = tuple(
            Tier(_decimal_or_none(t["up_to"]), Decimal(t["unit_amount"]), Decimal(t["flat_amount"]))
            for t in doc["tiers"]
        )
        return TieredPrice(TierMode(doc["mode"]), tiers)
    raise ValueError(f"stored price has unknown type {kind!r}")


def _commitments_document(commitments: Commitments) -> dict[str, str | None]:
    return {"minimum": _amount_or_none(commitments.minimum), "maximum": _amount_or_none(commitments.maximum)}


def _commitments_from_document(doc: Mapping[str, Any]) -> Commitments:
    return Commitments(_decimal_or_none(doc.get("minimum")), _decimal_or_none(doc.get("maximum")))


def plan_document(spec: PlanVersion) -> dict[str, Any]:
    """The canonical JSON the store keeps for a version's pricing (rate cards, invoice commitments)."""
    return {
        "rate_cards": [
            {
                "key": card.key,
                "name": card.name,
                "description": card.description,
                "meter": card.meter,
                "tax_code": card.tax_code,
                "price": _price_document(card.price),
                "commitments": _commitments_document(card.commitments),
                **(
                    {"feature_key": card.feature_key, "entitlement": card.entitlement_template}
                    if card.entitlement_template is not None
                    else {}
                ),
            }
            for card in spec.rate_cards
        ],
        "commitments": _commitments_document(spec.commitments),
    }


def _spec_from_row(row: PlanVersionRow) -> PlanVersion:
    doc = row.document
    cards = tuple(
        RateCard(
            key=card["key"],
            name=card["name"],
            price=_price_from_document(card["price"]),
            meter=card.get("meter"),
            tax_code=card.get("tax_code"),
            commitments=_commitments_from_document(card.get("commitments") or {}),
            description=card.get("description"),
            feature_key=card.get("feature_key"),
            entitlement_template=card.get("entitlement"),
        )
        for card in doc["rate_cards"]
    )
    return PlanVersion(
        plan_key=row.plan_key,
        version=row.version,
        name=row.name,
        currency=row.currency,
        cadence=parse_cadence(row.billing_cadence),
        rate_cards=cards,
        commitments=_commitments_from_document(doc.get("commitments") or {}),
        status=row.status,
    )


def _plan_from_row(row: PlanVersionRow) -> Plan:
    return Plan(
        id=row.id,
        spec=_spec_from_row(row),
        description=row.description,
        metadata=row.metadata,
        created_at=from_micros(row.created_us),
        updated_at=from_micros(row.updated_us),
        published_at=from_micros(row.published_us) if row.published_us is not None else None,
        archived_at=from_micros(row.archived_us) if row.archived_us is not None else None,
        deleted_at=from_micros(row.deleted_us) if row.deleted_us is not None else None,
    )


# -- the service -----------------------------------------------------------------------------------
class CatalogService:
    """Plans and their versions. Usage rate cards must name a meter that `meters` knows (by slug or
    id; the slug is stored). Without `meters` (pure catalog tests) meters are not checked."""

    def __init__(
        self,
        store: SqlStore,
        clock: Clock | None = None,
        meters: MeterService | None = None,
        settings: BillingSettings | None = None,
    ) -> None:
        self.repo = CatalogRepository(store)
        self.clock = clock or SystemClock()
        self.meters = meters
        self.settings = settings or BillingSettings()

    # -- reads ---------------------------------------------------------------------------------------
    def get(self, id_or_key: str, version: int | None = None, include_latest: bool = False) -> Plan:
        """A version by id (deleted ones too), or by key: the given version, else the published one
        (with include_latest, or when none is published: the newest live version)."""
        if version is None and looks_like_ulid(id_or_key):
            row = self.repo.by_id(id_or_key.upper())
            if row is not None:
                return _plan_from_row(row)
        live = [r for r in self.repo.versions_of(id_or_key) if r.deleted_us is None]
        if version is not None:
            found = [r for r in live if r.version == version]
            if not found:
                raise PlanNotFound(f"plan {id_or_key!r} has no live version {version}")
            return _plan_from_row(found[0])
        if not live:
            raise PlanNotFound(f"no plan has the id or key {id_or_key!r}")
        published = [r for r in live if r.status == PlanStatus.PUBLISHED]
        if published and not include_latest:
            return _plan_from_row(published[0])
        return _plan_from_row(live[-1])

    def plan_version(self, key: str, version: int | None = None) -> PlanVersion:
        """For subscriptions and invoicing: `key`'s published version, or with `version` that exact
        version whatever its status (an archived or deleted version still bills the subscriptions
        that use it). PlanNotFound when there is none."""
        versions = self.repo.versions_of(key)
        if version is None:
            found = [r for r in versions if r.status == PlanStatus.PUBLISHED]
            if not found:
                raise PlanNotFound(f"plan {key!r} has no published version")
        else:
            found = [r for r in versions if r.version == version]
            if not found:
                raise PlanNotFound(f"plan {key!r} has no version {version}")
        return _spec_from_row(found[0])

    def get_live(self, plan_id: str) -> Plan:
        """A version by id that is not deleted (PlanNotFound otherwise)."""
        return _plan_from_row(self._live_row(plan_id))

    def list(self, query: PlanListQuery) -> PlanPage:
        search = PlanSearch(
            keys=query.keys,
            ids=tuple(i.upper() for i in query.ids),
            statuses=tuple(s.value for s in query.statuses),
            currencies=query.currencies,
            include_deleted=query.include_deleted,
            order_by=query.order_by,
            descending=query.descending,
            offset=(query.page - 1) * query.page_size,
            limit=query.page_size,
        )
        rows, total = self.repo.search(search)
        return PlanPage([_plan_from_row(r) for r in rows], total, query.page, query.page_size)

    def tax_code_for(self, card: RateCard) -> str:
        """The rate card's Stripe tax code, or the configured default."""
        return card.tax_code or self.settings.default_tax_code

    # -- writes --------------------------------------------------------------------------------------
    def create(self, plan: PlanInput) -> Plan:
        """Version 1 (or the next number after deleted versions) of a new key, as a draft."""
        spec = self._with_meter_slugs(plan.spec, plan.rate_cards_path)
        now_us = to_micros(self.clock.now())
        with self.repo.lock(spec.plan_key, now_us, create=True) as lock:
            assert lock is not None
            versions = lock.versions()
            live = [r for r in versions if r.deleted_us is None]
            if live:
                raise PlanConflict(
                    f"a plan with key {spec.plan_key!r} exists (version {live[-1].version}); change its draft "
                    f"or start a new version with POST /api/v1/plans/{spec.plan_key}/next"
                )
            number = versions[-1].version + 1 if versions else 1
            row = self._row(new_ulid(self.clock.now()), replace(spec, version=number), plan, now_us)
            lock.insert(row)
        return _plan_from_row(row)

    def update(self, plan_id: str, plan: PlanInput) -> Plan:
        """Replace a draft's content (parse the body with `parse_plan(body, update_of=...)`).

        The key and the version number stay; a published or archived version answers PlanConflict.
        """
        current = self._live_row(plan_id)
        if plan.spec.plan_key != current.plan_key:
            raise InvalidPlan([("key", f"cannot change; this plan's key is {current.plan_key!r}")])
        spec = self._with_meter_slugs(plan.spec, plan.rate_cards_path)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.DRAFT, "change")
            updated = self._row(row.id, replace(spec, version=row.version), plan, now_us, created_us=row.created_us)
            lock.replace(updated)
        return _plan_from_row(updated)

    def publish(self, plan_id: str) -> Plan:
        """Make a draft the published version; the version published before it is archived."""
        current = self._live_row(plan_id)
        spec = _spec_from_row(current)
        if current.status == PlanStatus.DRAFT:
            if not spec.rate_cards:
                raise InvalidPlan([("phases[0].rateCards", "a plan needs at least one rate card to be published")])
            self._with_meter_slugs(spec)  # the meters must still exist
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.DRAFT, "publish")
            for other in lock.versions():
                if other.status == PlanStatus.PUBLISHED:
                    lock.replace(
                        _changed(other, status=PlanStatus.ARCHIVED.value, archived_us=now_us, updated_us=now_us)
                    )
            published = _changed(row, status=PlanStatus.PUBLISHED.value, published_us=now_us, updated_us=now_us)
            lock.replace(published)
        return _plan_from_row(published)

    def archive(self, plan_id: str) -> Plan:
        """Retire the published version: new subscriptions can no longer use it."""
        current = self._live_row(plan_id)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            self._require_status(row, PlanStatus.PUBLISHED, "archive")
            archived = _changed(row, status=PlanStatus.ARCHIVED.value, archived_us=now_us, updated_us=now_us)
            lock.replace(archived)
        return _plan_from_row(archived)

    def delete(self, plan_id: str) -> None:
        """Delete a draft or archived version (soft: it stays readable by id, with deletedAt)."""
        current = self._live_row(plan_id)
        now_us = to_micros(self.clock.now())
        with self._locked(current) as (lock, row):
            if row.status == PlanStatus.PUBLISHED:
                raise PlanConflict(f"plan {row.plan_key!r} version {row.version} is published; archive it first")
            lock.replace(_changed(row, deleted_us=now_us, updated_us=now_us))

    def next_version(self, id_or_key: str) -> Plan:
        """A new draft copied from the newest live version of the plan (by key, or by that version's id)."""
        by_id = self.repo.by_id(id_or_key.upper()) if looks_like_ulid(id_or_key) else None
        key = by_id.plan_key if by_id is not None else id_or_key
        now_us = to_micros(self.clock.now())
        with self.repo.lock(key, now_us) as lock:
            if lock is None:
                raise PlanNotFound(f"no plan has the id or key {id_or_key!r}")
            versions = lock.versions()
            live = [r for r in versions if r.deleted_us is None]
            if not live:
                raise PlanNotFound(f"plan {key!r} has no live version to copy")
            drafts = [r for r in live if r.status == PlanStatus.DRAFT]
            if drafts:
                raise PlanConflict(
                    f"plan {key!r} already has a draft (version {drafts[0].version}, id {drafts[0].id}); "
                    "change or delete it instead"
                )
            source = live[-1]
            if by_id is not None and by_id.id != source.id:
                raise PlanConflict(
                    f"version {by_id.version} is not the newest version of plan {key!r} "
                    f"(that is version {source.version}); copy from the newest"
                )
            draft = PlanVersionRow(
                id=new_ulid(self.clock.now()),
                plan_key=key,
                version=versions[-1].version + 1,
                name=source.name,
                description=source.description,
                metadata=source.metadata,
                currency=source.currency,
                billing_cadence=source.billing_cadence,
                status=PlanStatus.DRAFT.value,
                document=source.document,
                created_us=now_us,
                updated_us=now_us,
                published_us=None,
                archived_us=None,
                deleted_us=None,
            )
            lock.insert(draft)
        return _plan_from_row(draft)

    # -- helpers -------------------------------------------------------------------------------------
    def _live_row(self, plan_id: str) -> PlanVersionRow:
        row = self.repo.by_id(plan_id.upper()) if looks_like_ulid(plan_id) else None
        if row is None or row.deleted_us is not None:
            raise PlanNotFound(f"no live plan version has the id {plan_id!r}")
        return row

    @contextmanager
    def _locked(self, current: PlanVersionRow) -> Iterator[tuple[PlanLock, PlanVersionRow]]:
        """A write transaction holding the version's plan key, with the version re-read inside it."""
        with self.repo.lock(current.plan_key, to_micros(self.clock.now())) as lock:
            row = None
            if lock is not None:
                row = next((r for r in lock.versions() if r.id == current.id and r.deleted_us is None), None)
            if lock is None or row is None:
                raise PlanNotFound(f"no live plan version has the id {current.id!r}")
            yield lock, row

    @staticmethod
    def _require_status(row: PlanVersionRow, wanted: PlanStatus, action: str) -> None:
        if row.status != wanted:
            state = API_STATUS[PlanStatus(row.status)]
            why = " (a published version is immutable; start a new version with /next)" if action == "change" else ""
            raise PlanConflict(
                f"cannot {action} plan {row.plan_key!r} version {row.version}: it is {state}, "
                f"only a {API_STATUS[wanted]} version can be {'changed' if action == 'change' else action + 'd'}{why}"
            )

    def _with_meter_slugs(self, spec: PlanVersion, cards_path: str = "phases[0].rateCards") -> PlanVersion:
        """Check every usage rate card's meter exists; store its slug even when given by id."""
        if self.meters is None:
            return spec
        errors: FieldErrors = []
        cards = []
        for index, card in enumerate(spec.rate_cards):
            if card.meter is None:
                cards.append(card)
                continue
            try:
                meter = self.meters.get(card.meter)
            except MeterNotFound:
                errors.append((f"{cards_path}[{index}].meterSlug", f"no meter has the slug {card.meter!r}"))
                continue
            cards.append(replace(card, meter=meter.slug))
        if errors:
            raise InvalidPlan(errors)
        return replace(spec, rate_cards=tuple(cards))

    def _row(
        self, row_id: str, spec: PlanVersion, plan: PlanInput, now_us: int, created_us: int | None = None
    ) -> PlanVersionRow:
        return PlanVersionRow(
            id=row_id,
            plan_key=spec.plan_key,
            version=spec.version,
            name=spec.name,
            description=plan.description,
            metadata=plan.metadata,
            currency=spec.currency,
            billing_cadence=format_cadence(spec.cadence),
            status=PlanStatus.DRAFT.value,
            document=plan_document(spec),
            created_us=now_us if created_us is None else created_us,
            updated_us=now_us,
            published_us=None,
            archived_us=None,
            deleted_us=None,
        )


def _changed(row: PlanVersionRow, **values: Any) -> PlanVersionRow:
    return replace(row, **values)
