"""Portal tokens' records and the portal's one error.

A token row is what storage keeps (only the hash of the secret, never the secret); `PortalError` is
a refused portal request, answered by the API's one handler for domain errors like every other.
"""

from __future__ import annotations

from dataclasses import dataclass

from tallybook.errors import DomainError


class PortalError(DomainError):
    """A refused portal request: its status (400, 403 or 404) and problem code vary by what was refused."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.code = code


@dataclass(frozen=True, slots=True)
class PortalTokenRow:
    id: str
    token_hash: str
    prefix: str
    subject: str | None
    customer_id: str | None
    allowed_meters: list[str] | None
    expires_us: int
    created_us: int
    invalidated_us: int | None


__all__ = ["PortalError", "PortalTokenRow"]
