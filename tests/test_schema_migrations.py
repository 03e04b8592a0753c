"""The tables the code queries (store/schema.py's metadata) are exactly what the migrations build.

Every table is declared twice: as SQLAlchemy Core objects the code queries, and in the Alembic
migration that creates it. Nothing else would notice a column, index or type that one side has and
the other lacks until a query failed on an upgraded install, so Alembic's own autogenerate
comparison checks them against each other on both engines. The graph must also stay one line: a
second head means two migrations claim the same parent and upgrades depend on their order.
"""

from __future__ import annotations

from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import create_engine

from tallybook.store.migrate import alembic_config, upgrade
from tallybook.store.tables import all_tables

metadata = all_tables()  # every room's tables (tallybook/store/tables.py)


def test_migrations_build_exactly_the_declared_tables(database_url: str) -> None:
    engine = create_engine(database_url)
    try:
        upgrade(engine)
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            differences = compare_metadata(context, metadata)
    finally:
        engine.dispose()
    assert differences == [], "store/schema.py and the migrations disagree:\n" + "\n".join(map(repr, differences))


def test_the_migration_graph_is_one_line() -> None:
    script = ScriptDirectory.from_config(alembic_config())
    heads = script.get_heads()
    assert len(heads) == 1, f"more than one migration head: {heads}; chain the newest onto the last"
    merges = [rev.revision for rev in script.walk_revisions() if rev.is_merge_point]
    bases = script.get_bases()
    assert len(bases) == 1, f"more than one base: {bases}"
    # Two merges are history (0005, 0010 joined branches of earlier releases); new migrations extend
    # the single line instead of adding merges.
    assert sorted(merges) == ["0005", "0010"], merges
