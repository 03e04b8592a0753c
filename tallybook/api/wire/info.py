"""Lookup information (OpenMeter's Currency)."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import Wire


class Currency(Wire):
    code: str = Field(description="ISO 4217 code", examples=["USD"])
    name: str = Field(examples=["US Dollar"])
    symbol: str = Field(examples=["$"])
    subunits: int = Field(ge=0, description="decimal places of the minor unit (USD 2, JPY 0)", examples=[2])
