"""The route registry: each endpoint is a handler function registered with its method, path
pattern, the stripe-python params ``TypedDict`` that defines its allowed parameters, and how it
authenticates. Resource modules under ``resources/`` register themselves on import; adding an
endpoint is one decorated function.

    @ROUTER.post("/v1/invoices/{id}/finalize", params=p.InvoiceFinalizeInvoiceParams)
    def finalize(ctx: Ctx) -> dict: ...
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .errors import StripeAPIError
from .params import ObjectSpec, spec_for
from .state import FakeState, deep_copy

Handler = Callable[["Ctx"], Any]


@dataclass
class Ctx:
    """What a handler gets: the store, validated params, path params and request metadata."""

    state: FakeState
    params: dict[str, Any]
    path_params: dict[str, str]
    api_version: str
    api_key: str | None
    request_id: str
    idempotency_key: str | None
    headers: dict[str, str]
    method: str
    path: str

    @property
    def now(self) -> int:
        return self.state.now()

    def event(
        self, type_: str, obj: dict[str, Any], previous_attributes: dict[str, Any] | None = None
    ) -> dict[str, Any]:
        """Record a Stripe Event caused by this request."""
        return self.state.record_event(
            type_,
            obj,
            previous_attributes=previous_attributes,
            request_id=self.request_id,
            idempotency_key=self.idempotency_key,
        )


@dataclass
class Route:
    method: str
    pattern: str
    regex: re.Pattern[str]
    handler: Handler
    params: type | None
    auth: str  # "secret" (sk_test_ key), "session" (v2 meter event session token), "none" (control)
    status: int = 200
    locked: bool = True  # run under ``state.lock``; False for handlers that wait on other requests
    _spec: ObjectSpec | None = field(default=None, repr=False)

    @property
    def api(self) -> str:
        return "v2" if self.pattern.startswith("/v2/") else "v1"

    def spec(self) -> ObjectSpec | None:
        if self.params is None:
            return None
        if self._spec is None:
            self._spec = spec_for(self.params)
        return self._spec


class Router:
    def __init__(self) -> None:
        self.routes: list[Route] = []

    def add(
        self,
        method: str,
        pattern: str,
        *,
        params: type | None = None,
        auth: str = "secret",
        status: int = 200,
        locked: bool = True,
    ) -> Callable[[Handler], Handler]:
        regex = re.compile("^" + re.sub(r"\{(\w+)\}", r"(?P<\1>[^/]+)", pattern) + "$")

        def register(handler: Handler) -> Handler:
            self.routes.append(Route(method.upper(), pattern, regex, handler, params, auth, status, locked))
            return handler

        return register

    def get(self, pattern: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.add("GET", pattern, **kw)

    def post(self, pattern: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.add("POST", pattern, **kw)

    def delete(self, pattern: str, **kw: Any) -> Callable[[Handler], Handler]:
        return self.add("DELETE", pattern, **kw)

    def match(self, method: str, path: str) -> tuple[Route, dict[str, str]]:
        for route in self.routes:
            if route.method != method.upper():
                continue
            m = route.regex.match(path)
            if m:
                return route, m.groupdict()
        raise StripeAPIError(
            404,
            "invalid_request_error",
            f"Unrecognized request URL ({method.upper()}: {path}). Please see https://stripe.com/docs "
            "or we can help at https://support.stripe.com/.",
            saved=False,
        )


ROUTER = Router()


# -- helpers shared by resource modules ------------------------------------------------------------


def paginate(
    ctx: Ctx,
    items: list[dict[str, Any]],
    url: str,
    *,
    filter_created: bool = True,
) -> dict[str, Any]:
    """Stripe list object over ``items`` (already newest first) honouring limit/cursors/created."""
    params = ctx.params
    limit = params.get("limit", 10)
    if not isinstance(limit, int) or not 1 <= limit <= 100:
        raise StripeAPIError.invalid(
            "Invalid limit: must be an integer between 1 and 100", param="limit", code="parameter_invalid_integer"
        )
    created = params.get("created")
    if filter_created and created is not None:
        items = [o for o in items if _created_matches(o.get("created", 0), created)]
    if "starting_after" in params and "ending_before" in params:
        raise StripeAPIError.invalid("You may only specify one of these parameters: ending_before, starting_after.")
    if "starting_after" in params:
        index = _index_of(items, params["starting_after"], "starting_after")
        page = items[index + 1 : index + 1 + limit]
        has_more = index + 1 + limit < len(items)
    elif "ending_before" in params:
        index = _index_of(items, params["ending_before"], "ending_before")
        start = max(0, index - limit)
        page = items[start:index]
        has_more = start > 0
    else:
        page = items[:limit]
        has_more = len(items) > limit
    return {"object": "list", "data": page, "has_more": has_more, "url": url}


def _index_of(items: list[dict[str, Any]], ident: str, param: str) -> int:
    for i, obj in enumerate(items):
        if obj.get("id") == ident:
            return i
    raise StripeAPIError.invalid(f"Invalid {param}: no object {ident} in this list", param=param)


def _created_matches(created: int, flt: Any) -> bool:
    if isinstance(flt, int):
        return created == flt
    ok = True
    if "gt" in flt:
        ok &= created > flt["gt"]
    if "gte" in flt:
        ok &= created >= flt["gte"]
    if "lt" in flt:
        ok &= created < flt["lt"]
    if "lte" in flt:
        ok &= created <= flt["lte"]
    return ok


def merge_metadata(current: dict[str, str], update: Any) -> dict[str, str]:
    """Stripe metadata update semantics: keys merge, ``""`` values delete, ``metadata=""`` clears."""
    if update == "":
        return {}
    merged = dict(current)
    for key, value in (update or {}).items():
        if value == "":
            merged.pop(key, None)
        else:
            merged[key] = str(value)
    return merged


@contextmanager
def atomic(state: FakeState, *kinds: str) -> Iterator[None]:
    """Undo changes to the tables of ``kinds`` if the block raises, so a failed request leaves no
    partial update behind (Stripe requests are all-or-nothing)."""
    saved = {kind: deep_copy(state.table(kind)) for kind in kinds}
    try:
        yield
    except Exception:
        for kind, rows in saved.items():
            table = state.table(kind)
            for ident in list(table):
                if ident not in rows:
                    del table[ident]
            for ident, row in rows.items():
                if ident in table:
                    table[ident].clear()
                    table[ident].update(row)
                else:
                    table[ident] = row
        raise


def changed(before: dict[str, Any], after: dict[str, Any]) -> dict[str, Any]:
    """Stripe's ``previous_attributes``: old values of the top-level keys that changed."""
    return {k: before.get(k) for k in after if before.get(k) != after.get(k)}
