"""The projection computed by PostgreSQL itself: the materializer's fast path on PostgreSQL.

The materializer's `Projector` turns each event into a usage row in Python, under the server's
interpreter lock, which at full ingest the HTTP side holds most of the time (issue #16: the
projection fell seconds behind). On PostgreSQL the rows of the common case are computed by the
database in one `INSERT … SELECT` per projection and chunk: no event crosses into Python, and the
work runs in the database's own process, on the other core.

The common case is the one whose row the SQL writes exactly as `Projector.project` would:
- the valueProperty and groupBy paths are member paths (`$.a.b`); others go to jsonpath-ng;
- the value (SUM, AVG, MIN, MAX, FIRST, LATEST) is a JSON number, or a string of plain decimal
  digits (`"12.345"`), inside the metered value domain (`extract.metered_number_problem`:
  |v| < 10^12, at most 6 digits after the point);
- a UNIQUE_COUNT key or a group value is a string, a boolean or a number, at most 1,024 bytes in
  UTF-8; a number that Python would write in exponent form (below 10^-6, e.g. `1E-7`) is not;
- a group value that is missing, null, an object or an array is left out, as Python leaves it out.
Every other event of the range (another numeric string, a value that is missing or out of the domain,
an over-long key) comes back to the caller, which projects it with the `Projector`: its row, and
its error text, are the Python path's. tests/test_projection_sql.py holds the two paths to the
same rows over random data.
"""

from __future__ import annotations

import logging
from typing import Any

from sqlalchemy import Connection

from tallybook.clock import to_micros
from tallybook.ingest.limits import MAX_METERED_TEXT_BYTES, METERED_FRACTION_DIGITS, METERED_INTEGER_DIGITS
from tallybook.meters.extract import member_names
from tallybook.meters.materializer_sql import EVENT_COLUMNS, stored_events
from tallybook.meters.models import Aggregation, Meter
from tallybook.meters.ports import StoredEvent

log = logging.getLogger(__name__)

_SAVEPOINT = "tallybook_project_in_sql"
# Numeric strings the SQL reads itself: ASCII digits, an optional minus and fraction; the length
# bound keeps the cast far from PostgreSQL's numeric limits (longer ones go to Python).
_PLAIN_DECIMAL = r"^-?[0-9]+(\.[0-9]+)?$"
_PLAIN_DECIMAL_CHARS = 128


def can_project(conn: Connection, meter: Meter) -> bool:
    """Whether `project` can take this projection on this engine (PostgreSQL, member paths only)."""
    if conn.dialect.name != "postgresql":
        return False
    reads_value = meter.aggregation is not Aggregation.COUNT and meter.value_property is not None
    if reads_value and member_names(meter.value_property or "") is None:
        return False
    return all(member_names(path) is not None for path in meter.group_by.values())


def _scalar_text(column: str) -> str:
    """A JSON scalar as the text `extract.as_text` gives it; NULL when Python would give None."""
    return f"CASE WHEN jsonb_typeof({column}) IN ('string', 'number', 'boolean') THEN {column} #>> '{{}}' END"


def _text_ok(column: str, text: str) -> str:
    """Whether a non-NULL text is one Python writes the same: short enough, and no exponent form."""
    return (
        f"(octet_length(convert_to({text}, 'UTF8')) <= {MAX_METERED_TEXT_BYTES} "
        f"AND NOT (jsonb_typeof({column}) = 'number' AND {text} ~ '^-?0\\.000000'))"
    )


def _statement(meter: Meter, usage_key: int) -> tuple[str, dict[str, Any]]:
    """The statement: `e` extracts the JSON values, `x` computes each row's value, key and group
    texts once (OFFSET 0 keeps PostgreSQL from inlining them into every use), `src` decides what
    is clean; the clean rows are inserted and the others' seqs returned."""
    params: dict[str, Any] = {"key": usage_key, "type": meter.event_type}
    extracted = ["seq", "subject", "time_us", "ingested_us", "voided_us"]
    computed = ["e.*"]
    clean = ["true"]
    num = "1::numeric"
    ukey = "NULL::text"
    aggregation = meter.aggregation
    if aggregation is not Aggregation.COUNT and meter.value_property is not None:
        params["value_path"] = list(member_names(meter.value_property) or ())
        extracted.append("data #> %(value_path)s AS v")
        if aggregation is Aggregation.UNIQUE_COUNT:
            computed.append(f"{_scalar_text('v')} AS ukey")
            ukey, num = "ukey", "NULL::numeric"
            clean.append(f"ukey IS NOT NULL AND {_text_ok('v', 'ukey')}")
        else:
            # A JSON number, or a string of plain decimal digits ("12.345": Decimal reads it to the
            # same value and scale); any other numeric string (" 7 ", "1e3", "1_000") is Python's.
            computed.append(
                "CASE WHEN jsonb_typeof(v) = 'number' THEN v::numeric "
                f"WHEN jsonb_typeof(v) = 'string' AND length(v #>> '{{}}') <= {_PLAIN_DECIMAL_CHARS} "
                f"AND (v #>> '{{}}') ~ '{_PLAIN_DECIMAL}' THEN (v #>> '{{}}')::numeric END AS num"
            )
            num = "num"
            clean.append(
                f"num IS NOT NULL AND (num = 0 OR (abs(num) < 1e{METERED_INTEGER_DIGITS} "
                f"AND num = round(num, {METERED_FRACTION_DIGITS})))"
            )
    groups = "NULL::jsonb"
    if meter.group_by:
        pairs = []
        for index, (name, path) in enumerate(sorted(meter.group_by.items())):
            column, text = f"g{index}", f"t{index}"
            params[f"path{index}"] = list(member_names(path) or ())
            params[f"name{index}"] = name
            extracted.append(f"data #> %(path{index})s AS {column}")
            computed.append(f"{_scalar_text(column)} AS {text}")
            clean.append(f"({text} IS NULL OR {_text_ok(column, text)})")
            pairs.append(f"%(name{index})s::text, {text}")
        groups = f"jsonb_strip_nulls(jsonb_build_object({', '.join(pairs)}))"
    where = "seq > %(after)s AND seq <= %(up_to)s AND type = %(type)s"
    if meter.event_from is not None:
        params["from_us"] = to_micros(meter.event_from)
        where += " AND time_us >= %(from_us)s"
    sql = (
        f"WITH src AS MATERIALIZED (SELECT seq, subject, time_us, ingested_us, voided_us, "
        f"{num} AS num, {ukey} AS ukey, {groups} AS groups, {' AND '.join(clean)} AS clean "
        f"FROM (SELECT {', '.join(computed)} "
        f"FROM (SELECT {', '.join(extracted)} FROM events WHERE {where}) AS e OFFSET 0) AS x), "
        "stored AS (INSERT INTO meter_usage "
        "(meter_key, subject, time_us, event_seq, ingested_us, num, ukey, groups, error, voided_us) "
        "SELECT %(key)s, subject, time_us, seq, ingested_us, num, ukey, groups, NULL, voided_us "
        "FROM src WHERE clean ORDER BY subject, time_us, seq) "
        "SELECT count(*), coalesce(array_agg(seq ORDER BY seq) FILTER (WHERE NOT clean), '{}') FROM src"
    )
    return sql, params


_LEFT_EVENTS = f"SELECT {EVENT_COLUMNS.format(data='data::text')} WHERE seq = ANY(%s) ORDER BY seq"


def project(conn: Connection, meter: Meter, after_seq: int, up_to_seq: int) -> tuple[int, list[StoredEvent]] | None:
    """Write the common-case rows of the events with after_seq < seq <= up_to_seq into projection
    `meter` (its `key` is the projection's usage key); return (events of its type considered, the
    events left for the `Projector`), or None when the statement failed: it is undone (a savepoint)
    and the caller projects the whole range in Python, so a failure here never stops the projection."""
    sql, params = _statement(meter, meter.key)
    params["after"] = after_seq
    params["up_to"] = up_to_seq
    driver = conn.connection.driver_connection
    assert driver is not None
    with driver.cursor() as cursor:
        cursor.execute(f"SAVEPOINT {_SAVEPOINT}")
        try:
            cursor.execute(sql, params)
            row = cursor.fetchone()
            assert row is not None
            considered, left_seqs = int(row[0]), list(row[1])
            left: list[tuple[Any, ...]] = []
            if left_seqs:
                cursor.execute(_LEFT_EVENTS, (left_seqs,))
                left = list(cursor.fetchall())
        except Exception:
            cursor.execute(f"ROLLBACK TO SAVEPOINT {_SAVEPOINT}")
            cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
            log.warning(
                "the projection in SQL failed; these events are projected in Python",
                extra={"meter": meter.slug, "after_seq": after_seq, "up_to_seq": up_to_seq},
                exc_info=True,
            )
            return None
        cursor.execute(f"RELEASE SAVEPOINT {_SAVEPOINT}")
    return considered, stored_events(left)
