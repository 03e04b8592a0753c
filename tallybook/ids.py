"""ULIDs, the id format OpenMeter uses: 48 bits of Unix milliseconds, then 80 bits, in Crockford
base32. Random for new objects, or derived from a key so that retried work keeps its id."""

from __future__ import annotations

import hashlib
import re
import secrets
from datetime import datetime

from tallybook.clock import to_micros

_CROCKFORD = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
_MAX_TIME_MS = (1 << 48) - 1
ULID_PATTERN = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def _encode(value: int) -> str:
    return "".join(_CROCKFORD[(value >> shift) & 31] for shift in range(125, -1, -5))


def _time_ms(when: datetime | None) -> int:
    if when is None:
        return 0
    return min(max(to_micros(when) // 1000, 0), _MAX_TIME_MS)


def new_ulid(when: datetime) -> str:
    """A fresh ULID for an object created at `when`."""
    return _encode((_time_ms(when) << 80) | secrets.randbits(80))


def stable_ulid(key: str, when: datetime | None = None) -> str:
    """The same key (and time) always gives the same ULID."""
    digest = int.from_bytes(hashlib.sha256(key.encode()).digest()[:10], "big")
    return _encode((_time_ms(when) << 80) | digest)


def looks_like_ulid(text: str) -> bool:
    return ULID_PATTERN.match(text) is not None
