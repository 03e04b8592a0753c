"""GET /api/v1/info/currencies: OpenMeter's listCurrencies."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Request, Response

from tallybook import jsonutil
from tallybook.api.ingesting import runtime_of
from tallybook.api.security import require
from tallybook.api.wire.info import Currency
from tallybook.auth.model import ApiKeyRecord
from tallybook.billing.currency import currencies_in_use

router = APIRouter(prefix="/api/v1", tags=["info"])


@router.get("/info/currencies", response_model=list[Currency])
async def list_currencies(request: Request, _key: Annotated[ApiKeyRecord, Depends(require("read"))]) -> Response:
    """The currencies in use today (legal tender somewhere, CLDR data via Babel), sorted by code.
    Prices, customers and invoices take any of them; `subunits` is what amounts are rounded to."""
    found = currencies_in_use(runtime_of(request).clock.now().date())
    body = [{"code": c.code, "name": c.name, "symbol": c.symbol, "subunits": c.subunits} for c in found]
    return Response(jsonutil.dumpb(body), media_type="application/json")
