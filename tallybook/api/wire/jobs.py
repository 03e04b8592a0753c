"""Background jobs: what a run did, and when each job ran."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Wire


class JobResult(Wire):
    name: str
    ran: bool
    skipped: str | None = None
    result: dict[str, Any] | None = None
    error: str | None = None


class JobRunReport(Wire):
    jobs: list[JobResult]


class JobState(Wire):
    name: str
    intervalSeconds: float
    exclusive: bool
    lastStartedAt: str | None = Field(json_schema_extra=DATE_TIME)
    lastFinishedAt: str | None = Field(json_schema_extra=DATE_TIME)
    nextRunAt: str | None = Field(json_schema_extra=DATE_TIME)
    lastError: str | None


class JobList(Wire):
    items: list[JobState]
