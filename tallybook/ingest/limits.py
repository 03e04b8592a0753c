"""Every limit Tallybook enforces on what it is sent, in one place.

The code checks these constants and docs/refusals.md lists them; tests/test_refusals_doc.py fails if
the page and this module disagree. Each limit exists for one of two reasons: both engines must store
the same inputs (SQLite stores almost anything, PostgreSQL does not), or metering must stay exact.
"""

from __future__ import annotations

from datetime import UTC, datetime
from decimal import Decimal

# -- Keys ------------------------------------------------------------------------------------------
# id, source, type and subject are indexed. PostgreSQL refuses an index entry over 2,704 bytes
# (B-tree page limit), and (source, id) share one entry; 1,024 bytes each keeps every entry
# below it, whatever the characters. Counted in UTF-8 bytes: 1,024 ASCII characters, fewer emoji.
MAX_KEY_BYTES = 1024

# -- JSON structure --------------------------------------------------------------------------------
# Arrays and objects nested in one request body, the batch array and the event object included.
# Python's decoder fails near 1,000 levels and orjson's encoder at 255, so a deeper document could
# be stored and then break every read of it; real usage data nests a few levels.
MAX_JSON_DEPTH = 32

# Any number anywhere in a request must fit PostgreSQL's `numeric` (event data is JSONB): at most
# 131,072 digits before the decimal point and 16,383 after it. SQLite would store more; both
# engines refuse the same numbers so that an event accepted by one is accepted by the other.
MAX_NUMBER_INTEGER_DIGITS = 131_072
MAX_NUMBER_FRACTION_DIGITS = 16_383

# -- The metered value domain --------------------------------------------------------------------
# A number a meter reads as its value (valueProperty of SUM, AVG, MIN, MAX, LATEST meters and the
# codehooks `value`) is a finite decimal with at most 12 digits before the point and 6 after it
# (|v| < 10^12, a multiple of 10^-6; trailing zeros after the point do not count).
#
# Why: totals are added up with Python's Decimal in its default context, 28 significant digits
# (SQLite's exact sums and the API's re-aggregation), and a sum rounds silently once it needs more.
# A sum of n in-domain values needs at most 12 + 6 + log10(n) digits, so every total of up to
# 10^10 events (ten billion, in one meter query) is exact: 12 + 6 + 10 = 28. (Meter sums and
# billing now add with the precision of tallybook/exact.py, so larger totals are exact as well.)
DECIMAL_CONTEXT_DIGITS = 28
METERED_INTEGER_DIGITS = 12
METERED_FRACTION_DIGITS = 6
EXACT_SUM_EVENTS = 10 ** (DECIMAL_CONTEXT_DIGITS - METERED_INTEGER_DIGITS - METERED_FRACTION_DIGITS)
METERED_QUANTUM = Decimal(1).scaleb(-METERED_FRACTION_DIGITS)  # 0.000001
METERED_MAX_EXCLUSIVE = Decimal(10) ** METERED_INTEGER_DIGITS

# groupBy values and UNIQUE_COUNT keys, as text. UNIQUE_COUNT keys are indexed (same PostgreSQL
# entry limit as the keys above); group values are kept to the same bound.
MAX_METERED_TEXT_BYTES = 1024

# -- Time ------------------------------------------------------------------------------------------
# An event's time, after its offset is applied. Windowing and period arithmetic add up to a year
# in any time zone to an event's time; 9999-01-01 keeps that inside what dates can represent.
EVENT_TIME_MIN = datetime(1970, 1, 1, tzinfo=UTC)
EVENT_TIME_MAX_EXCLUSIVE = datetime(9999, 1, 1, tzinfo=UTC)

# -- Pagination ------------------------------------------------------------------------------------
# `page` of the paginated list endpoints; page x pageSize stays far inside a 64-bit offset.
MAX_PAGE = 1_000_000
MAX_PAGE_SIZE = 1000
