"""What the API key service needs from storage (`sql.SqlApiKeyStorage` on SQLite and PostgreSQL).
Each call is its own transaction; a revocation is one conditional UPDATE."""

from __future__ import annotations

from typing import Protocol

from tallybook.auth.model import ApiKeyRecord


class ApiKeyStorage(Protocol):
    def add(self, record: ApiKeyRecord) -> None: ...

    def by_hash(self, key_hash: str) -> ApiKeyRecord | None: ...

    def list(self) -> list[ApiKeyRecord]:
        """Every key, revoked ones included, oldest first."""
        ...

    def revoke(self, key_id: str, revoked_us: int) -> bool:
        """Revoke the key if it is live; whether this call revoked it."""
        ...

    def count_active_admins(self) -> int: ...


__all__ = ["ApiKeyStorage"]
