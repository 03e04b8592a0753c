"""Turning a customer JSON document (OpenMeter's field names) into a checked CustomerInput.

Every problem is collected, so one answer lists all fields to fix. Field paths use the JSON names
(`usageAttribution.subjectKeys[2]`, `billingAddress.country`).
"""

from __future__ import annotations

import re
import zoneinfo
from decimal import Decimal
from typing import Any

from tallybook.customers.model import Address, CustomerInput, InvalidCustomer

NAME_MAX = 256
KEY_MAX = 256
DESCRIPTION_MAX = 1024
EMAIL_MAX = 254
TEXT_MAX = 1024

# Fields a client may send back unchanged from a GET; they are set by the server and ignored here.
READ_ONLY_FIELDS = frozenset(
    ("id", "createdAt", "updatedAt", "deletedAt", "currentSubscriptionId", "subscriptions", "annotations")
)
WRITABLE_FIELDS = (
    "name",
    "key",
    "description",
    "primaryEmail",
    "currency",
    "timezone",
    "billingAddress",
    "metadata",
    "usageAttribution",
)
ADDRESS_FIELDS = {
    "country": "country",
    "postalCode": "postal_code",
    "state": "state",
    "city": "city",
    "line1": "line1",
    "line2": "line2",
    "phoneNumber": "phone_number",
}


def address_json(address: Any) -> dict[str, str]:
    """An address (a customer's, or the supplier's from tallybook.yaml: anything with the Address
    attributes) with the API's field names, leaving out the empty ones."""
    values = {wire: getattr(address, attr) for wire, attr in ADDRESS_FIELDS.items()}
    return {wire: value for wire, value in values.items() if value is not None}


_CURRENCY = re.compile(r"^[A-Z]{3}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s.]+(\.[^@\s.]+)+$")
# Names zoneinfo can load that are not real zones: the host's own setting and a tzdata artefact.
_NOT_ZONES = frozenset(("localtime", "posixrules", "Factory"))


class _Errors:
    def __init__(self) -> None:
        self.items: list[tuple[str, str]] = []

    def add(self, field: str, message: str) -> None:
        self.items.append((field, message))

    def raise_if_any(self) -> None:
        if self.items:
            field, message = self.items[0]
            raise InvalidCustomer(field, message, self.items)


def parse_customer(payload: Any) -> CustomerInput:
    """Check a create/replace body and return the input it describes; raise InvalidCustomer."""
    errors = _Errors()
    if not isinstance(payload, dict):
        raise InvalidCustomer("(body)", "send a JSON object with at least `name`, and `key` or usageAttribution")
    for name in payload:
        if name not in READ_ONLY_FIELDS and name not in WRITABLE_FIELDS:
            errors.add(name, f"unknown field; the writable fields are {', '.join(WRITABLE_FIELDS)}")

    name = payload.get("name")
    if not isinstance(name, str):
        errors.add("name", "required: a string of 1 to 256 characters")
        name = ""
    data = CustomerInput(
        name=name,
        key=_optional_text(payload, "key", errors),
        description=_optional_text(payload, "description", errors),
        primary_email=_optional_text(payload, "primaryEmail", errors),
        currency=_optional_text(payload, "currency", errors),
        timezone=_optional_text(payload, "timezone", errors),
        billing_address=_address(payload.get("billingAddress"), errors),
        metadata=_metadata(payload.get("metadata"), errors),
        subject_keys=_subject_keys(payload.get("usageAttribution"), errors),
    )
    # Value checks only on fields whose shape was right, so each field is reported once.
    shape_errors = {field.split(".", 1)[0].split("[", 1)[0] for field, _ in errors.items}
    for field, message in check_customer(data):
        if field.split(".", 1)[0].split("[", 1)[0] not in shape_errors:
            errors.add(field, message)
    errors.raise_if_any()
    return data


def validate_customer(data: CustomerInput) -> None:
    """Raise InvalidCustomer if a CustomerInput breaks a rule (for inputs not built by parse_customer)."""
    errors = _Errors()
    for field, message in check_customer(data):
        errors.add(field, message)
    errors.raise_if_any()


def check_customer(data: CustomerInput) -> list[tuple[str, str]]:
    found: list[tuple[str, str]] = []
    if not data.name.strip() or len(data.name) > NAME_MAX:
        found.append(("name", f"must be 1 to {NAME_MAX} characters and not only spaces"))
    if data.key is not None and (not data.key.strip() or len(data.key) > KEY_MAX):
        found.append(("key", f"must be 1 to {KEY_MAX} characters and not only spaces"))
    if data.description is not None and len(data.description) > DESCRIPTION_MAX:
        found.append(("description", f"must be at most {DESCRIPTION_MAX} characters"))
    if data.primary_email is not None and (len(data.primary_email) > EMAIL_MAX or not _EMAIL.match(data.primary_email)):
        found.append(("primaryEmail", f"{data.primary_email!r} is not an email address such as billing@example.com"))
    if data.currency is not None and not _CURRENCY.match(data.currency):
        hint = f"; did you mean {data.currency.upper()!r}?" if _CURRENCY.match(data.currency.upper()) else ""
        found.append(
            ("currency", f"{data.currency!r} is not an ISO 4217 code: use three capital letters, such as USD{hint}")
        )
    if data.timezone is not None and not is_time_zone(data.timezone):
        found.append(
            (
                "timezone",
                f"{data.timezone!r} is not an IANA time zone name; use one such as Europe/Paris or America/New_York",
            )
        )
    if data.billing_address is not None:
        country = data.billing_address.country
        if country is not None and not _COUNTRY.match(country):
            found.append(("billingAddress.country", f"{country!r} is not an ISO 3166-1 alpha-2 code such as US or DE"))
    for index, subject in enumerate(data.subject_keys):
        if not subject.strip() or len(subject) > KEY_MAX:
            found.append(
                (f"usageAttribution.subjectKeys[{index}]", f"must be 1 to {KEY_MAX} characters and not only spaces")
            )
    if data.key is None and not data.subject_keys:
        found.append(
            (
                "key",
                "give the customer a key or at least one usageAttribution.subjectKeys entry; "
                "without either, no usage can be attributed to it",
            )
        )
    return found


def is_time_zone(name: str) -> bool:
    if name in _NOT_ZONES:
        return False
    try:
        zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return False
    return True


def _optional_text(payload: dict[str, Any], field: str, errors: _Errors) -> str | None:
    value = payload.get(field)
    if value is None or isinstance(value, str):
        return value
    errors.add(field, f"must be a string or null, got {_json_type(value)}")
    return None


def _subject_keys(value: Any, errors: _Errors) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, dict):
        errors.add("usageAttribution", 'must be an object such as {"subjectKeys": ["my-subject"]}')
        return ()
    for name in value:
        if name != "subjectKeys":
            errors.add(f"usageAttribution.{name}", "unknown field; usageAttribution has only subjectKeys")
    keys = value.get("subjectKeys")
    if not isinstance(keys, list):
        errors.add("usageAttribution.subjectKeys", "required: an array of subject strings (it may be empty)")
        return ()
    subjects: dict[str, None] = {}
    for index, subject in enumerate(keys):
        if isinstance(subject, str):
            subjects.setdefault(subject)
        else:
            errors.add(f"usageAttribution.subjectKeys[{index}]", f"must be a string, got {_json_type(subject)}")
    return tuple(subjects)


def _address(value: Any, errors: _Errors) -> Address | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add("billingAddress", f"must be an object with fields {', '.join(ADDRESS_FIELDS)}")
        return None
    fields: dict[str, str | None] = {}
    for name, item in value.items():
        path = f"billingAddress.{name}"
        if name not in ADDRESS_FIELDS:
            errors.add(path, f"unknown field; an address has {', '.join(ADDRESS_FIELDS)}")
        elif item is not None and not isinstance(item, str):
            errors.add(path, f"must be a string or null, got {_json_type(item)}")
        elif isinstance(item, str) and len(item) > TEXT_MAX:
            errors.add(path, f"must be at most {TEXT_MAX} characters")
        else:
            fields[ADDRESS_FIELDS[name]] = item
    return Address(**fields)


def _metadata(value: Any, errors: _Errors) -> dict[str, str] | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        errors.add(
            "metadata", f'must be an object of string values such as {{"crmId": "123"}}, got {_json_type(value)}'
        )
        return None
    for name, item in value.items():
        if not isinstance(item, str):
            errors.add(f"metadata.{name}", f"values must be strings, got {_json_type(item)}; quote numbers")
    return {k: v for k, v in value.items() if isinstance(v, str)}


def _json_type(value: Any) -> str:
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float | Decimal):
        return "a number"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, str):
        return "a string"
    return "null"
