"""`tallybook verify`: passes on a whole database, names what is wrong otherwise (both engines)."""

# ruff: noqa: F811
from __future__ import annotations

import pytest
from sqlalchemy import text, update
from typer.testing import CliRunner

from tallybook.cli.main import app
from tallybook.meters.tables import meters
from tallybook.ops.sql_verify import head_revisions, verify
from tallybook.store.billing import invoice_lines, invoices
from tests.ops_helpers import insert_invoice, seed
from tests.test_meters_helpers import mclock, mrt, utc  # noqa: F401  (fixtures)

runner = CliRunner()


@pytest.fixture(autouse=True)
def wide_console(monkeypatch):
    from tallybook.cli import main

    monkeypatch.setattr(main.console, "width", 200)
    monkeypatch.setattr(main.err_console, "width", 200)


def failed(report) -> dict[str, str]:
    return {c.name: c.detail for c in report.checks if not c.ok}


def test_a_whole_database_passes(mrt):
    seed(mrt)
    insert_invoice(mrt, "inv_draft", "cust_acme", utc(2026, 2, 1), utc(2026, 3, 1), ["10.00"], status="draft")
    report = verify(mrt.store)
    assert failed(report) == {}
    assert report.revision == head_revisions()
    assert report.counts["events"] == 4
    assert report.counts["invoices"] == 2 and report.counts["invoice_lines"] == 4
    assert report.counts["meter_usage"] == 3
    checks = {c.name: c.detail for c in report.checks}
    assert checks["invoice totals"] == "2 invoice(s): totals equal the sum of their lines"

    result = runner.invoke(app, ["verify", "--database", mrt.settings.database.url])
    assert result.exit_code == 0, result.output
    assert "invoice totals" in result.output and "FAILED" not in result.output
    assert "│ events" in result.output


def test_an_invoice_whose_total_is_not_its_lines_fails(mrt):
    seed(mrt)
    with mrt.store.write() as conn:
        conn.execute(update(invoices).where(invoices.c.id == "inv_1").values(total="56.00"))
    report = verify(mrt.store)
    assert "inv_1 (total 56.00, lines sum to 55.00)" in failed(report)["invoice totals"]

    result = runner.invoke(app, ["verify", "--database", mrt.settings.database.url])
    assert result.exit_code == 1
    assert "FAILED" in result.output and "inv_1" in result.output


def test_a_missing_line_fails_the_totals_and_an_orphan_line_is_named(mrt):
    seed(mrt)
    with mrt.store.write() as conn:
        conn.execute(
            update(invoice_lines)
            .where(invoice_lines.c.invoice_id == "inv_1", invoice_lines.c.position == 2)
            .values(invoice_id="inv_gone")
        )
    problems = failed(verify(mrt.store))
    assert "inv_1 (total 55.00, lines sum to 49.10)" in problems["invoice totals"]
    assert problems["invoice lines"] == "lines of missing invoices: inv_gone"


def test_a_meter_cursor_past_the_last_event_fails(mrt):
    seed(mrt)
    with mrt.store.write() as conn:
        conn.execute(update(meters).values(projected_seq=10_000_000))
    assert failed(verify(mrt.store))["meter cursors"].startswith("1 meter(s) past max event seq")


def test_an_invoice_of_an_unknown_customer_fails(mrt):
    seed(mrt)
    insert_invoice(mrt, "inv_orphan", "cust_nobody", utc(2026, 1, 1), utc(2026, 2, 1), ["1.00"])
    assert failed(verify(mrt.store))["invoice customers"] == "invoices of missing customers: inv_orphan"


def test_a_schema_behind_head_fails_and_says_to_upgrade(mrt):
    seed(mrt)
    head = head_revisions()
    with mrt.store.write() as conn:
        conn.execute(text("UPDATE alembic_version SET version_num = '0010'"))
    try:
        result = runner.invoke(app, ["verify", "--database", mrt.settings.database.url])
        assert result.exit_code == 1
        assert f"at 0010, head is {head}: run `tallybook db upgrade`" in result.output
        with mrt.store.read() as conn:  # verify reports the revision it found and never migrates
            assert conn.execute(text("SELECT version_num FROM alembic_version")).scalar_one() == "0010"
    finally:
        with mrt.store.write() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :head"), {"head": head})
