"""What the portal service needs from storage: its tokens (`sql.PortalTokenRepository` on SQLite and
PostgreSQL). Each call is its own transaction; invalidations are one conditional UPDATE, so a token
is never revived by a concurrent call."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from tallybook.portal.model import PortalTokenRow


class PortalTokenStorage(Protocol):
    def insert(self, row: PortalTokenRow) -> None: ...

    def by_hash(self, token_hash: str) -> PortalTokenRow | None: ...

    def newest(self, limit: int) -> list[PortalTokenRow]: ...

    def invalidate(self, at_us: int, token_id: str | None = None, subjects: Sequence[str] = ()) -> int:
        """Invalidate the token with this id and/or every live token bound to one of `subjects`; how many."""
        ...

    def invalidate_customer(self, customer_id: str, at_us: int) -> int: ...


__all__ = ["PortalTokenStorage"]
