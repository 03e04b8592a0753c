"""docs/openmeter-compatibility.md tells the truth: it lists every operation of OpenMeter's API exactly
once, under its tag, with OpenMeter's method and path, and marks an operation supported (with or
without a difference) exactly when Tallybook's app routes that method and path.

So an endpoint that gets built cannot stay "not supported" on the page, and one the page promises
cannot be missing. The operations come from tests/reference/openmeter-operations.tsv, which is checked
against OpenMeter's spec itself when the spec lies beside the repository (shared/reference/).
"""

from __future__ import annotations

import os
import re
from collections import Counter
from pathlib import Path
from typing import Any, NamedTuple

import pytest
import yaml
from fastapi.testclient import TestClient

from tallybook.api.app import create_app
from tallybook.config import DatabaseSettings, Settings
from tallybook.runtime import Runtime

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "openmeter-compatibility.md"
OPERATIONS = ROOT / "tests" / "reference" / "openmeter-operations.tsv"
SPEC_PLACES = [
    Path(os.environ["TALLYBOOK_OPENMETER_SPEC"]) if os.environ.get("TALLYBOOK_OPENMETER_SPEC") else None,
    ROOT.parent / "shared" / "reference" / "openmeter-openapi.yaml",
]
STATUSES = ("supported", "supported with a difference", "not supported")
ROW = re.compile(
    r"^\| `(?P<op>[A-Za-z0-9]+)` \| (?P<method>[A-Z]+) \| `(?P<path>[^`]+)` \| (?P<status>[a-z ]+) \| (?P<notes>.*) \|$"
)
METHODS = ("get", "put", "post", "delete", "patch")


class Operation(NamedTuple):
    tag: str
    method: str
    path: str


class Row(NamedTuple):
    tag: str
    operation: str
    method: str
    path: str
    status: str
    notes: str


def openmeter_operations() -> dict[str, Operation]:
    found: dict[str, Operation] = {}
    for line in OPERATIONS.read_text().splitlines():
        if line.startswith("#") or line.startswith("tag\t"):
            continue
        tag, operation, method, path = line.split("\t")
        assert operation not in found, f"{operation} twice in {OPERATIONS.name}"
        found[operation] = Operation(tag, method, path)
    return found


def page_rows() -> list[Row]:
    rows: list[Row] = []
    tag = ""
    for number, line in enumerate(PAGE.read_text().splitlines(), 1):
        if line.startswith("## "):
            tag = line[3:].strip()
        elif line.startswith("| `"):
            match = ROW.match(line)
            assert match, f"{PAGE.name}:{number}: not a row of the form | `op` | METHOD | `path` | status | notes |"
            rows.append(Row(tag, match["op"], match["method"], match["path"], match["status"], match["notes"].strip()))
    return rows


def template(path: str) -> str:
    """A path with its parameter names blanked: /a/{id} and /a/{profileId} are the same route."""
    return re.sub(r"\{[^}]+\}", "{}", path)


@pytest.fixture(scope="module")
def tallybook_routes(tmp_path_factory: pytest.TempPathFactory) -> set[tuple[str, str]]:
    """(METHOD, path template) of every operation in Tallybook's served OpenAPI document."""
    url = f"sqlite:///{tmp_path_factory.mktemp('compat') / 'tallybook.db'}"
    runtime = Runtime.build(Settings(database=DatabaseSettings(url=url)))
    try:
        with TestClient(create_app(runtime, manage_runtime=False)) as client:
            document: dict[str, Any] = client.get("/openapi.json").json()
    finally:
        runtime.store.close()
    return {
        (method.upper(), template(path))
        for path, item in document["paths"].items()
        for method in item
        if method in METHODS
    }


def test_the_page_lists_every_openmeter_operation_once_under_its_tag() -> None:
    operations = openmeter_operations()
    rows = page_rows()
    counts = Counter(row.operation for row in rows)
    assert not [op for op, n in counts.items() if n > 1], "listed more than once"
    assert sorted(set(operations) - set(counts)) == [], "missing from the page"
    assert sorted(set(counts) - set(operations)) == [], "not OpenMeter operations"
    for row in rows:
        expected = operations[row.operation]
        assert (row.tag, row.method, row.path) == expected, f"{row.operation}: the page says {row[:4]}"


def test_every_row_has_a_known_status_and_differences_say_what() -> None:
    for row in page_rows():
        assert row.status in STATUSES, f"{row.operation}: unknown status {row.status!r}"
        assert "|" not in row.notes, f"{row.operation}: a | in the notes splits the table's cells"
        if row.status == "supported with a difference":
            assert row.notes, f"{row.operation}: a difference must say what differs"


def test_supported_exactly_when_tallybook_routes_it(tallybook_routes: set[tuple[str, str]]) -> None:
    promised_but_missing = []
    routed_but_not_listed = []
    for row in page_rows():
        routed = (row.method, template(row.path)) in tallybook_routes
        if row.status != "not supported" and not routed:
            promised_but_missing.append(f"{row.method} {row.path} ({row.operation})")
        if row.status == "not supported" and routed:
            routed_but_not_listed.append(f"{row.method} {row.path} ({row.operation})")
    assert promised_but_missing == [], "marked supported but not routed"
    assert routed_but_not_listed == [], "routed now: mark these supported (or with their difference)"


def test_the_operation_list_matches_openmeters_spec() -> None:
    spec_path = next((p for p in SPEC_PLACES if p is not None and p.exists()), None)
    if spec_path is None:
        pytest.skip("OpenMeter's spec is not beside the repository (shared/reference/openmeter-openapi.yaml)")
    spec = yaml.load(spec_path.read_text(), Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
    from_spec = {
        operation["operationId"]: Operation(operation["tags"][0], method.upper(), path)
        for path, item in spec["paths"].items()
        for method, operation in item.items()
        if method in METHODS
    }
    assert from_spec == openmeter_operations()
