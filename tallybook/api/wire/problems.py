"""RFC 9457 problem details: the body of every 4xx and 5xx answer (application/problem+json)."""

from __future__ import annotations

from pydantic import Field

from tallybook.api.wire.base import Wire


class FieldProblem(Wire):
    field: str = Field(description="Where the problem is, e.g. `data.tokens` or `time`")
    message: str
    index: int | None = Field(None, description="Ingest: the event's position in the batch (null: a single event)")


class Problem(Wire):
    """OpenMeter's problem response: `type`, `title`, `status`, `detail`, `instance`, plus members
    specific to the problem (e.g. `errors` per field). The codehooks routes add `error` (= detail)."""

    type: str = Field(description="urn:tallybook:problem:<code>", examples=["urn:tallybook:problem:invalid-events"])
    title: str = Field(examples=["Bad Request"])
    status: int = Field(ge=400, le=599)
    detail: str = Field(description="What went wrong and what to fix")
    instance: str = Field(description="The request path")
    errors: list[FieldProblem] | None = None
    error: str | None = Field(None, description="codehooks template clients read this")
