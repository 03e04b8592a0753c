"""PostgreSQL computes the common-case usage rows itself (tallybook/meters/projection_sql.py): its
rows must be exactly the `Projector`'s, and every event it does not take must reach the Projector.

The property test projects the same random events twice into two projections of one definition,
once through the store (plus the Projector for what the store leaves) and once through the
Projector alone, and compares the stored rows column by column: values, UNIQUE_COUNT keys, group
values, error texts. The data covers what the SQL must recognise as not its own: numeric strings,
values out of the metered domain, tiny numbers Python writes in exponent form, over-long texts,
null, objects, arrays, missing keys and data that is not an object."""

from __future__ import annotations

import itertools
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import text

from tallybook import jsonutil
from tallybook.meters import materializer_sql, projection_sql
from tallybook.meters.materializer import Materializer, Projector
from tallybook.meters.models import Aggregation, Meter, MeterSpec, UsageQuery
from tallybook.store import open_store
from tests.conftest import _postgres_database

pytestmark = pytest.mark.postgres

T0 = 1_767_225_600_000_000
NOW = datetime(2026, 1, 1, tzinfo=UTC)


@pytest.fixture(scope="module")
def pg_store():
    store = open_store(_postgres_database())
    store.migrate()
    yield store
    store.close()


def meter(key: int, aggregation: Aggregation, value: str | None, groups: dict[str, str], event_from=None) -> Meter:
    return Meter(
        id=f"m{key}",
        key=key,
        slug=f"m{key}",
        name="m",
        description=None,
        event_type="t",
        aggregation=aggregation,
        value_property=value,
        group_by=groups,
        event_from=event_from,
        metadata=None,
        managed_by="api",
        created_at=NOW,
        updated_at=NOW,
        locked_at=None,
    )


# Usage keys and event ids of their own: other tests' runtimes leave their meters' rows in this
# process's database (they empty it when they start, not when they end).
_counter = itertools.count(1 << 50)

numbers = st.one_of(
    st.integers(min_value=-(10**14), max_value=10**14),
    st.integers(min_value=-(10**30), max_value=10**30),
    st.decimals(allow_nan=False, allow_infinity=False, places=3),
    st.decimals(allow_nan=False, allow_infinity=False, min_value=Decimal("-1e13"), max_value=Decimal("1e13")),
    st.sampled_from(
        [
            Decimal("0.0000001"),
            Decimal("-0.0000001"),
            Decimal("0.000000"),
            Decimal("0.0000000"),
            Decimal("0E-12"),
            Decimal("0.000001"),
            Decimal("0.0000010"),
            Decimal("1.5000000"),
            Decimal("1.0000001"),
            Decimal("999999999999.999999"),
            Decimal("1000000000000"),
            Decimal("-999999999999.999999"),
            Decimal("1E+5"),
            Decimal("12.50"),
        ]
    ),
)
texts = st.one_of(
    # What PostgreSQL's JSONB stores (ingest refuses NUL and lone surrogates for that reason).
    st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12),
    st.sampled_from(["1.5", " 7 ", "1_000", "NaN", "-0", "0.0000001", "", "007", "1.50", "-12.3456789", "1e3", "+5"]),
    st.sampled_from(["5.", ".5", "١٢", "1" * 13, "9" * 65, "0." + "0" * 70 + "1", "-0.000000"]),
    numbers.map(str),  # numeric strings: plain digits are the SQL's, exponent forms Python's
    st.sampled_from(["x" * 1024, "x" * 1025, "é" * 512, "é" * 513]),  # at and past the 1,024-byte limit
)
scalars = st.one_of(st.none(), st.booleans(), numbers, texts)
values = st.one_of(
    scalars, st.lists(scalars, max_size=2), st.dictionaries(st.sampled_from(["a", "b"]), scalars, max_size=2)
)


@st.composite
def event_data(draw: st.DrawFn) -> Any:
    shape = draw(st.sampled_from(["object", "object", "object", "object", "list", "scalar", "null"]))
    if shape == "list":
        return draw(st.lists(scalars, max_size=2))
    if shape == "scalar":
        return draw(scalars)
    if shape == "null":
        return None
    data: dict[str, Any] = {}
    for name in ("v", "g", "h"):
        if draw(st.booleans()) or name == "v":
            if draw(st.integers(0, 9)) == 0:
                continue  # missing
            data[name] = draw(values)
    if draw(st.booleans()):
        data["usage"] = {"n": draw(values)} if draw(st.booleans()) else draw(values)
    return data


def insert_events(
    store, datas: list[Any], voided: frozenset[int] = frozenset(), other_every: int = 5
) -> tuple[int, int]:
    """Store events straight into `events`, of type t but every `other_every`-th of another type;
    (seq before them, last seq)."""
    with store.write() as conn:
        before = conn.exec_driver_sql("SELECT coalesce(max(seq), 0) FROM events").scalar_one()
        data_sql = "CAST(:data AS jsonb)" if conn.dialect.name == "postgresql" else ":data"
        for index, data in enumerate(datas):
            conn.execute(
                text(
                    "INSERT INTO events (source, event_id, type, subject, time_us, ingested_us, data, voided_us) "
                    f"VALUES (:source, :id, :type, :subject, :time, :time, {data_sql}, :voided)"
                ),
                {
                    "source": "test",
                    "id": f"e{next(_counter)}",
                    "type": "other" if other_every and index % other_every == 0 else "t",
                    "subject": f"s{index % 3}",
                    "time": T0 + index * 1_000_000,
                    "data": None if data is None else jsonutil.dumps(data),
                    "voided": T0 if index in voided else None,
                },
            )
        last = conn.exec_driver_sql("SELECT max(seq) FROM events").scalar_one()
    return int(before), int(last)


def stored_rows(store, key: int) -> list[tuple[Any, ...]]:
    with store.read() as conn:
        rows = conn.exec_driver_sql(
            "SELECT event_seq, subject, time_us, ingested_us, num, ukey, groups, error, voided_us FROM meter_usage "
            "WHERE meter_key = %s ORDER BY event_seq",
            (key,),
        ).all()
    # Compare numbers by value and scale (1.50 stays 1.50), groups as decoded objects.
    return [(r[0], r[1], r[2], r[3], None if r[4] is None else str(r[4]), r[5], r[6], r[7], r[8]) for r in rows]


def project_both(store, definition: dict[str, Any], before: int, last: int) -> tuple[list, list, int]:
    in_store = meter(next(_counter), **definition)
    in_python = meter(next(_counter), **definition)
    with store.write() as conn:
        assert projection_sql.can_project(conn, in_store)
        result = projection_sql.project(conn, in_store, before, last)
        assert result is not None
        considered, left = result
        projector = Projector(in_store)
        records = [r for r in map(projector.project_safely, left) if r is not None]
        materializer_sql.insert_usage(conn, records)
        reference = Projector(in_python)
        expected = []
        for page in materializer_sql.events_after(conn, before, last, ["t"]):
            expected.extend(r for r in map(reference.project_safely, page) if r is not None)
        materializer_sql.insert_usage(conn, expected)
    got, want = stored_rows(store, in_store.key), stored_rows(store, in_python.key)
    assert considered == len(want)  # every event of the type from `event_from` on, taken or left
    return got, want, len(left)


DEFINITIONS = [
    {"aggregation": Aggregation.SUM, "value": "$.v", "groups": {"g": "$.g", "h": "$.h"}},
    {"aggregation": Aggregation.MAX, "value": "$.usage.n", "groups": {}},
    {"aggregation": Aggregation.COUNT, "value": None, "groups": {"g": "$.g", "u": "$.usage.n"}},
    {"aggregation": Aggregation.UNIQUE_COUNT, "value": "$.v", "groups": {"h": "$.h"}},
    {"aggregation": Aggregation.LATEST, "value": "$.v", "groups": {}},
]


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(datas=st.lists(event_data(), min_size=1, max_size=25), which=st.sampled_from(range(len(DEFINITIONS))))
def test_the_store_writes_exactly_the_projectors_rows(pg_store, datas, which):
    before, last = insert_events(pg_store, datas, voided=frozenset({1}))
    got, want, _ = project_both(pg_store, DEFINITIONS[which], before, last)
    assert got == want


def test_only_what_python_would_write_differently_is_left_to_the_projector(pg_store):
    datas = [
        {"v": 5, "g": "a"},  # the store's
        {"v": Decimal("1.25"), "g": True},  # the store's: a boolean group value is "true"
        {"v": 7, "g": 12},  # the store's: a number group value is its digits
        {"v": "12.50"},  # a plain numeric string: the store's (12.50, as Decimal reads it)
        {"v": "1e3"},  # another numeric string: the Projector's
        {"v": Decimal("0.0000001")},  # out of the domain: an error row, by the Projector
        {"v": 5, "g": "x" * 1025},  # an over-long group value: an error row
        {"v": 5, "g": Decimal("0.0000001")},  # a group value Python writes as 1E-7
        {"g": "a"},  # no value: an error row
    ]
    before, last = insert_events(pg_store, datas, other_every=0)
    definition = {"aggregation": Aggregation.SUM, "value": "$.v", "groups": {"g": "$.g"}}
    got, want, left = project_both(pg_store, definition, before, last)
    assert got == want
    assert left == 5
    errors = [row[7] for row in got if row[7]]
    assert len(errors) == 3  # the value out of the domain, the long group value, the missing value
    groups = [row[6] for row in got[:3]]
    assert groups == [{"g": "a"}, {"g": "true"}, {"g": "12"}]
    assert [row[4] for row in got[3:5]] == ["12.50", "1000"]  # numeric keeps 12.50's scale


def test_paths_only_jsonpath_can_read_stay_in_python(pg_store):
    with pg_store.read() as conn:
        assert not projection_sql.can_project(conn, meter(1, Aggregation.SUM, "$['odd key']", {}))
        assert not projection_sql.can_project(conn, meter(1, Aggregation.COUNT, None, {"g": "$.items[0].n"}))
        assert projection_sql.can_project(conn, meter(1, Aggregation.COUNT, "$['ignored']", {"g": "$.a.b"}))


def test_event_from_leaves_earlier_events_out_as_the_projector_does(pg_store):
    datas = [{"v": i} for i in range(12)]
    before, last = insert_events(pg_store, datas)
    cut = datetime.fromtimestamp((T0 + 6 * 1_000_000) / 1e6, tz=UTC)
    definition = {"aggregation": Aggregation.SUM, "value": "$.v", "groups": {}, "event_from": cut}
    got, want, _ = project_both(pg_store, definition, before, last)
    assert got == want
    assert [row[4] for row in got] == ["6", "7", "8", "9", "11"]  # event 10 is of another type


# -- through the materializer, on a PostgreSQL runtime ---------------------------------------------------


@pytest.fixture
def database_url() -> str:
    """This module's runtimes are PostgreSQL's only (conftest's fixture gives both engines)."""
    return _postgres_database()


@pytest.fixture
def pg_runtime(runtime):
    assert runtime.store.dialect_name == "postgresql"
    return runtime


def ingest(runtime, datas: list[dict[str, Any]], prefix: str) -> None:
    from tallybook.ingest.events import Event

    events = [Event("svc", f"{prefix}{i}", "calls", f"c{i % 4}", T0 + i, data) for i, data in enumerate(datas)]
    assert runtime.ingest.ingest(events).accepted == len(events)


def sum_meter(slug: str, value: str) -> MeterSpec:
    return MeterSpec(
        slug=slug, event_type="calls", aggregation=Aggregation.SUM, value_property=value, group_by={"model": "$.model"}
    )


def totals(runtime, slug: str) -> dict[str | None, Decimal | None]:
    rows = runtime.meters.query(UsageQuery(meter=slug, group_by=("model",)))
    return {row.group_by.get("model"): row.value for row in rows}


def test_chunks_mixing_the_store_and_python_projections_count_every_event_once(pg_runtime, monkeypatch):
    """Two meters on one type, one the store projects and one only jsonpath-ng reads, advance in
    one group over many small chunks: both count every event exactly once."""
    runtime = pg_runtime
    runtime.meters.create(sum_meter("simple", "$.n"))
    runtime.meters.create(sum_meter("general", "$['n']"))
    materializer: Materializer = runtime.meters.materializer
    materializer.stop()
    monkeypatch.setattr(materializer, "chunk_events", 7)
    datas = [{"n": Decimal("0.5") if i % 3 else i, "model": f"m{i % 2}"} for i in range(230)]
    datas[17] = {"n": "2.5", "model": "m1"}  # a numeric string: left to the Projector
    datas[40] = {"n": True, "model": "m0"}  # not counted, with its reason
    ingest(runtime, datas, "a")
    calls = {"simple": 0}
    real = projection_sql.project

    def counting(conn, meter_, after, up_to):
        calls["simple"] += 1
        return real(conn, meter_, after, up_to)

    monkeypatch.setattr(projection_sql, "project", counting)
    want: dict[str, Decimal] = {}
    for i, data in enumerate(datas):
        if i == 40:
            continue
        want[data["model"]] = want.get(data["model"], Decimal(0)) + Decimal(str(data["n"]))
    assert totals(runtime, "simple") == want
    assert totals(runtime, "general") == want
    assert calls["simple"] > 5  # many chunks went through the store
    with runtime.store.read() as conn:
        per_meter = conn.exec_driver_sql(
            "SELECT meter_key, count(*), count(error) FROM meter_usage GROUP BY meter_key ORDER BY meter_key"
        ).all()
    assert [(n, errors) for _, n, errors in per_meter] == [(230, 1), (230, 1)]


def test_a_failing_statement_is_undone_and_the_range_projected_in_python(pg_runtime, monkeypatch):
    runtime = pg_runtime
    runtime.meters.create(sum_meter("simple", "$.n"))
    runtime.meters.materializer.stop()
    datas = [{"n": i, "model": f"m{i % 2}"} for i in range(50)]
    ingest(runtime, datas, "a")
    real = projection_sql._statement

    def broken(meter_, key):
        sql, params = real(meter_, key)
        return sql.replace("FROM src WHERE clean", "FROM src WHERE clean AND 1 / (seq - seq) = 1"), params

    monkeypatch.setattr(projection_sql, "_statement", broken)
    assert totals(runtime, "simple") == {"m0": Decimal(sum(range(0, 50, 2))), "m1": Decimal(sum(range(1, 50, 2)))}
    with runtime.store.read() as conn:
        assert conn.exec_driver_sql("SELECT count(*) FROM meter_usage").scalar_one() == 50


def test_a_chunk_ends_at_the_nth_event_of_its_types_on_both_engines(pg_store, tmp_path):
    sqlite = open_store(f"sqlite:///{tmp_path / 'chunks.db'}")
    sqlite.migrate()
    try:
        for store in (pg_store, sqlite):
            before, last = insert_events(store, [{"v": i} for i in range(20)])  # every 5th is "other"
            with store.read() as conn:

                def end(types: list[str], events: int, up_to: int = last, conn=conn, before=before) -> int:
                    return materializer_sql.chunk_end(conn, before, up_to, types, events)

                assert end(["t"], 4) == before + 5  # the 4 t events after it: seqs +2..+5
                assert end(["t", "other"], 4) == before + 4
                assert end(["other"], 4) == before + 16
                assert end(["other"], 5) == last  # only 4 in the range
                assert end(["t"], 100, up_to=before + 10) == before + 10
                assert end([], 3) == last
    finally:
        sqlite.close()
