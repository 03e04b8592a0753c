"""Liveness and readiness answers."""

from __future__ import annotations

from typing import Literal

from tallybook.api.wire.base import Wire


class Health(Wire):
    status: Literal["ok"]


class Readiness(Wire):
    """200 when ready; 503 with the same shape when a check fails."""

    status: Literal["ready", "not ready"]
    checks: dict[str, str]
