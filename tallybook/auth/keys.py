"""API keys: random secrets shown once, stored as SHA-256 hashes, each with one scope.

Scopes: `ingest` may only send events; `read` may only read; `admin` may do everything.
Keys are 256-bit random values, so a fast hash is enough (no password stretching needed).
"""

from __future__ import annotations

import hashlib
import secrets
import threading
import time
from dataclasses import dataclass
from typing import Literal

from tallybook.auth.model import ApiKeyRecord
from tallybook.auth.ports import ApiKeyStorage
from tallybook.clock import Clock, SystemClock, to_micros

Scope = Literal["ingest", "read", "admin"]
SCOPES: tuple[Scope, ...] = ("ingest", "read", "admin")
KEY_PREFIX = "tbk_"
# Verified keys are cached so ingest doesn't read the database per request; a key revoked in
# another process stops working within this many seconds.
CACHE_SECONDS = 30.0


def hash_key(plaintext: str) -> str:
    return hashlib.sha256(plaintext.encode()).hexdigest()


def scope_allows(granted: str, required: Scope) -> bool:
    return granted == "admin" or granted == required


@dataclass(frozen=True)
class CreatedKey:
    record: ApiKeyRecord
    plaintext: str  # shown once; only its hash is stored


class ApiKeyService:
    def __init__(self, storage: ApiKeyStorage, clock: Clock | None = None) -> None:
        self.storage = storage
        self.clock = clock or SystemClock()
        self._cache: dict[str, tuple[ApiKeyRecord | None, float]] = {}
        self._cache_lock = threading.Lock()

    def create(self, name: str, scope: Scope, plaintext: str | None = None) -> CreatedKey:
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {', '.join(SCOPES)}")
        secret = plaintext or KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(
            id="key_" + secrets.token_hex(8),
            name=name,
            scope=scope,
            prefix=secret[:12],
            key_hash=hash_key(secret),
            created_us=to_micros(self.clock.now()),
            revoked_us=None,
        )
        self.storage.add(record)
        return CreatedKey(record, secret)

    def ensure(self, name: str, scope: Scope, plaintext: str) -> bool:
        """Register a key given in config if it isn't known yet. Returns True if it was added."""
        if self.storage.by_hash(hash_key(plaintext)) is not None:
            return False
        self.create(name, scope, plaintext)
        return True

    def cached(self, plaintext: str) -> tuple[bool, ApiKeyRecord | None]:
        """(True, record-or-None) when the answer is cached; never touches the database."""
        with self._cache_lock:
            entry = self._cache.get(hash_key(plaintext))
        if entry is not None and entry[1] > time.monotonic():
            return True, entry[0]
        return False, None

    def verify(self, plaintext: str) -> ApiKeyRecord | None:
        """The active key record for a presented secret, or None."""
        hit, record = self.cached(plaintext)
        if hit:
            return record
        digest = hash_key(plaintext)
        now = time.monotonic()
        record = self.storage.by_hash(digest)
        if record is not None and record.revoked_us is not None:
            record = None
        with self._cache_lock:
            if len(self._cache) > 10_000:  # bound memory against random-key floods
                self._cache.clear()
            self._cache[digest] = (record, now + CACHE_SECONDS)
        return record

    def list(self) -> list[ApiKeyRecord]:
        return self.storage.list()

    def revoke(self, key_id: str) -> bool:
        revoked = self.storage.revoke(key_id, to_micros(self.clock.now()))
        with self._cache_lock:
            self._cache.clear()
        return revoked

    def has_admin(self) -> bool:
        return self.storage.count_active_admins() > 0
