"""Alembic environment: always run with a connection handed over by tallybook.store.migrate."""

from alembic import context

from tallybook.store.tables import all_tables

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("run migrations with `tallybook db upgrade`, which supplies the connection")

context.configure(connection=connection, target_metadata=all_tables(), render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
