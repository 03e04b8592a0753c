"""Every module of the package imports on its own, in a fresh interpreter, whatever is imported
first (an import circle shows up as an ImportError on a partially initialised module), and
`store/tables.py` lists every module that declares a table (issue #13)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

IMPORT_EACH = """
import importlib, json, pkgutil, sys
import tallybook
# The rooms and the store: where a circle can hide. The doors (api, cli, ui) import the runtime,
# which loads every room in one fixed order, so they are not where a first import can differ.
DOORS = ("tallybook.api.", "tallybook.cli.", "tallybook.ui.")
names = sorted(m.name for m in pkgutil.walk_packages(tallybook.__path__, "tallybook.")
               if ".migrations." not in m.name and not m.name.endswith("__main__") and not m.name.startswith(DOORS))
failures = {}
for name in names:
    for loaded in [m for m in sys.modules if m == "tallybook" or m.startswith("tallybook.")]:
        del sys.modules[loaded]
    try:
        importlib.import_module(name)
    except Exception as exc:  # what a user running `python -c "import <name>"` would see
        failures[name] = f"{type(exc).__name__}: {exc}"
print(json.dumps({"modules": len(names), "failures": failures}))
"""

TABLES = """
import importlib, json, pkgutil, sys
from tallybook.store.tables import all_tables
listed = set(all_tables().tables)
import tallybook
for m in pkgutil.walk_packages(tallybook.__path__, "tallybook."):
    if ".migrations." not in m.name and not m.name.endswith("__main__"):
        importlib.import_module(m.name)
from tallybook.store.schema import metadata
print(json.dumps(sorted(set(metadata.tables) - listed)))
"""


def _run(code: str) -> object:
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_every_module_imports_first_on_its_own() -> None:
    result = _run(IMPORT_EACH)
    assert isinstance(result, dict)
    assert result["modules"] > 120
    assert result["failures"] == {}


def test_store_tables_lists_every_module_that_declares_a_table() -> None:
    assert _run(TABLES) == []
