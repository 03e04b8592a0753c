"""ULIDs (the id format OpenMeter uses), random or derived from a key so that they are stable."""

from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

from tallybook.clock import EPOCH

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_TIME_MS = (1 << 48) - 1


def _encode(value: int) -> str:
    chars = []
    for _ in range(26):
        chars.append(_CROCKFORD[value & 31])
        value >>= 5
    return "".join(reversed(chars))


def _time_ms(when: datetime | None) -> int:
    if when is None:
        return 0
    return min(max(int((when - EPOCH).total_seconds() * 1000), 0), _MAX_TIME_MS)


def new_ulid(when: datetime) -> str:
    """A fresh ULID: 48 bits of milliseconds, then 80 random bits."""
    return _encode((_time_ms(when) << 80) | secrets.randbits(80))


def stable_ulid(key: str, when: datetime | None = None) -> str:
    """The same key (and time) always gives the same ULID: retried work keeps its id."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    return _encode((_time_ms(when) << 80) | digest)
