"""Alembic's environment for pathoseg projects: the caller (:func:`pathoseg.server.migrate.migrate`)
hands over an open connection, so the migrations run inside its lock and transaction."""

from alembic import context

from pathoseg.server.storage import Base

connection = context.config.attributes["connection"]
context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
