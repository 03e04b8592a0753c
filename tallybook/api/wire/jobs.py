"""Background jobs: what a run did, and when each job ran."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from tallybook.api.wire.base import DATE_TIME, Wire


class JobResult(Wire):
    name: str
    ran: bool
    # ok | partial (finished, some items skipped: see /api/v1/jobs/failures) | error; only when it ran
    status: str | None = None
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
    lastStatus: str | None = None
    lastFailedItems: int = 0


class JobList(Wire):
    items: list[JobState]


class JobFailure(Wire):
    """An item a job skipped because processing it failed (listed until it next succeeds)."""

    job: str
    itemKind: str
    itemId: str
    error: str
    context: dict[str, Any] | None = None
    firstSeenAt: str = Field(json_schema_extra=DATE_TIME)
    lastSeenAt: str = Field(json_schema_extra=DATE_TIME)
    count: int


class JobFailurePage(Wire):
    totalCount: int
    limit: int
    offset: int
    items: list[JobFailure]
