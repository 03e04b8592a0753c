"""Plans in OpenMeter's JSON shape: reading a create/replace body, writing a plan version.

`parse_plan` reads OpenMeter's `PlanCreate` / `PlanReplaceUpdate` (camelCase, amounts as decimal
strings) into a `PlanInput`, collecting every problem as (JSON path, message) and raising one
`InvalidPlan` that the API answers with an `errors` list. `plan_json` writes OpenMeter's `Plan`,
its rate cards in one phase. Prices are `plan_prices`. Meters are checked by the service.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from tallybook.api.wire.plan_prices import (
    commitments_json,
    price_json,
    read_commitments,
    read_decimal,
    read_flat_price,
    read_usage_price,
)
from tallybook.billing.catalog_model import (
    API_STATUS,
    CADENCE_HELP,
    KEY_PATTERN,
    MAX_DESCRIPTION_LENGTH,
    MAX_KEY_LENGTH,
    MAX_NAME_LENGTH,
    MAX_RATE_CARDS,
    FieldErrors,
    InvalidPlan,
    Plan,
    PlanInput,
    PlanStatus,
    format_cadence,
    parse_cadence,
    plain,
)
from tallybook.billing.currency import validate_currency
from tallybook.billing.models import Cadence, Commitments, FlatPrice, PlanVersion, RateCard
from tallybook.billing.settings import TAX_CODE_PATTERN
from tallybook.clock import format_rfc3339
from tallybook.entitlements.recurrence import Interval


# -- JSON → model ----------------------------------------------------------------------------------
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
        price = read_flat_price(price_raw, f"{path}.price", errors)
        for name_of_meter in ("meterSlug", "featureKey"):
            if name_of_meter == "featureKey" and template is not None:
                continue  # the feature the card's entitlement is to
            if raw.get(name_of_meter) is not None:
                errors.append((f"{path}.{name_of_meter}", "a flat_fee rate card is not tied to a meter"))
    elif kind == "usage_based":
        price, commitments = read_usage_price(price_raw, f"{path}.price", errors)
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
            amount = read_decimal(template["issueAfterReset"], f"{where}.issueAfterReset", errors)
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
            plan_commitments = read_commitments(body["commitments"], "commitments.", errors)
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


# -- model → JSON ----------------------------------------------------------------------------------
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
    commitments = commitments_json(spec.commitments)
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


__all__ = ["parse_plan", "plan_json", "rate_card_json"]
