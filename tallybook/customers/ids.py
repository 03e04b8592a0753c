"""Customer ids are ULIDs: 48 bits of Unix milliseconds, then 80 random bits, in Crockford base32."""

from __future__ import annotations

import re
import secrets
from datetime import datetime

from tallybook.clock import to_micros

_ALPHABET = "0123456789ABCDEFGHJKMNPQRSTVWXYZ"
ULID_PATTERN = re.compile(r"^[0-7][0-9A-HJKMNP-TV-Za-hjkmnp-tv-z]{25}$")


def new_ulid(when: datetime) -> str:
    millis = max(0, min(to_micros(when) // 1000, (1 << 48) - 1))
    value = (millis << 80) | secrets.randbits(80)
    return "".join(_ALPHABET[(value >> shift) & 31] for shift in range(125, -1, -5))


def looks_like_ulid(text: str) -> bool:
    return ULID_PATTERN.match(text) is not None
