"""The base of every wire model, and shapes many domains share."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field
from pydantic.json_schema import JsonDict

DATE_TIME: JsonDict = {"format": "date-time"}
StringMap = dict[str, str]


class Wire(BaseModel):
    """An answer shape. Objects stay open (unknown members allowed) so that adding a field is not a
    breaking change for generated clients."""

    model_config = ConfigDict(populate_by_name=True)


class Period(Wire):
    from_: str = Field(alias="from", json_schema_extra=DATE_TIME)
    to: str = Field(json_schema_extra=DATE_TIME)
