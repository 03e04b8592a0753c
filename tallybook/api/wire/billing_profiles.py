"""Billing profiles in OpenMeter's JSON shape: reading a create/replace body and a customer
override, writing a profile and a customer's effective profile.

`parse_profile` reads OpenMeter's `BillingProfileCreate` into a `ProfileInput`, collecting every
problem with its JSON path and raising one `InvalidProfile` (answered with an `errors` list).
Fields left out take OpenMeter's defaults. Read-only fields a client sends back from a GET are
ignored.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from datetime import timedelta
from typing import Any

from tallybook.billing.profiles_model import (
    CHARGE_AUTOMATICALLY,
    COLLECTION_METHODS,
    COLLECTORS,
    DEFAULT_LOCALE,
    DEFAULT_NUMBER_PREFIX,
    DESCRIPTION_MAX,
    MAX_DURATION,
    NAME_MAX,
    TAX_BEHAVIORS,
    TEXT_MAX,
    BillingProfile,
    CustomerProfile,
    InvalidProfile,
    ProfileInput,
    check_locale,
    check_number_prefix,
    check_timezone,
    format_iso_duration,
    parse_iso_duration,
)
from tallybook.clock import format_rfc3339
from tallybook.customers.validation import ADDRESS_FIELDS
from tallybook.ids import looks_like_ulid


# -- model → JSON ----------------------------------------------------------------------------------------
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


# -- JSON → model ----------------------------------------------------------------------------------------
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


__all__ = [
    "apps_json",
    "customer_profile_json",
    "document_json",
    "parse_override",
    "parse_profile",
    "profile_json",
    "workflow_json",
]
