"""The docs' examples are run, so they cannot drift from what the server does.

A page opts in with a marker comment that says what server its examples run against:

    <!-- docs-examples: demo 2026-11-23T12:00:00Z -->   `tallybook serve --demo --demo-at …` (fixed figures)
    <!-- docs-examples: fresh -->                       an empty database

Its ```console blocks are then a session, run in order in one shell, each against that page's own
server: a line starting with `$ ` is a command (continued by a trailing backslash), the lines after it,
up to the next command, are its output. `$B` is the server's address and `$KEY` an admin key;
`localhost:8888` in a command means the same server. Output is compared line by line, where `…`
stands for any text (ids, times); output that is JSON (possibly wrapped over lines for reading) is
compared as JSON, where a `"…"` value matches anything and a `"…": "…"` member stands for members
left out.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.serverproc import ADMIN_KEY, ServerProcess

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
MARKER = re.compile(r"<!-- docs-examples: (demo (\S+)|fresh) -->")
CONSOLE_BLOCK = re.compile(r"^```console\n(.*?)^```", re.MULTILINE | re.DOTALL)
ANY = "…"

pytestmark = pytest.mark.slow


@dataclass
class Example:
    line: int  # where the command starts in the page, for the failure message
    command: str
    expected: str


def examples_of(text: str) -> list[Example]:
    found: list[Example] = []
    for block in CONSOLE_BLOCK.finditer(text):
        first_line = text.count("\n", 0, block.start(1)) + 1
        lines = block.group(1).splitlines()
        index = 0
        while index < len(lines):
            if not lines[index].startswith("$ "):
                raise AssertionError(f"line {first_line + index}: a console block starts with a `$ ` command")
            start = index
            command = [lines[index][2:]]
            # A command goes on after a trailing backslash, and inside a quoted argument (a JSON body
            # written over several lines).
            while (command[-1].endswith("\\") or "\n".join(command).count("'") % 2) and index + 1 < len(lines):
                index += 1
                command.append(lines[index])
            index += 1
            output = []
            while index < len(lines) and not lines[index].startswith("$ "):
                output.append(lines[index])
                index += 1
            found.append(Example(first_line + start, "\n".join(command), "\n".join(output)))
    return found


def pages_with_examples() -> list[Any]:
    params = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        marker = MARKER.search(text)
        if marker:
            params.append(pytest.param(page, marker, id=str(page.relative_to(ROOT))))
    return params


def run_session(server: ServerProcess, examples: list[Example]) -> list[str]:
    """Run the commands in one bash, in order; return each one's output (stdout and stderr)."""
    separator = "\x1e-- next example --\x1e"
    script = ["exec 2>&1", "set -u"]
    for example in examples:
        script.append(f"printf '%s\\n' '{separator}'")
        script.append(example.command.replace("localhost:8888", "$B"))
    env = {**os.environ, "B": server.url, "KEY": ADMIN_KEY}
    done = subprocess.run(["bash", "-c", "\n".join(script)], env=env, capture_output=True, text=True, timeout=120)
    # A separator may follow output that ends without a newline; each chunk starts with the
    # separator's own newline.
    outputs = [chunk.removeprefix("\n") for chunk in done.stdout.split(separator)[1:]]
    assert len(outputs) == len(examples), done.stdout
    return [output.rstrip("\n") for output in outputs]


def _wildcard_line(expected: str) -> re.Pattern[str]:
    return re.compile(".*".join(re.escape(part) for part in expected.split(ANY)) + r"\Z", re.DOTALL)


def _json_matches(expected: Any, actual: Any) -> bool:
    if expected == ANY:
        return True
    if isinstance(expected, dict):
        if not isinstance(actual, dict):
            return False
        open_ended = expected.get(ANY) == ANY
        keys = set(expected) - {ANY}
        if not keys <= set(actual) or (not open_ended and set(actual) != keys):
            return False
        return all(_json_matches(expected[key], actual[key]) for key in keys)
    if isinstance(expected, list):
        return (
            isinstance(actual, list)
            and len(expected) == len(actual)
            and all(_json_matches(e, a) for e, a in zip(expected, actual, strict=True))
        )
    if isinstance(expected, str) and ANY in expected and isinstance(actual, str):
        return _wildcard_line(expected).match(actual) is not None
    return bool(expected == actual and type(expected) is type(actual))


def output_matches(expected: str, actual: str) -> bool:
    try:
        wanted = json.loads(expected)
    except ValueError:
        wanted = None
    if wanted is not None and expected.strip()[:1] in "[{":
        try:
            got = json.loads(actual)
        except ValueError:
            return False
        return _json_matches(wanted, got)
    expected_lines, actual_lines = expected.splitlines(), actual.splitlines()
    return len(expected_lines) == len(actual_lines) and all(
        _wildcard_line(e.rstrip()).match(a.rstrip()) for e, a in zip(expected_lines, actual_lines, strict=True)
    )


@pytest.mark.parametrize(("page", "marker"), pages_with_examples())
def test_examples_print_what_the_page_says(page, marker, tmp_path):
    examples = examples_of(page.read_text(encoding="utf-8"))
    assert examples, f"{page.name} has a docs-examples marker but no console blocks"
    extra: tuple[str, ...] = ("--demo", "--demo-at", marker.group(2)) if marker.group(2) else ()
    server = ServerProcess(tmp_path, f"sqlite:///{tmp_path / 'tallybook.db'}", extra_args=extra).start(timeout=120)
    try:
        outputs = run_session(server, examples)
    finally:
        server.stop()
    wrong = [
        f"{page.name}:{example.line}: $ {example.command}\n--- the page says ---\n{example.expected}\n"
        f"--- the server printed ---\n{output}"
        for example, output in zip(examples, outputs, strict=True)
        if not output_matches(example.expected, output)
    ]
    assert not wrong, "\n\n".join(wrong)


def test_the_matcher_itself():
    assert output_matches('{"a": 1, "id": "…"}', '{"id":"01ABC","a":1}')
    assert not output_matches('{"a": 1}', '{"a":1,"b":2}')
    assert output_matches('{"a": 1, "…": "…"}', '{"a":1,"b":2}')
    assert not output_matches('{"a": 1}', '{"a":"1"}')
    assert output_matches("HTTP/1.1 201 Created\nlocation: /c/…", "HTTP/1.1 201 Created\nlocation: /c/01X")
    assert not output_matches("HTTP/1.1 201 Created", "HTTP/1.1 200 OK")
    assert output_matches('[{"t": "2026-…Z"}]', '[{"t":"2026-11-23T14:09:12Z"}]')
