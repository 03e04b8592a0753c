"""An API key as stored: its hash, never the secret."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    name: str
    scope: str
    prefix: str
    key_hash: str
    created_us: int
    revoked_us: int | None


__all__ = ["ApiKeyRecord"]
