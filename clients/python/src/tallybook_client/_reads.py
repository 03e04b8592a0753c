"""Thin typed reads: a meter query and an entitlement value. No retries: the caller decides."""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

import httpx

from tallybook_client._events import rfc3339


class TallybookError(Exception):
    """Base class of the client's errors."""


class ApiError(TallybookError):
    """The server answered a read with a non-2xx status; `problem` is its RFC 9457 body."""

    def __init__(self, status: int, problem: dict[str, Any]) -> None:
        self.status = status
        self.problem = problem
        super().__init__(f"HTTP {status}: {problem.get('detail') or problem.get('title') or problem}")


@dataclass(frozen=True, slots=True)
class MeterRow:
    value: Decimal
    window_start: datetime
    window_end: datetime
    subject: str | None = None
    customer_id: str | None = None
    group_by: dict[str, str | None] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class MeterQueryResult:
    from_: datetime | None
    to: datetime | None
    window_size: str | None
    rows: list[MeterRow]

    @property
    def total(self) -> Decimal:
        return sum((row.value for row in self.rows), Decimal(0))


@dataclass(frozen=True, slots=True)
class EntitlementValue:
    """OpenMeter's EntitlementValue: `has_access` always; the rest by entitlement type."""

    has_access: bool
    balance: Decimal | None = None
    usage: Decimal | None = None
    overage: Decimal | None = None
    total_available_grant_amount: Decimal | None = None
    config: str | None = None


def _time(value: datetime | str | None) -> str | None:
    if value is None or isinstance(value, str):
        return value
    return rfc3339(value)


def meter_query_params(
    *,
    from_: datetime | str | None,
    to: datetime | str | None,
    window_size: str | None,
    window_time_zone: str | None,
    subject: Iterable[str],
    customer_id: Iterable[str],
    group_by: Iterable[str],
    filter_group_by: Mapping[str, str] | None,
    as_of: datetime | str | None,
) -> httpx.QueryParams:
    params: list[tuple[str, str | int | float | bool | None]] = []
    for name, value in (("from", _time(from_)), ("to", _time(to)), ("asOf", _time(as_of))):
        if value is not None:
            params.append((name, value))
    if window_size:
        params.append(("windowSize", window_size))
    if window_time_zone:
        params.append(("windowTimeZone", window_time_zone))
    params += [("subject", s) for s in subject]
    params += [("filterCustomerId", c) for c in customer_id]
    params += [("groupBy", g) for g in group_by]
    params += [(f"filterGroupBy[{k}]", v) for k, v in (filter_group_by or {}).items()]
    return httpx.QueryParams(params)


def meter_query_path(meter: str) -> str:
    return f"/api/v1/meters/{quote(meter, safe='')}/query"


def entitlement_value_path(customer: str, feature: str) -> str:
    return f"/api/v1/customers/{quote(customer, safe='')}/entitlements/{quote(feature, safe='')}/value"


def _body(response: httpx.Response) -> Any:
    try:
        body = json.loads(response.content, parse_float=Decimal)
    except ValueError:
        body = None
    if not 200 <= response.status_code < 300:
        problem = body if isinstance(body, dict) else {"detail": response.text[:500]}
        raise ApiError(response.status_code, problem)
    if body is None:
        raise TallybookError(f"the server answered {response.status_code} without a JSON body")
    return body


def _instant(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) and value else None


def _number(value: Any) -> Decimal | None:
    return None if value is None else Decimal(str(value))


def parse_meter_query(response: httpx.Response) -> MeterQueryResult:
    body = _body(response)
    rows = [
        MeterRow(
            value=Decimal(str(row["value"])),
            window_start=datetime.fromisoformat(row["windowStart"]),
            window_end=datetime.fromisoformat(row["windowEnd"]),
            subject=row.get("subject"),
            customer_id=row.get("customerId"),
            group_by=dict(row.get("groupBy") or {}),
        )
        for row in body.get("data", [])
    ]
    return MeterQueryResult(_instant(body.get("from")), _instant(body.get("to")), body.get("windowSize"), rows)


def parse_entitlement_value(response: httpx.Response) -> EntitlementValue:
    body = _body(response)
    return EntitlementValue(
        has_access=bool(body["hasAccess"]),
        balance=_number(body.get("balance")),
        usage=_number(body.get("usage")),
        overage=_number(body.get("overage")),
        total_available_grant_amount=_number(body.get("totalAvailableGrantAmount")),
        config=body.get("config"),
    )
